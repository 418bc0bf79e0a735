import numpy as np
import pytest

from lewm.data import EpisodeStore, EpisodeWriter
from lewm.plan.evaluate import RandomActor, episode_seed, sample_start_rows, split_for_eval


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
    rows = sample_start_rows(store, np.arange(3), goal_offset=25, count=20, seed=0)
    assert np.all(np.diff(rows) > 0)
    episode = np.searchsorted(store.ep_offset, rows, side="right") - 1
    assert 1 not in episode  # 11 rows: too short for a goal 25 steps ahead
    end = store.ep_offset[episode] + store.ep_len[episode]
    assert np.all(rows + 25 < end)


def test_start_rows_depend_on_seed_only(store):
    a = sample_start_rows(store, np.arange(3), 25, 10, seed=1)
    b = sample_start_rows(store, np.arange(3), 25, 10, seed=1)
    c = sample_start_rows(store, np.arange(3), 25, 10, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


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
