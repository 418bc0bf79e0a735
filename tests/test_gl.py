"""MuJoCo's GL backend is chosen before MuJoCo loads, and a machine without one gets told
which Debian packages to install."""

from __future__ import annotations

import os
import sys

import pytest

from lewm.envs import gl


@pytest.fixture
def fresh(monkeypatch):
    """A process where neither the user nor an import has fixed the backend yet."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.delitem(sys.modules, "mujoco", raising=False)
    return monkeypatch


def test_first_working_backend_is_chosen_and_exported(fresh) -> None:
    tried = []

    def probe(backend: str) -> str | None:
        tried.append(backend)
        return "eglInitialize failed" if backend == "egl" else None

    assert gl.ensure_gl_backend(probe) == "osmesa"
    assert tried == ["egl", "osmesa"]
    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"


def test_egl_is_preferred_when_it_works(fresh) -> None:
    assert gl.ensure_gl_backend(lambda backend: None) == "egl"
    assert os.environ["MUJOCO_GL"] == "egl"


def test_no_backend_names_the_debian_packages(fresh) -> None:
    reasons = {"egl": "libEGL.so.1: cannot open shared object file", "osmesa": "no libOSMesa"}
    with pytest.raises(gl.GLUnavailableError) as caught:
        gl.ensure_gl_backend(reasons.get)
    message = str(caught.value)
    for text in ("apt-get install", "libegl1", "libegl-mesa0", "libosmesa6", *reasons.values()):
        assert text in message
    assert "MUJOCO_GL" not in os.environ


def test_a_users_choice_is_kept_without_probing(fresh) -> None:
    fresh.setenv("MUJOCO_GL", "osmesa")

    def probe(backend: str) -> str | None:
        raise AssertionError("probed although MUJOCO_GL was set")

    assert gl.ensure_gl_backend(probe) == "osmesa"


def test_too_late_once_mujoco_is_imported(fresh) -> None:
    fresh.setitem(sys.modules, "mujoco", object())
    with pytest.raises(gl.GLUnavailableError, match="imported before"):
        gl.ensure_gl_backend(lambda backend: None)


def test_probe_reports_why_a_backend_fails() -> None:
    reason = gl.probe_backend("no-such-backend")
    assert reason is not None and "no-such-backend" in reason


def test_collect_reports_a_missing_backend_in_one_line(fresh, tmp_path) -> None:
    from typer.testing import CliRunner

    from lewm.cli import app

    fresh.setattr(gl, "probe_backend", lambda backend: f"{backend} missing")
    result = CliRunner().invoke(
        app, ["collect", "reacher", "--episodes", "1", "--out", str(tmp_path / "r.h5")]
    )
    assert result.exit_code == 2
    assert "libosmesa6" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())
