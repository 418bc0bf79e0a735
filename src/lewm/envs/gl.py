"""Choose MuJoCo's headless OpenGL backend before MuJoCo is imported.

MuJoCo and dm_control read ``MUJOCO_GL`` once, when they are first imported, and the
default (GLFW) needs a display. The reference scripts hard-code one backend each, so a
machine without it fails deep inside a render call. Here each candidate is tried in a
throw-away subprocess (a broken GL driver can abort the process that loads it), the first
that creates a context is exported for this process and every worker it spawns, and when
none works the error says which Debian packages provide them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

# Tried in this order: EGL runs on NVIDIA drivers and on Mesa (software) alike.
BACKENDS = ("egl", "osmesa")
DEBIAN_PACKAGES = {
    "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri",
    "osmesa": "libosmesa6",
}
PROBE_TIMEOUT_S = 60.0
_PROBE = (
    "import mujoco\n"
    "ctx = mujoco.GLContext(16, 16)\n"
    "ctx.make_current()\n"
    "ctx.free()\n"
)

Probe = Callable[[str], str | None]


class GLUnavailableError(RuntimeError):
    """No OpenGL backend that MuJoCo can render with headless."""


def backend_env(backend: str) -> dict[str, str]:
    """The variables that select ``backend``; PyOpenGL must agree with MuJoCo's choice."""
    return {"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}


def probe_backend(backend: str) -> str | None:
    """``None`` if MuJoCo can make a context with ``backend``, else the reason it cannot."""
    env = {**os.environ, **backend_env(backend)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
            timeout=PROBE_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no context within {PROBE_TIMEOUT_S:.0f} s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


def ensure_gl_backend(probe: Probe | None = None) -> str:
    """The backend MuJoCo will use, choosing and exporting one if the user has not.

    A ``MUJOCO_GL`` set by the user is respected as is. Must run before ``mujoco`` is
    imported; after that the choice can no longer take effect, so that case is an error
    rather than a silent fallback to a display-bound backend.
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    if "mujoco" in sys.modules:
        raise GLUnavailableError(
            "mujoco was imported before lewm could choose its OpenGL backend; set "
            "MUJOCO_GL=egl (or osmesa) in the environment, or import lewm's MuJoCo "
            "environments before mujoco/dm_control"
        )
    failures = {}
    for backend in BACKENDS:
        reason = (probe or probe_backend)(backend)
        if reason is None:
            os.environ.update(backend_env(backend))
            return backend
        failures[backend] = reason
    tried = "; ".join(f"{b}: {why}" for b, why in failures.items())
    packages = " ".join(DEBIAN_PACKAGES[b] for b in BACKENDS)
    raise GLUnavailableError(
        f"MuJoCo cannot render headless: no OpenGL backend works ({tried}). On Debian/Ubuntu "
        f"install them with `apt-get install {packages}` (EGL: {DEBIAN_PACKAGES['egl']}; "
        f"OSMesa: {DEBIAN_PACKAGES['osmesa']}), or set MUJOCO_GL to a backend that works"
    )
