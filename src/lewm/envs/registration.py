"""The four environments under gymnasium ids, so any gymnasium loop can make them by name.

Entry points are strings, so registering loads no simulator: MuJoCo, dm_control and OGBench
are imported only when ``gymnasium.make`` builds Reacher or Cube. Keyword arguments of
``make`` (``resolution``, ``render``, gymnasium's ``render_mode``) go to the constructor.
"""

from __future__ import annotations

import gymnasium

# gymnasium id -> (name in lewm's EnvSpec registry, entry point).
GYM_IDS: dict[str, tuple[str, str]] = {
    "lewm/TwoRoom-v0": ("tworoom", "lewm.envs.tworoom:TwoRoomEnv"),
    "lewm/PushT-v0": ("pusht", "lewm.envs.pusht:PushTEnv"),
    "lewm/Reacher-v0": ("reacher", "lewm.envs.reacher:ReacherEnv"),
    "lewm/Cube-v0": ("cube", "lewm.envs.cube:CubeEnv"),
}


def register_envs() -> None:
    """Register the four ids, leaving alone any already registered exactly so: an import,
    a second import or a reload then neither raises nor warns (``gymnasium.register`` warns
    whenever it overrides an id), while an id registered differently is restored.

    ``max_episode_steps`` is the episode length of the environment's collected data
    (``EnvSpec.max_steps``), so gymnasium's ``TimeLimit`` truncates where the data's episodes
    end; ``gymnasium.make(..., max_episode_steps=N)`` chooses another.
    """
    from lewm.envs import get_env_spec  # here: this module is imported by lewm.envs itself

    for env_id, (name, entry_point) in GYM_IDS.items():
        max_steps = get_env_spec(name).max_steps
        known = gymnasium.registry.get(env_id)
        if (
            known is not None
            and known.entry_point == entry_point
            and known.max_episode_steps == max_steps
        ):
            continue
        gymnasium.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)
