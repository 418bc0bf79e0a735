"""hf:// paths, resolved from a Hugging Face cache built here in the library's own layout,
offline: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMALL_MODEL, add_to_cache
from huggingface_hub import constants
from typer.testing import CliRunner

from lewm import hub
from lewm.cli import app
from lewm.data import open_store

runner = CliRunner()
@pytest.fixture()
def offline_cache(tmp_path, monkeypatch, tworoom_file):
    cache = tmp_path / "hub"
    add_to_cache(cache, "acme/toy", "dataset", {"data/tworoom.h5": tworoom_file})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_paths_parse_also_when_pathlib_folded_them():
    p = hub.parse("hf://datasets/acme/toy@v2/data/tworoom.h5")
    assert (p.repo_id, p.repo_type, p.revision, p.path) == ("acme/toy", "dataset", "v2",
                                                            "data/tworoom.h5")
    assert str(p) == "hf://datasets/acme/toy@v2/data/tworoom.h5"
    folded = Path("hf://quentinll/lewm-pusht")  # what a typer Path option makes of it
    assert hub.is_hub_path(folded) and str(hub.parse(folded)) == "hf://quentinll/lewm-pusht"
    assert hub.parse("hf://a/b").path == "" and not hub.is_hub_path("data/hf.h5")
    with pytest.raises(hub.HubError, match="expected hf://OWNER/REPO"):
        hub.parse("hf://just-a-name")


def test_a_dataset_file_opens_from_the_cache(offline_cache, tworoom_file):
    with open_store("hf://datasets/acme/toy/data/tworoom.h5") as store, \
            open_store(tworoom_file) as local:
        assert store.num_episodes == local.num_episodes and store.columns == local.columns


def test_missing_files_offline_say_what_to_set(offline_cache):
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE.*HF_HUB_CACHE"):
        open_store("hf://datasets/acme/toy/data/other.h5")
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE"):
        open_store("hf://datasets/acme/absent/x.h5")
    with pytest.raises(hub.HubError, match="name a file inside"):
        open_store("hf://datasets/acme/toy")


def test_training_on_a_hub_dataset_records_its_hub_name(offline_cache, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", "hf://datasets/acme/toy/data/tworoom.h5",
                                 "--out", str(run), "--preset", "tiny", "--max-steps", "1",
                                 "--device", "cpu", "--no-progress", *SMALL_MODEL])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["path"] == "hf://datasets/acme/toy/data/tworoom.h5"
    inspected = runner.invoke(app, ["inspect", "hf://datasets/acme/toy/data/tworoom.h5"])
    assert inspected.exit_code == 0, inspected.output


class _FakeApi:
    """Stands in for huggingface_hub.HfApi: records what would be uploaded."""

    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        return "https://huggingface.co/me/ckpt/commit/abc"


def test_export_checkpoint_pushes_the_exported_folder(small_run, tmp_path, monkeypatch):
    import huggingface_hub

    import lewm.interop.official as official

    # The small run's encoder is no official ViT size: register it as one for this test.
    monkeypatch.setitem(official.VIT_SIZES, "micro", (32, 1, 2, 64))
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _FakeApi.calls = []
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export-checkpoint", str(small_run), "--out", str(out),
                                 "--push", "hf://me/ckpt@dev/tiny"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (create, created), (upload, uploaded) = _FakeApi.calls
    assert (create, created["repo_id"], created["exist_ok"]) == ("create_repo", "me/ckpt", True)
    assert upload == "upload_folder" and uploaded["folder_path"] == str(out)
    assert (uploaded["repo_id"], uploaded["revision"], uploaded["path_in_repo"]) == (
        "me/ckpt", "dev", "tiny")
    assert uploaded["files"] == ["config.json", "weights.pt"]
    assert "commit/abc" in result.output


@pytest.mark.parametrize(
    ("target", "says"),
    [("me/ckpt", "expected hf://OWNER/REPO"), ("hf://datasets/me/d/x", "model repository")],
)
def test_a_bad_push_target_is_refused_before_exporting(small_run, tmp_path, target, says):
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export-checkpoint", str(small_run), "--out", str(out),
                                 "--push", target])  # fmt: skip
    assert result.exit_code == 2 and says in result.output
    assert "[@REVISION][/PATH]" in result.output  # printed as text, not read as markup
    assert not out.exists()


def test_pushing_offline_says_what_to_unset(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE is set; unset it to push"):
        hub.push_folder(tmp_path, "hf://me/ckpt")
