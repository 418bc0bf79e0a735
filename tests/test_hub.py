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
