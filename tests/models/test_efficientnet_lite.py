"""EfficientNet-Lite0: the packaged weights map exactly, and our modules compute the same
function as a plain, module-free reference written straight from the lukemelas state dict."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from visionloop.models.efficientnet_lite import (
    EfficientNetLite,
    lite0_weights_path,
    map_lukemelas_keys,
)

# (kernel, stride, expand) of the 16 blocks, written out rather than derived from our stages.
BLOCKS = [
    (3, 1, 1),
    (3, 2, 6),
    (3, 1, 6),
    (5, 2, 6),
    (5, 1, 6),
    (3, 2, 6),
    (3, 1, 6),
    (3, 1, 6),
    (5, 1, 6),
    (5, 1, 6),
    (5, 1, 6),
    (5, 2, 6),
    (5, 1, 6),
    (5, 1, 6),
    (5, 1, 6),
    (3, 1, 6),
]


@pytest.fixture(scope="module")
def raw_weights() -> dict[str, torch.Tensor]:
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


def same_pad(x, kernel, stride):
    def amount(size):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = amount(x.shape[2]), amount(x.shape[3])
    return F.pad(x, (left, right, top, bottom))


def conv_bn(x, w, prefix, conv, bn, stride=1, groups=1, act=True):
    weight = w[f"{prefix}{conv}.weight"]
    x = F.conv2d(same_pad(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)
    x = F.batch_norm(
        x,
        w[f"{prefix}{bn}.running_mean"],
        w[f"{prefix}{bn}.running_var"],
        w[f"{prefix}{bn}.weight"],
        w[f"{prefix}{bn}.bias"],
        eps=1e-3,
    )
    return F.relu6(x) if act else x


def reference_forward(w, x):
    x = conv_bn(x, w, "", "_conv_stem", "_bn0", stride=2)
    for i, (_kernel, stride, expand) in enumerate(BLOCKS):
        p = f"_blocks.{i}."
        inputs = x
        if expand != 1:
            x = conv_bn(x, w, p, "_expand_conv", "_bn0")
        x = conv_bn(x, w, p, "_depthwise_conv", "_bn1", stride=stride, groups=x.shape[1])
        x = conv_bn(x, w, p, "_project_conv", "_bn2", act=False)
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = conv_bn(x, w, "", "_conv_head", "_bn1")
    return F.linear(x.mean(dim=(2, 3)), w["_fc.weight"], w["_fc.bias"])


def test_packaged_weights_have_the_expected_296_tensors(raw_weights):
    assert len(raw_weights) == 296


def test_weights_map_with_no_missing_or_unexpected_keys(raw_weights):
    model = EfficientNetLite()
    result = model.load_state_dict(map_lukemelas_keys(raw_weights), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys == []


def test_an_unknown_weight_name_is_an_error(raw_weights):
    name = re.escape("'_blocks.0._se_reduce.weight'")
    with pytest.raises(KeyError, match=f"unexpected EfficientNet-Lite weight name: {name}"):
        map_lukemelas_keys({**raw_weights, "_blocks.0._se_reduce.weight": torch.zeros(1)})


@pytest.mark.parametrize("size", [224, 225, 97])
def test_matches_reference_forward(lite0, raw_weights, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours = lite0(x)
        reference = reference_forward(raw_weights, x)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_stride_two_padding_is_asymmetric_like_tensorflow(lite0):
    # 224 -> 112 with kernel 3, stride 2: one extra column on the right/bottom only.
    pad = lite0.stem.pad
    assert pad._amount(224) == (0, 1)
    assert pad._amount(225) == (1, 1)


def test_padding_amounts_are_computed_once_per_input_size():
    from visionloop.models.efficientnet_lite import SamePad2d

    pad = SamePad2d(kernel=5, stride=2)
    assert pad.amounts(112, 113) == (2, 2, 1, 2)  # (left, right) from 113, (top, bottom) from 112
    pad._amount = None  # type: ignore[method-assign]  # a second call must not recompute
    assert pad.amounts(112, 113) == (2, 2, 1, 2)
    x = torch.ones(1, 1, 112, 113)
    assert pad(x).shape == (1, 1, 115, 117)
