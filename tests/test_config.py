import json

import pytest

from lewm.config import ConfigError, RunConfig, apply_overrides, preset, resolve


def test_presets_differ_where_they_should():
    tiny, paper = preset("tiny"), preset("paper")
    assert (tiny.model.image_size, tiny.model.patch_size, tiny.model.history) == (64, 8, 1)
    assert (paper.model.image_size, paper.model.patch_size, paper.model.history) == (224, 14, 3)
    assert paper.train.lr == 5e-5 and paper.train.batch_size == 128
    assert paper.model.sigreg_lambda == 0.09


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*paper, tiny"):
        preset("huge")


def test_overrides_dotted_and_short_names_with_types():
    cfg = resolve("tiny", ["train.lr=3e-4", "patch_size=16", "pred_dropout=0"],
                  {"train.max_steps": 7})
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.patch_size == 16 and isinstance(cfg.model.patch_size, int)
    assert cfg.model.pred_dropout == 0.0
    assert cfg.train.max_steps == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.patch_size=abc", "expected a value of type int"),
        ("nonsense=1", "no such field"),
        ("lr", "expected key=value"),
    ],
)
def test_bad_overrides_are_clear(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("tiny"), [override])


def test_save_load_round_trip(tmp_path):
    cfg = resolve("tiny", ["train.lr=2e-3", "seed=5"])
    cfg.save(tmp_path / "c.json")
    assert RunConfig.load(tmp_path / "c.json") == cfg


def test_load_rejects_unknown_field_and_bad_json(tmp_path):
    data = preset("tiny").to_dict()
    data["model"]["wings"] = 2
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown field.*wings"):
        RunConfig.load(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        RunConfig.load(tmp_path / "bad.json")
