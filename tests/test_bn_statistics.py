"""recalibrate_bn re-estimates running statistics exactly as promised (and changes nothing
else); bn_drift is near zero on data like the statistics' and grows with a domain shift."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionloop.bn import bn_drift, fuse_conv_bn, recalibrate_bn


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
    ).eval()  # fmt: skip


def domain(shift: float, scale: float, batches: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 10, 10, generator=g) * scale + shift for _ in range(batches)]


def test_running_statistics_become_those_of_the_target_images():
    model = small_net()
    target = domain(shift=3.0, scale=2.0)
    report = recalibrate_bn(model, target)
    assert (report.layers, report.batches, report.images) == (2, 6, 48)
    with torch.no_grad():
        first = torch.cat([model[0](b) for b in target])  # what the first BatchNorm sees
    channel_mean = first.mean(dim=(0, 2, 3))
    channel_var = first.var(dim=(0, 2, 3))
    torch.testing.assert_close(model[1].running_mean, channel_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model[1].running_var, channel_var, rtol=0.05, atol=1e-3)


def test_nothing_but_the_statistics_changes_and_modes_are_restored():
    model = small_net()
    model[1].momentum = 0.2
    weights = {k: v.clone() for k, v in model.named_parameters()}
    recalibrate_bn(model, domain(shift=1.0, scale=1.0))
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m.training for m in model.modules())
    assert model[1].momentum == 0.2


def test_recalibrating_recovers_the_outputs_of_a_model_calibrated_on_that_domain():
    target = domain(shift=-2.0, scale=0.5)
    reference = small_net()
    recalibrate_bn(reference, target)
    shifted = small_net()
    recalibrate_bn(shifted, domain(shift=4.0, scale=3.0, seed=1))  # the "wrong" domain
    x = target[0]
    with torch.no_grad():
        assert not torch.allclose(shifted(x), reference(x), atol=1e-2)
        recalibrate_bn(shifted, target)
        torch.testing.assert_close(shifted(x), reference(x), rtol=1e-4, atol=1e-4)


def test_recalibrate_then_fuse_gives_the_recalibrated_outputs():
    model = small_net()
    target = domain(shift=2.0, scale=1.5)
    recalibrate_bn(model, target)
    fused = fuse_conv_bn(model)
    with torch.no_grad():
        torch.testing.assert_close(fused(target[0]), model(target[0]), rtol=1e-4, atol=1e-4)


def test_no_images_or_no_batchnorm_is_a_clear_error_that_changes_nothing():
    model = small_net()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="no images"):
        recalibrate_bn(model, [])
    assert torch.equal(model[1].running_mean, before)
    with pytest.raises(ValueError, match="fused already"):
        recalibrate_bn(fuse_conv_bn(model), domain(0.0, 1.0))


def test_drift_is_near_zero_in_domain_and_grows_with_the_shift():
    model = small_net()
    recalibrate_bn(model, domain(shift=0.0, scale=1.0, batches=20))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    same = bn_drift(model, domain(0.0, 1.0, batches=1, seed=5)[0])
    mild = bn_drift(model, domain(0.5, 1.2, batches=1, seed=5)[0])
    strong = bn_drift(model, domain(3.0, 3.0, batches=1, seed=5)[0])
    assert set(same.layers) == {"1", "4"}
    assert same.score < 0.05
    assert same.score < mild.score < strong.score
    assert strong.score > 20 * same.score
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # read-only


def test_drift_needs_the_unfused_model():
    with pytest.raises(ValueError, match="fused already"):
        bn_drift(fuse_conv_bn(small_net()), domain(0.0, 1.0)[0])
