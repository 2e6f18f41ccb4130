from __future__ import annotations

import pytest
import torch
from torch import nn

from batchtune.task.norm import convert_norm, count_batchnorm


def model():
    return nn.Sequential(
        nn.Conv2d(3, 48, 3), nn.BatchNorm2d(48), nn.ReLU(),
        nn.Sequential(nn.Conv3d(48, 6, 1), nn.BatchNorm3d(6, affine=False)),
        nn.Flatten(), nn.LazyLinear(4), nn.BatchNorm1d(4), nn.SyncBatchNorm(4),
    )


@pytest.mark.parametrize(
    "norm, kind, groups",
    [("group", nn.GroupNorm, [16, 2, 4, 4]), ("layer", nn.GroupNorm, [1, 1, 1, 1]), ("none", nn.Identity, None)],
)
def test_every_batchnorm_kind_is_replaced(norm, kind, groups):
    m = model()
    assert count_batchnorm(m) == 4
    convert_norm(m, norm)
    assert count_batchnorm(m) == 0
    replaced = [mod for mod in m.modules() if isinstance(mod, kind) and not isinstance(mod, nn.Sequential)]
    assert len(replaced) == 4
    if groups is not None:
        # gcd(32, C) groups for group norm: 48 -> 16, 6 -> 2, 4 -> 4; one group for layer norm.
        assert [g.num_groups for g in replaced] == groups
        assert [g.affine for g in replaced] == [True, False, True, True]


def test_converted_model_runs_and_keeps_dtype():
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)).to(torch.float64)
    convert_norm(m, "group")
    gn = m[1]
    assert isinstance(gn, nn.GroupNorm) and gn.weight.dtype == torch.float64 and gn.num_groups == 8
    out = m(torch.randn(2, 1, 5, 5, dtype=torch.float64))
    assert out.shape == (2, 8, 3, 3)


def test_batch_leaves_model_as_is():
    m = model()
    assert convert_norm(m, "batch") is m and count_batchnorm(m) == 4
