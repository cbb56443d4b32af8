"""BatchNorm tools shared by every model: Conv+BN fusion.

At inference a BatchNorm is an affine map per channel with frozen statistics, so it can be
folded into the convolution that feeds it:

    y = gamma * (W * x + b - mean) / sqrt(var + eps) + beta
      = (s * W) * x + (s * (b - mean) + beta),   with s = gamma / sqrt(var + eps)

The fused model computes the same function with one fewer pass over every activation.
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fuse_conv_bn(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution.

    A pair is fused when a ``Conv{1,2,3}d`` is immediately followed by a ``BatchNorm{1,2,3}d``
    in an ``nn.Sequential``: there the convolution's output provably feeds only the BatchNorm.
    The BatchNorm is replaced by ``nn.Identity`` so module paths stay stable.

    Args:
        model: A model in eval mode (fusion freezes the running statistics).
        inplace: Modify ``model`` itself instead of a deep copy.

    Returns:
        The fused model (``model`` itself when ``inplace``).

    Raises:
        ValueError: the model is in training mode.
    """
    if model.training:
        raise ValueError("fuse_conv_bn needs a model in eval mode; call model.eval() first")
    fused = model if inplace else copy.deepcopy(model)
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            _fuse_sequential(module)
    return fused


def _fuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for name, next_name in pairwise(names):
        conv, bn = seq._modules[name], seq._modules[next_name]
        if (
            isinstance(conv, _CONV_TYPES)
            and isinstance(bn, _BN_TYPES)
            and bn.running_mean is not None
            and bn.running_var is not None
        ):
            fold_bn_into_conv(conv, bn)
            seq._modules[next_name] = nn.Identity()


@torch.no_grad()
def fold_bn_into_conv(
    conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm
) -> None:
    """Rewrite ``conv``'s weight and bias so that ``conv(x) == bn(conv_before(x))`` in eval mode.

    The arithmetic is done in float64 and cast back, so fusion adds no rounding of its own.

    Raises:
        ValueError: ``bn`` keeps no running statistics, so it has nothing frozen to fold.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False)")
    weight = conv.weight.double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)

    scale = gamma / torch.sqrt(var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    conv.weight.copy_((weight * scale.reshape(shape)).to(conv.weight.dtype))
    new_bias = ((bias - mean) * scale + beta).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)
