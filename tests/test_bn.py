"""fuse_conv_bn: the fused model computes the same outputs, on real photos and on edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import EXPECTED
from visionloop import imaging
from visionloop.bn import fold_bn, fuse, fuse_conv_bn
from visionloop.models.catdog import CatDog


def real_batch(sample_bytes) -> torch.Tensor:
    crop = CatDog.input_spec.crop
    arrays = [imaging.prepare(sample_bytes[n], crop, imaging.ImageLimits()) for n in EXPECTED]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 127.5


def with_random_statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
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


def test_inplace_returns_the_same_object_and_changes_it():
    model = with_random_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        assert fuse_conv_bn(model, inplace=True) is model
        torch.testing.assert_close(model(x), before)
        torch.testing.assert_close(model[0](x), before)  # the conv alone now does both


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


def test_batchnorm_without_running_stats_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    x = torch.randn(2, 3, 8, 8)
    fused, report = fuse(model)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))
    assert report.skipped == [("1", "keeps no running statistics (track_running_stats=False)")]
    with pytest.raises(ValueError, match="no running statistics"):
        fold_bn(model[0], model[1])


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="needs a model in eval mode"):
        fuse_conv_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


# -- fusion of any model: traced with torch.fx, with what must be left alone ------------------


class Branchy(nn.Module):
    """Every case at once, in a forward that is not an nn.Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn_stem = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.grouped, self.bn_grouped = nn.Conv2d(8, 8, 1, groups=2), nn.BatchNorm2d(8)
        self.side, self.bn_side = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.shared = nn.BatchNorm2d(8)
        self.after_pool = nn.BatchNorm2d(8)
        self.fc, self.bn_fc = nn.Linear(8, 6), nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_stem(self.stem(x)))
        x = torch.relu(self.bn_dw(self.dw(x)))
        x = self.bn_grouped(self.grouped(x))
        s = self.side(x)
        x = x + self.bn_side(s) + s  # the conv's output is used twice: not fusable
        x = self.shared(self.shared(x))  # one BatchNorm applied twice
        x = self.after_pool(nn.functional.avg_pool2d(x, 2))  # follows a function
        return self.bn_fc(self.fc(x.mean(dim=(2, 3))))


def test_any_traceable_model_is_fused_where_it_is_safe_and_nowhere_else():
    model = with_random_statistics(Branchy())
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    fused, report = fuse(model)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    assert report.method == "fx"
    assert report.fused == [
        ("stem", "bn_stem"),
        ("dw", "bn_dw"),
        ("grouped", "bn_grouped"),
        ("fc", "bn_fc"),
    ]
    reasons = dict(report.skipped)
    assert reasons["bn_side"] == "the output of side is also used elsewhere"
    assert reasons["shared"] == "shared: used 2 times"
    assert reasons["after_pool"] == "follows a function or input, not a conv or linear layer"
    assert "left shared: shared: used 2 times" in str(report)


def test_fused_parameters_are_fewer():
    model = with_random_statistics(Branchy())
    fused = fuse_conv_bn(model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(fused) < count(model)


def test_a_shared_batchnorm_in_a_sequential_is_left_alone():
    bn = nn.BatchNorm2d(4)
    model = with_random_statistics(
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), bn, nn.ReLU(), nn.Conv2d(4, 4, 1), bn)
    )
    x = torch.randn(2, 4, 6, 6)
    fused, report = fuse(model)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    assert report.fused == []


def test_an_untraceable_model_falls_back_to_module_order_and_says_why(lite0):
    _, report = fuse(lite0)
    assert report.method == "sequential"
    assert "torch.fx could not trace it" in report.note
    assert len(report.fused) == 49
    assert report.skipped == []


def test_linear_then_batchnorm1d_is_fused():
    model = with_random_statistics(nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3), nn.ReLU()))
    x = torch.randn(7, 5)
    fused, report = fuse(model)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    assert report.fused == [("0", "1")]
