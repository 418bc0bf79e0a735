"""The MuJoCo environments render headless at the tiny preset's and the paper's resolution."""

from __future__ import annotations

import numpy as np
import pytest

from lewm.envs import get_env_spec


@pytest.mark.parametrize("name", ["reacher", "cube"])
@pytest.mark.parametrize("resolution", [64, 224])
def test_render_shape_dtype_and_content(name, resolution) -> None:
    env = get_env_spec(name).make(resolution)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (resolution, resolution, 3) and frame.dtype == np.uint8
    assert frame.std() > 5.0  # a scene, not a blank buffer
    env.close()
