"""Swapping the BatchNorm layers of a freshly built model for another normalization."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def count_batchnorm(model: nn.Module) -> int:
    return len(batchnorm_layers(model))


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    """The BatchNorm layers (1d/2d/3d, SyncBatchNorm) of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, _BATCHNORMS)]


def replacement(bn: nn.modules.batchnorm._NormBase, norm: str) -> nn.Module:
    """The layer that stands in for ``bn``.

    ``group``: GroupNorm with gcd(32, C) groups (32 is the default of Wu and He 2018).
    ``layer``: GroupNorm with one group, which normalizes each sample over (C, *), the layer-norm
    equivalent for every BatchNorm kind, with a per-channel affine like BatchNorm's.
    ``none``: Identity.
    """
    channels = bn.num_features
    if norm == "none":
        return nn.Identity()
    if norm == "group":
        groups = math.gcd(32, channels)
    elif norm == "layer":
        groups = 1
    else:
        raise ValueError(f"unknown normalization {norm!r}")
    ref = bn.weight if bn.affine else bn.running_mean
    kwargs: dict[str, Any] = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    return nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine, **kwargs)


def convert_norm(model: nn.Module, norm: str) -> nn.Module:
    """Replace every BatchNorm of ``model`` in place; call it only on a model built for this trial."""
    if norm == "batch":
        return model
    if isinstance(model, _BATCHNORMS):
        return replacement(model, norm)
    for name, child in list(model.named_children()):
        if isinstance(child, _BATCHNORMS):
            setattr(model, name, replacement(child, norm))
        else:
            convert_norm(child, norm)
    return model
