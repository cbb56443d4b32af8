"""fuse_conv_bn: the fused model computes the same outputs, on real photos and on edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import EXPECTED
from visionloop import imaging
from visionloop.bn import fold_bn_into_conv, fuse_conv_bn
from visionloop.models.catdog import CatDog


def real_batch(sample_bytes) -> torch.Tensor:
    crop = CatDog.input_spec.crop
    arrays = [imaging.prepare(sample_bytes[n], crop, imaging.ImageLimits()) for n in EXPECTED]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 127.5


def with_random_statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=generator))
                m.bias.data.copy_(torch.randn(m.num_features, generator=generator))
    return model.eval()


def test_fused_lite0_matches_unfused_on_real_photos(lite0, sample_bytes):
    x = real_batch(sample_bytes)
    fused = fuse_conv_bn(lite0)
    with torch.no_grad():
        before, after = lite0(x), fused(x)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)
    assert torch.equal(before.argmax(1), after.argmax(1))


def test_fusion_removes_every_batchnorm_of_lite0(lite0):
    fused = fuse_conv_bn(lite0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in lite0.modules()) == 49


def test_default_is_a_copy_and_leaves_the_original_untouched(lite0):
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    fuse_conv_bn(lite0)
    after = lite0.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_inplace_returns_the_same_object():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    assert fuse_conv_bn(model, inplace=True) is model
    assert isinstance(model[1], nn.Identity)


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
def test_fusion_is_exact_for_bias_affine_and_groups(conv_bias, affine, groups):
    model = with_random_statistics(
        nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=conv_bias),
            nn.BatchNorm2d(8, affine=affine),
            nn.ReLU(),
        )
    )
    x = torch.randn(2, 8, 9, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fuse_conv_bn(model)(x), model(x), rtol=1e-5, atol=1e-5)


def test_conv1d_and_conv3d_are_fused_too():
    for conv, bn, shape in [
        (nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), (2, 3, 11)),
        (nn.Conv3d(3, 5, 3), nn.BatchNorm3d(5), (2, 3, 6, 6, 6)),
    ]:
        model = nn.Sequential(conv, bn).eval()
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(fuse_conv_bn(model)(x), model(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_not_after_a_conv_is_left_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    fused = fuse_conv_bn(model)
    assert isinstance(fused[1], nn.BatchNorm1d)


def test_batchnorm_without_running_stats_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert isinstance(fuse_conv_bn(model)[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="no running statistics"):
        fold_bn_into_conv(model[0], model[1])


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="needs a model in eval mode"):
        fuse_conv_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
