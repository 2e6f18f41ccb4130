"""Swapping the BatchNorm layers of a freshly built model for another normalization.

Only layers whose forward pass is known are converted: the exact torch BatchNorm classes, and timm's
``BatchNormAct2d`` / ``SyncBatchNormAct`` (BatchNorm, then their ``drop`` and ``act`` modules, as in
``timm/layers/norm_act.py``), whose drop and activation are kept behind the new norm. Any other
subclass of BatchNorm may add behaviour (an activation, a drop path), so it is refused: replacing it
by a bare GroupNorm would silently change what the model computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# timm's norm+activation layers: forward is batch_norm(x) -> self.drop(x) -> self.act(x).
_NORM_ACT = {("timm.layers.norm_act", "BatchNormAct2d"), ("timm.layers.norm_act", "SyncBatchNormAct"),
             ("timm.models.layers.norm_act", "BatchNormAct2d")}


class UnconvertibleNorm(ValueError):
    """A BatchNorm subclass whose extra behaviour the swap cannot keep; ``layer`` names it in the model."""

    def __init__(self, layer: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.layer = layer
        self.kind = kind


def count_batchnorm(model: nn.Module) -> int:
    return len(batchnorm_layers(model))


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    """The BatchNorm layers (1d/2d/3d, SyncBatchNorm and their subclasses) of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, _BATCHNORMS)]


def _is_norm_act(module: nn.Module) -> bool:
    cls = type(module)
    return (cls.__module__, cls.__name__) in _NORM_ACT


def unconvertible_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, class)`` of the BatchNorm subclasses the swap does not know, so will not convert."""
    return [
        (f"model.{name}" if name else "model", type(m).__name__)
        for name, m in model.named_modules()
        if isinstance(m, _BATCHNORMS) and type(m) not in _BATCHNORMS and not _is_norm_act(m)
    ]


# The fewest channels a group holds when GroupNorm normalizes (batch, C) feature vectors (Wu and He 2018,
# table 3(b): 16 channels per group as good as any fixed number, 1 or 2 per group the worst).
MIN_GROUP_CHANNELS = 16


def group_count(bn: nn.modules.batchnorm._NormBase) -> int:
    """gcd(32, C): the groups of the GroupNorm that stands in for ``bn`` (32 is Wu and He's default)."""
    return math.gcd(32, bn.num_features)


def feature_group_count(channels: int, groups: int) -> int:
    """``groups`` halved until each group holds at least ``MIN_GROUP_CHANNELS`` channels (1 when C is below
    that): the groups for (batch, C) inputs, where a group pools only its own C/G values of one sample."""
    while groups > 1 and channels // groups < MIN_GROUP_CHANNELS:
        groups //= 2
    return groups


class FeatureGroupNorm(nn.GroupNorm):
    """GroupNorm that stands in for a BatchNorm able to see (batch, C) inputs (BatchNorm1d, SyncBatchNorm).

    On (batch, C, *) it is GroupNorm with ``num_groups`` groups: each group pools its channels at every
    position. On (batch, C) a group pools only its own C/G values of one sample: at 2 per group every
    normalized value is -1 or +1, at 1 it is 0, and the layer passes on signs or nothing. There it uses
    ``feature_groups`` (:func:`feature_group_count`). The affine is per channel either way. Measured on
    MLPs of widths 32 to 256 on 3 tasks in ``benchmarks/group_norm_features.py``.
    """

    def __init__(self, num_groups: int, num_channels: int, feature_groups: int, **kwargs: Any) -> None:
        super().__init__(num_groups, num_channels, **kwargs)
        self.feature_groups = feature_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.num_groups if x.dim() > 2 else self.feature_groups
        return F.group_norm(x, groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_groups={self.feature_groups}"


def replacement(bn: nn.modules.batchnorm._NormBase, norm: str) -> nn.Module:
    """The layer that stands in for ``bn``.

    ``group``: GroupNorm with :func:`group_count` groups; for a BatchNorm that can see (batch, C) inputs, a
    :class:`FeatureGroupNorm` that uses fewer groups on those.
    ``layer``: GroupNorm with one group, which normalizes each sample over (C, *), the layer-norm
    equivalent for every BatchNorm kind, with a per-channel affine like BatchNorm's.
    ``none``: Identity.
    A timm norm+activation layer becomes ``Sequential(new norm, its drop, its act)``.
    """
    channels = bn.num_features
    if norm == "none":
        new: nn.Module = nn.Identity()
    else:
        if norm == "group":
            groups = group_count(bn)
        elif norm == "layer":
            groups = 1
        else:
            raise ValueError(f"unknown normalization {norm!r}")
        ref = bn.weight if bn.affine else bn.running_mean
        kwargs: dict[str, Any] = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        features = feature_group_count(channels, groups)
        if isinstance(bn, (nn.BatchNorm1d, nn.SyncBatchNorm)) and features != groups:
            new = FeatureGroupNorm(groups, channels, features, eps=bn.eps, affine=bn.affine, **kwargs)
        else:
            new = nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine, **kwargs)
        _keep_affine(bn, new)
    if _is_norm_act(bn):
        return nn.Sequential(new, getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity()))
    return new


def _keep_affine(bn: nn.Module, new: nn.Module) -> None:
    """The per-channel scale and shift carry over (a built or pretrained model's values, ones and zeros
    when fresh), and so does ``requires_grad``: a BatchNorm in a frozen backbone stays frozen."""
    for name in ("weight", "bias"):
        old, param = getattr(bn, name, None), getattr(new, name, None)
        if isinstance(old, torch.Tensor) and isinstance(param, nn.Parameter) and old.shape == param.shape:
            with torch.no_grad():
                param.copy_(old)
            param.requires_grad_(old.requires_grad)


def convert_norm(model: nn.Module, norm: str) -> nn.Module:
    """Replace every BatchNorm of ``model`` in place; call it only on a model built for this trial.

    Raises :class:`UnconvertibleNorm` for a BatchNorm subclass of unknown behaviour, and checks that
    every module other than the BatchNorm layers is still in the model afterwards.
    """
    if norm == "batch":
        return model
    unknown = unconvertible_layers(model)
    if unknown:
        name, kind = unknown[0]
        raise UnconvertibleNorm(
            name, kind,
            f"{kind} at {name} is a subclass of BatchNorm that may do more than normalize (an activation, "
            f"a drop path), so it cannot be swapped for {norm} norm without changing the model",
        )
    kept = {id(m): (f"model.{name}" if name else "model", type(m).__name__)
            for name, m in model.named_modules() if not isinstance(m, _BATCHNORMS)}
    converted = _convert(model, norm)
    after = {id(m) for m in converted.modules()}
    lost = [v for k, v in kept.items() if k not in after]
    if lost:
        name, kind = lost[0]
        raise UnconvertibleNorm(
            name, kind,
            f"swapping BatchNorm for {norm} norm would remove {len(lost)} other module(s) from the model "
            f"(first: {kind} at {name})",
        )
    return converted


def _convert(model: nn.Module, norm: str, done: dict[int, nn.Module] | None = None) -> nn.Module:
    """``done`` maps each BatchNorm already replaced to its replacement: a layer registered twice (shared by
    two branches) gets one replacement, shared the same way, not two independent ones."""
    done = {} if done is None else done
    if isinstance(model, _BATCHNORMS):
        return done.setdefault(id(model), replacement(model, norm))
    # Not named_children(): it yields a module registered under two names once, leaving the second name
    # holding the BatchNorm.
    for name, child in list(model._modules.items()):
        if child is None:
            continue
        if isinstance(child, _BATCHNORMS):
            if id(child) not in done:
                done[id(child)] = replacement(child, norm)
            setattr(model, name, done[id(child)])
        elif id(child) not in done:
            done[id(child)] = child  # a shared submodule is walked once
            _convert(child, norm, done)
    return model
