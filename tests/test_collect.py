"""Collection: valid files, reproducible from the seed alone, atomic on interruption."""

from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import pytest

from lewm.data import EpisodeStore, collect
from lewm.data.collect import EpisodeRecorder
from lewm.envs import UnknownEnvError, get_env_spec


def columns(path) -> dict[str, np.ndarray]:
    with EpisodeStore(path) as store:
        data = {name: store.read(name, slice(None)) for name in store.columns}
    return data


def assert_same_contents(a, b) -> None:
    ca, cb = columns(a), columns(b)
    assert ca.keys() == cb.keys()
    for name in ca:
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)


def test_collect_writes_a_valid_file(tmp_path):
    spec = get_env_spec("tworoom")
    path = collect("tworoom", 3, tmp_path / "tr.h5", resolution=32, seed=5, progress=True)
    assert path == tmp_path / "tr.h5"
    with EpisodeStore(path) as store:
        assert store.num_episodes == 3
        assert (store.image_size, store.action_dim) == (32, spec.action_dim)
        assert store.env_name == "tworoom"
        assert store.attrs == {
            "env": "tworoom",
            "resolution": 32,
            "frameskip": spec.frameskip,
            "seed": 5,
            "max_steps": spec.max_steps,
            "policy": "heuristic",
            "render": "faithful",
        }
        assert set(spec.info_keys) <= set(store.columns)
        assert (store.ep_len >= 2).all() and (store.ep_len <= spec.max_steps + 1).all()
        action = store.read("action", slice(None))
        last_rows = store.ep_offset + store.ep_len - 1
        np.testing.assert_array_equal(np.flatnonzero(np.isnan(action).any(axis=1)), last_rows)
        assert np.abs(action[~np.isnan(action)]).max() <= 1.0
        # Row t's action leads from row t's state to row t+1's: the agent moves.
        proprio = store.read("proprio", store.episode_rows(0))
        assert not np.array_equal(proprio[0], proprio[1])
        pixels = store.read("pixels", store.episode_rows(0))
        assert not np.array_equal(pixels[0], pixels[-1])


def test_same_seed_same_file(tmp_path):
    a = collect("tworoom", 3, tmp_path / "a.h5", resolution=32, seed=1, progress=False)
    b = collect("tworoom", 3, tmp_path / "b.h5", resolution=32, seed=1, progress=False)
    assert a.read_bytes() == b.read_bytes()
    c = collect("tworoom", 3, tmp_path / "c.h5", resolution=32, seed=2, progress=False)
    assert not np.array_equal(columns(a)["proprio"][:1], columns(c)["proprio"][:1])


def test_episode_depends_only_on_seed_and_index(tmp_path):
    short = collect("tworoom", 2, tmp_path / "short.h5", resolution=32, seed=3, progress=False)
    long = collect("tworoom", 4, tmp_path / "long.h5", resolution=32, seed=3, progress=False)
    with EpisodeStore(short) as s, EpisodeStore(long) as lg:
        rows = slice(0, int(s.num_rows))
        np.testing.assert_array_equal(lg.ep_len[:2], s.ep_len)
        for name in s.columns:
            if name not in ("ep_len", "ep_offset"):
                np.testing.assert_array_equal(lg.read(name, rows), s.read(name, rows))


def test_workers_give_the_same_file(tmp_path):
    one = collect("tworoom", 4, tmp_path / "one.h5", resolution=32, seed=7, progress=False)
    two = collect(
        "tworoom", 4, tmp_path / "two.h5", resolution=32, seed=7, workers=2, progress=False
    )
    assert_same_contents(one, two)
    assert one.read_bytes() == two.read_bytes()


def test_interrupted_collection_leaves_nothing(tmp_path, monkeypatch):
    record = EpisodeRecorder.__call__

    def interrupt_at_third(self, seed, index):
        if index == 2:
            raise KeyboardInterrupt
        return record(self, seed, index)

    monkeypatch.setattr(EpisodeRecorder, "__call__", interrupt_at_third)
    with pytest.raises(KeyboardInterrupt):
        collect("tworoom", 5, tmp_path / "x.h5", resolution=32, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def default_sigint():
    """Python's own Ctrl-C handler, as in a terminal: a process started in the background
    inherits SIGINT ignored, and then there is no Ctrl-C to catch."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_swallowed_ctrl_c_still_stops_collection(tmp_path, monkeypatch, default_sigint):
    """h5py can swallow a KeyboardInterrupt in a weakref callback; simulate exactly that."""
    record = EpisodeRecorder.__call__

    def swallowed_ctrl_c_at_second(self, seed, index):
        if index == 1:
            with contextlib.suppress(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        return record(self, seed, index)

    monkeypatch.setattr(EpisodeRecorder, "__call__", swallowed_ctrl_c_at_second)
    with pytest.raises(KeyboardInterrupt):
        collect("tworoom", 5, tmp_path / "x.h5", resolution=32, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bad_arguments(tmp_path):
    with pytest.raises(UnknownEnvError, match="nowhere"):
        collect("nowhere", 1, tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="episodes=0"):
        collect("tworoom", 0, tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="workers=0"):
        collect("tworoom", 1, tmp_path / "x.h5", workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []
