"""The four environments under gymnasium ids: made by name with lewm's keyword arguments,
passing gymnasium's own environment checker, registered without loading any simulator."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lewm.envs import get_env_spec
from lewm.envs.registration import GYM_IDS, register_envs

# The one kind of check_env warning an environment here may give: an observation with no
# finite bound (PushT's agent passes through walls, joint angles and velocities are free).
UNBOUNDED = ("minimum value is -infinity", "maximum value is infinity")


@pytest.mark.parametrize(
    ("env_id", "resolution"),
    [
        ("lewm/TwoRoom-v0", 32),
        ("lewm/PushT-v0", 64),
        ("lewm/Reacher-v0", 32),
        ("lewm/Cube-v0", 64),
    ],
)
def test_make_renders_at_the_resolution_and_check_env_passes(env_id, resolution):
    env = gymnasium.make(env_id, resolution=resolution, render="fast")
    try:
        name = GYM_IDS[env_id][0]
        assert env.spec.max_episode_steps == get_env_spec(name).max_steps
        assert env.unwrapped.render_quality == "fast"
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (resolution, resolution, 3)
        assert frame.dtype == np.uint8
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # With the spec that make() set, this also remakes the environment with
            # render_mode="rgb_array" and closes one twice.
            check_env(env.unwrapped)
        messages = [str(w.message) for w in caught]
        assert [m for m in messages if not any(u in m for u in UNBOUNDED)] == []
    finally:
        env.close()


def test_make_takes_gymnasium_render_modes_and_refuses_what_the_constructor_refuses():
    for mode in ("rgb_array", None):  # None, gymnasium's "no preference", still draws frames
        assert gymnasium.make("lewm/TwoRoom-v0", render_mode=mode).render_mode == "rgb_array"
    with pytest.raises(ValueError, match="render mode 'pretty'"):
        gymnasium.make("lewm/TwoRoom-v0", render="pretty")
    with pytest.raises(ValueError, match="resolution must be >= 8"):
        gymnasium.make("lewm/PushT-v0", resolution=4)
    with (
        pytest.warns(UserWarning, match="not in the possible render_modes"),
        pytest.raises(ValueError, match="only 'rgb_array'"),
    ):
        gymnasium.make("lewm/TwoRoom-v0", render_mode="ansi")


def test_registering_again_is_silent_and_restores_a_changed_spec():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        register_envs()
    entry_point = GYM_IDS["lewm/TwoRoom-v0"][1]
    with pytest.warns(UserWarning, match="Overriding"):
        gymnasium.register("lewm/TwoRoom-v0", entry_point=entry_point, max_episode_steps=7)
    try:
        with pytest.warns(UserWarning, match="Overriding"):
            register_envs()
    finally:
        assert gymnasium.spec("lewm/TwoRoom-v0").max_episode_steps == 100


def test_registration_loads_no_simulator_until_an_environment_is_made():
    """In a fresh process: nothing is imported before the first make, and a second import, a
    reload or a second registration neither raises nor warns."""
    script = textwrap.dedent(
        """
        import importlib, sys, warnings
        warnings.simplefilter("error")
        import gymnasium
        import lewm.envs
        heavy = ("mujoco", "dm_control", "ogbench")
        assert not [m for m in heavy if m in sys.modules], sys.modules.keys()
        import lewm.envs
        importlib.reload(lewm.envs)
        lewm.envs.register_envs()
        gymnasium.make("lewm/TwoRoom-v0").close()
        assert not [m for m in heavy if m in sys.modules]
        gymnasium.make("lewm/Reacher-v0", resolution=16).close()
        assert "mujoco" in sys.modules and "dm_control" in sys.modules
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_pusht_reset_forgets_the_last_episodes_motion():
    """What check_env's step-determinism check caught, when its unseeded random action
    happened to push the block: a block still moving at reset drifted in the new episode."""
    pushed, fresh = (gymnasium.make("lewm/PushT-v0", resolution=16) for _ in range(2))
    pushed.reset(options={"state": [256.0, 235.0, 256.0, 256.0, 0.0]})
    pushed.step(np.array([0.0, 0.5], dtype=np.float32))
    assert np.linalg.norm(pushed.unwrapped.block.velocity) > 1.0  # the push left it moving
    action = np.array([0.3, -0.2], dtype=np.float32)
    for env in (pushed, fresh):
        env.reset(seed=1)
    np.testing.assert_array_equal(pushed.step(action)[0], fresh.step(action)[0])
