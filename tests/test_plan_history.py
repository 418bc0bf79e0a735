"""``plan.history``: planning from the last real frames (frameskip steps apart) and the
actions executed between them, so that a model trained on several frames sees velocities."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL

from lewm.checkpoint import load_checkpoint
from lewm.config import ConfigError, EvalConfig, apply_overrides, resolve
from lewm.data import EpisodeStore
from lewm.plan.evaluate import dataset_past, evaluate_run, run_protocol
from lewm.plan.history import FrameHistory
from lewm.plan.mpc import MPCPlanner, frames_to_tensor, plan_flops
from lewm.policy import load_policy
from lewm.train.fit import train

FAST_PLAN = ["plan.samples=8", "plan.elites=2", "plan.iterations=2", "plan.receding_horizon=1"]


@pytest.fixture(scope="module")
def history_run(tmp_path_factory: pytest.TempPathFactory, tworoom_file: Path) -> Path:
    """A small model trained (2 steps) on clips of 3 context frames."""
    run = tmp_path_factory.mktemp("history_run") / "run"
    cfg = resolve("tiny", [*SMALL_MODEL, "model.history=3"], {"train.max_steps": 2})
    train(tworoom_file, run, cfg, device="cpu", progress=False)
    return run


def _frame(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


def test_frame_history_gives_the_frames_frameskip_steps_back_and_the_actions_since():
    history = FrameHistory(history=3, frameskip=2)
    history.observe(_frame(0))
    assert history.past() is None
    for t in range(1, 8):
        history.act(np.array([t - 1, 0.5]))
        history.observe(_frame(t))
    frames, actions = history.past()
    # Now is frame 7: the past is frames 3 and 5, with actions 3, 4 then 5, 6 taken from them.
    assert [int(f[0, 0, 0]) for f in frames] == [3, 5]
    np.testing.assert_array_equal(actions[..., 0], [[3, 4], [5, 6]])
    assert actions.shape == (2, 2, 2) and actions.dtype == np.float32


def test_frame_history_with_too_short_an_episode_gives_what_there_is():
    history = FrameHistory(history=3, frameskip=2)
    for t in range(3):
        history.observe(_frame(t))
        history.act(np.zeros(2))
    history.observe(_frame(3))
    frames, actions = history.past()
    assert [int(f[0, 0, 0]) for f in frames] == [1] and actions.shape == (1, 2, 2)
    one = FrameHistory(history=1, frameskip=1)
    for t in range(3):
        one.observe(_frame(t))
        one.act(np.zeros(2))
    one.observe(_frame(3))
    assert one.past() is None  # history 1: the current frame only, as the reference plans


def test_frame_history_refuses_actions_out_of_order_and_replaces_a_repeated_frame():
    history = FrameHistory(history=2, frameskip=1)
    with pytest.raises(ValueError, match="action before the frame"):
        history.act(np.zeros(2))
    history.observe(_frame(0))
    history.act(np.zeros(2))
    with pytest.raises(ValueError, match="after an action"):
        history.past()
    with pytest.raises(ValueError, match="action before the frame"):
        history.act(np.zeros(2))
    history.observe(_frame(1))
    history.observe(_frame(2))  # the same step observed again: it replaces frame 1
    frames, _ = history.past()
    assert [int(f[0, 0, 0]) for f in frames] == [0]


def test_dataset_past_starts_within_the_start_rows_episode(tworoom_file):
    with EpisodeStore(tworoom_file) as store:
        second = int(store.ep_offset[1])
        history = dataset_past(store, second + 12, history=3, frameskip=5)
        frames, actions = history.past()
        np.testing.assert_array_equal(frames, store.read("pixels", np.array([second + 2,
                                                                             second + 7])))
        np.testing.assert_array_equal(
            actions.reshape(10, -1), store.read("action", np.arange(second + 2, second + 12))
        )
        # Three rows into an episode: no whole block of past yet, and nothing from the last.
        assert dataset_past(store, second + 3, history=3, frameskip=5).past() is None


def test_planning_with_a_past_rolls_out_from_all_real_frames(history_run, tworoom_file):
    ckpt = load_checkpoint(history_run, "cpu")
    cfg = apply_overrides(ckpt.config, [*FAST_PLAN, "plan.history=3"])
    planner = MPCPlanner(ckpt.model, ckpt.normalizer, cfg.plan, 5, 2, torch.device("cpu"))
    seen = []
    rollout = planner.rollout

    def spy(z, blocks):
        seen.append((z.clone(), blocks.clone()))
        return rollout(z, blocks)

    planner.rollout = spy
    with EpisodeStore(tworoom_file) as store:
        frames = store.read("pixels", np.array([0, 5, 10]))
        raw = store.read("action", np.arange(10)).reshape(1, 2, 5, 2)
    goal = frames[2:]
    planner.plan(frames[2:], goal, [torch.Generator().manual_seed(0)],
                 past=(frames[None, :2], raw))
    z, blocks = seen[0]
    assert z.shape[:2] == (8, 3)  # 8 candidates, each from the 3 real embeddings
    assert blocks.shape == (8, 2 + 5, 10)  # 2 executed blocks, then the 5 candidate blocks
    executed = ckpt.normalizer.transform("action", raw).reshape(1, 2, 10)
    np.testing.assert_allclose(blocks[:, :2].numpy(), np.repeat(executed, 8, 0), rtol=1e-6)
    with torch.no_grad():
        real = ckpt.model.encode(frames_to_tensor(frames, torch.device("cpu"))[:, 0][None])
    torch.testing.assert_close(z, real.expand(8, -1, -1))
    with pytest.raises(ValueError, match="past: 1 environments need"):
        planner.plan(frames[2:], goal, [torch.Generator()], past=(frames[None, :2], raw[:, :1]))


def test_plan_history_is_checked_against_the_models_window(small_run, history_run):
    with pytest.raises(ConfigError, match=r"plan.history=2: expected at most model.history=1"):
        apply_overrides(load_checkpoint(small_run, "cpu").config, ["plan.history=2"])
    with pytest.raises(ConfigError, match=r"plan.history=0"):
        apply_overrides(load_checkpoint(history_run, "cpu").config, ["plan.history=0"])


def test_evaluation_with_a_past_plans_otherwise_and_reproducibly(
    tmp_path, history_run, tworoom_file
):
    run = tmp_path / "run"
    shutil.copytree(history_run, run)
    cfg = EvalConfig(episodes=3, budget=6, batch=2, split="all", gifs=3)

    def actions(history: int, name: str) -> list[np.ndarray]:
        taken = {}

        def media(folder, stem, frames, goal, executed):
            taken[stem[:11]] = executed

        evaluate_run(run, tworoom_file, cfg, [*FAST_PLAN, f"plan.history={history}"],
                     device="cpu", name=name, progress=False, media=media)
        return [taken[k] for k in sorted(taken)]

    with_past = actions(3, "h3")
    assert len(with_past) == 3
    for a, b in zip(actions(3, "h3_again"), with_past, strict=True):
        np.testing.assert_array_equal(a, b)
    one_frame = actions(1, "h1")
    assert any(not np.array_equal(a, b) for a, b in zip(one_frame, with_past, strict=True))


def test_policy_keeps_the_episodes_past(history_run):
    policy = load_policy(history_run, "cpu", overrides=[*FAST_PLAN, "history=2"])
    calls = []
    plan = policy.planner.plan

    def spy(*args, **kwargs):
        calls.append(args[5] if len(args) > 5 else kwargs.get("past"))
        return plan(*args, **kwargs)

    policy.planner.plan = spy
    for t in range(7):
        policy(_frame_64(t), _frame_64(99))
    # Replans at steps 0 and 5 (chunk: 1 block of 5): no past, then the frame 5 steps back.
    assert calls[0] is None
    frames, actions = calls[1]
    assert frames.shape == (1, 1, 64, 64, 3) and int(frames[0, 0, 0, 0, 0]) == 0
    assert actions.shape == (1, 1, 5, 2)
    policy.reset()
    policy(_frame_64(3), _frame_64(99))
    assert calls[2] is None


def _frame_64(value: int) -> np.ndarray:
    return np.full((64, 64, 3), value, dtype=np.uint8)


def test_plan_flops_count_the_past(history_run):
    ckpt = load_checkpoint(history_run, "cpu")
    counts = {}
    for h in (1, 3):
        cfg = apply_overrides(ckpt.config, [*FAST_PLAN, f"plan.history={h}"])
        m = cfg.model
        counts[h] = plan_flops(ckpt.model, m.image_size, cfg.plan, m.block_dim, torch.device("cpu"))
    # Three frames to encode besides the goal instead of one; longer rollouts.
    assert counts[3]["encode"] == 2 * counts[1]["encode"]
    assert counts[3]["iteration"] > counts[1]["iteration"]


def test_the_evaluation_hands_over_the_frames_it_rendered_as_the_past(tworoom_file):
    """Frames 5 and 10 steps back, as rendered then, not the buffer the loop draws into."""
    seen: list[list] = []

    def actor(observations, goals, ids, proprio=None, past=None):
        seen.append(past)
        return np.tile(np.array([[1.0, 0.5]], dtype=np.float32), (len(ids), 5, 1))

    kept = {}

    def media(folder, stem, frames, goal, actions):
        kept[stem[:11]] = frames

    cfg = EvalConfig(episodes=2, budget=15, batch=2, split="all", gifs=2)
    with EpisodeStore(tworoom_file) as store:
        result = run_protocol(store, "tworoom", np.arange(store.num_episodes), actor, cfg, 0,
                              Path("unused"), False, media, history=3, frameskip=5)
    assert len(seen) == 3 and all(o.steps == 15 for o in result.episodes if not o.success)
    frames = kept["episode_000"]
    past_frames, past_actions = seen[2][0]  # the plan at step 10 of episode 0
    np.testing.assert_array_equal(past_frames, np.stack([frames[0], frames[5]]))
    np.testing.assert_array_equal(past_actions, np.tile([1.0, 0.5], (2, 5, 1)))
    assert not np.array_equal(frames[0], frames[10])  # the agent moved: a test that can fail
