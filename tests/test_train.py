import copy

import pytest
import torch

from lewm.config import preset
from lewm.model import LeWM, batch_statistics
from lewm.train.module import copy_last_error, warmup_cosine


def test_warmup_cosine_schedule_shape():
    total, warmup = 1000, 10
    assert warmup_cosine(0, total, warmup) == 0.0
    assert warmup_cosine(5, total, warmup) == pytest.approx(0.5)
    assert warmup_cosine(10, total, warmup) == pytest.approx(1.0)
    assert warmup_cosine(505, total, warmup) == pytest.approx(0.5)
    assert warmup_cosine(1000, total, warmup) == pytest.approx(0.0, abs=1e-12)
    values = [warmup_cosine(s, total, warmup) for s in range(10, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_copy_last_error_compares_each_target_with_the_frame_before():
    z = torch.tensor([[[0.0], [1.0], [3.0], [6.0]]])
    # history 3, one prediction: pairs (0,1), (1,3), (3,6) -> squared gaps 1, 4, 9
    assert copy_last_error(z, 3, 1).item() == pytest.approx(14 / 3)
    assert copy_last_error(z[:, :2], 1, 1).item() == pytest.approx(1.0)


def small_model() -> LeWM:
    cfg = preset("tiny").model
    cfg.image_size, cfg.patch_size, cfg.enc_depth, cfg.pred_depth = 32, 16, 1, 1
    return LeWM(cfg)


def test_batch_statistics_normalises_with_the_batch_and_leaves_running_stats():
    torch.manual_seed(0)
    model = small_model()
    bn = model.projector.net[1]
    before = bn.running_mean.clone(), bn.running_var.clone()
    pixels = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    model.eval()
    with batch_statistics(model):
        z = model.encode(pixels)
    assert not model.training and not bn.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        torch.testing.assert_close(z, reference.encode(pixels))
        assert not torch.allclose(z, model.encode(pixels), atol=1e-3)
