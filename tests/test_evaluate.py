import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lewm.config import EvalConfig
from lewm.data import EpisodeStore, EpisodeWriter
from lewm.plan.evaluate import (
    RandomActor,
    episode_seed,
    evaluate_run,
    sample_start_rows,
    split_for_eval,
)
from lewm.report.gif import write_episode_gif


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "eps.h5"
    with EpisodeWriter(path) as writer:
        for length in (40, 10, 30):  # env steps; rows = length + 1
            rows = length + 1
            action = np.zeros((rows, 2), np.float32)
            action[-1] = np.nan
            writer.add_episode({
                "pixels": np.zeros((rows, 8, 8, 3), np.uint8),
                "action": action,
                "proprio": np.zeros((rows, 2), np.float32),
            })
    with EpisodeStore(path) as s:
        yield s


def test_start_rows_leave_room_for_the_goal_in_the_same_episode(store):
    rows, solved = sample_start_rows(store, np.arange(3), goal_offset=25, count=20, seed=0)
    assert solved == 0  # nobody asked
    assert np.all(np.diff(rows) > 0)
    episode = np.searchsorted(store.ep_offset, rows, side="right") - 1
    assert 1 not in episode  # 11 rows: too short for a goal 25 steps ahead
    end = store.ep_offset[episode] + store.ep_len[episode]
    assert np.all(rows + 25 < end)


def test_start_rows_depend_on_seed_only(store):
    a, _ = sample_start_rows(store, np.arange(3), 25, 10, seed=1)
    b, _ = sample_start_rows(store, np.arange(3), 25, 10, seed=1)
    c, _ = sample_start_rows(store, np.arange(3), 25, 10, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_solved_starts_are_counted_and_replaced_from_the_same_draw(store):
    plain, _ = sample_start_rows(store, np.arange(3), 25, 10, seed=1)
    # Nothing solved: exactly the reference's draw.
    same, found = sample_start_rows(store, np.arange(3), 25, 10, seed=1, solved=lambda r: False)
    assert np.array_equal(same, plain) and found == 0
    bad = set(plain[::3].tolist())  # four of the ten drawn starts already at their goal
    kept, found = sample_start_rows(store, np.arange(3), 25, 10, seed=1,
                                    solved=lambda r: r in bad)
    assert found == 4 and len(kept) == 10 and not bad & set(kept.tolist())
    assert set(plain.tolist()) - bad <= set(kept.tolist())  # the others stay
    again, _ = sample_start_rows(store, np.arange(3), 25, 10, seed=1, solved=lambda r: r in bad)
    assert np.array_equal(kept, again)
    # Kept, but counted, when exclusion is off.
    both, found = sample_start_rows(store, np.arange(3), 25, 10, seed=1,
                                    solved=lambda r: r in bad, exclude=False)
    assert np.array_equal(both, plain) and found == 4


def test_too_few_unsolved_starts_is_a_clear_error(store):
    with pytest.raises(ValueError, match="exclude_solved_starts=false"):
        sample_start_rows(store, np.arange(3), 25, 15, seed=0, solved=lambda r: r % 2 == 0)


def test_too_few_start_rows_is_a_clear_error(store):
    with pytest.raises(ValueError, match="only 22 start rows"):
        sample_start_rows(store, np.arange(3), 25, 50, seed=0)


def test_eval_splits(store):
    assert list(split_for_eval(store, "all", 0.3, 0)) == [0, 1, 2]
    train, val = split_for_eval(store, "train", 0.3, 0), split_for_eval(store, "val", 0.3, 0)
    assert sorted([*train, *val]) == [0, 1, 2] and len(val) >= 1
    with pytest.raises(ValueError, match="unknown split"):
        split_for_eval(store, "test", 0.3, 0)


def test_random_actor_stays_in_the_action_box_and_ignores_batching():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    together = RandomActor(2, 25, seed=0)(frames, frames, [0, 1, 2])
    alone = RandomActor(2, 25, seed=0)(frames[:1], frames[:1], [1])
    assert together.shape == (3, 25, 2) and together.min() >= -1 and together.max() <= 1
    np.testing.assert_array_equal(together[1], alone[0])


def test_episode_seeds_differ_by_episode_and_seed():
    assert episode_seed(0, 1) == episode_seed(0, 1)
    assert len({episode_seed(0, 1), episode_seed(0, 2), episode_seed(1, 1)}) == 3


def test_plan_evaluate_does_not_import_report():
    """Planning computes frames; report/ writes them (DESIGN.md: plan/ never imports report/)."""
    code = (
        "import sys, lewm.plan.evaluate\n"
        "found = sorted(m for m in sys.modules if m.split('.')[:2] == ['lewm', 'report'])\n"
        "assert not found, found\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_evaluation_writes_gifs_through_the_report_writer(tmp_path, small_run, tworoom_file):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    cfg = EvalConfig(episodes=3, budget=5, gifs=2, batch=2, split="all")
    handed: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}

    def media(folder, stem, frames, goal, actions):
        assert actions.shape == (len(frames) - 1, 2)
        handed[stem] = (frames, goal)
        return write_episode_gif(folder, stem, frames, goal)

    result, path = evaluate_run(run, tworoom_file, cfg, solver="random", device="cpu",
                                name="g", progress=False, media=media)
    stems = {f"episode_{e.index:03d}_{'ok' if e.success else 'fail'}": e
             for e in result.episodes if e.index < cfg.gifs}
    assert set(handed) == set(stems) and len(stems) == 2 and len(result.episodes) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        ["result.json", *(f"{stem}.gif" for stem in stems)]
    )
    assert json.loads(path.read_text())["settings"]["eval"]["gifs"] == 2
    with EpisodeStore(tworoom_file) as store:
        for stem, outcome in stems.items():
            frames, goal = handed[stem]
            # One frame per step after the start: each a frame of its own, not the last one.
            assert len(frames) == outcome.steps + 1
            np.testing.assert_array_equal(frames[0], store.read("pixels", outcome.start_row))
            goal_row = outcome.start_row + cfg.goal_offset
            np.testing.assert_array_equal(goal, store.read("pixels", goal_row))
            with Image.open(path.parent / f"{stem}.gif") as gif:
                # Real frame | goal, side by side, enlarged to 256 px high.
                assert gif.size == ((2 * store.image_size + 2) * 4, 256)


def test_evaluation_without_a_writer_writes_only_its_result(tmp_path, small_run, tworoom_file):
    """No media writer: no GIFs, and the result says so rather than promising eval.gifs."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    cfg = EvalConfig(episodes=2, budget=3, gifs=2, batch=2, split="all")
    _, path = evaluate_run(run, tworoom_file, cfg, solver="random", device="cpu", name="n",
                           progress=False)
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]
    assert json.loads(path.read_text())["settings"]["eval"]["gifs"] == 0


@pytest.mark.parametrize("exclude", [True, False])
def test_starts_already_at_their_goal_are_replaced_or_succeed_at_once(
    tmp_path, small_run, tworoom_file, exclude
):
    """A goal five steps ahead is, for most TwoRoom starts, already within reach (16 px)."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    cfg = EvalConfig(episodes=4, goal_offset=5, budget=5, gifs=0, batch=4, split="all",
                     exclude_solved_starts=exclude)
    result, path = evaluate_run(run, tworoom_file, cfg, solver="random", device="cpu",
                                name="s", progress=False)
    saved = json.loads(path.read_text())
    assert saved["settings"]["eval"]["exclude_solved_starts"] is exclude
    assert saved["solved_starts"] == result.solved_starts > 0
    at_once = [e for e in result.episodes if e.steps_to_success == 0]
    if exclude:
        assert not at_once
    else:
        assert len(at_once) == result.solved_starts and all(e.success for e in at_once)
    successes = sorted(e.steps for e in result.episodes if e.success)
    if successes:
        assert result.steps_to_success_median == pytest.approx(float(np.median(successes)))
    assert all((e.steps_to_success is None) != e.success for e in result.episodes)
