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


@pytest.mark.parametrize("channels, groups, features", [(32, 32, 2), (64, 32, 4), (128, 32, 8), (256, 32, 16),
                                                       (512, 32, 32), (48, 16, 2), (100, 4, 4), (8, 8, 1)])
def test_a_batchnorm1d_groups_feature_vectors_by_16_channels(channels, groups, features):
    m = nn.Sequential(nn.Linear(5, channels), nn.BatchNorm1d(channels))
    convert_norm(m, "group")
    gn = m[1]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == groups
    assert getattr(gn, "feature_groups", groups) == features
    x = torch.randn(6, channels)
    expected = nn.functional.group_norm(x, features, gn.weight, gn.bias, gn.eps)
    assert torch.allclose(gn(x), expected, atol=1e-6)


def test_group_norm_for_a_batchnorm1d_keeps_the_features():
    # At two channels per group (gcd(32, 64) = 32 groups) every normalized value would be -1 or +1, at one per group
    # 0: the layer would pass on the signs of differences, or nothing. 16 per group keeps the values graded.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 64), nn.BatchNorm1d(64))
    convert_norm(m, "group")
    out = m(torch.randn(4, 5)).detach()
    assert len(torch.unique(out.abs().round(decimals=3))) > 32
    assert not torch.allclose(out.abs(), torch.ones_like(out), atol=1e-3)


def test_a_batchnorm1d_on_sequences_keeps_gcd_32_groups():
    # On (batch, C, L) each group pools its channels at every position: Wu and He's 32 groups, as for a conv.
    m = nn.Sequential(nn.Conv1d(2, 64, 3), nn.BatchNorm1d(64))
    convert_norm(m, "group")
    gn = m[1]
    x = torch.randn(3, 64, 7)
    assert torch.allclose(gn(x), nn.functional.group_norm(x, 32, gn.weight, gn.bias, gn.eps), atol=1e-6)


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


# ------------------------------------------------------------------ BatchNorm subclasses with extra behaviour (issue 13)
# timm cannot be imported against this CPU torch (it imports a CUDA-built torchvision), so its
# BatchNormAct2d (timm/layers/norm_act.py: batch_norm, then self.drop, then self.act) is reproduced here.


class BatchNormAct2d(nn.BatchNorm2d):
    def __init__(self, channels, act_layer=nn.SiLU):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = act_layer()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


# The same class under timm's module path: the one BatchNorm subclass batchtune knows how to convert.
TimmBatchNormAct2d = type("BatchNormAct2d", (BatchNormAct2d,), {"__module__": "timm.layers.norm_act"})


def efficientnet_like(layer):
    return nn.Sequential(nn.Conv2d(3, 8, 3), layer(8), nn.Conv2d(8, 8, 3), layer(8), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_unknown_batchnorm_subclass_is_refused(norm):
    from batchtune.task.norm import UnconvertibleNorm

    with pytest.raises(UnconvertibleNorm, match=r"BatchNormAct2d at model\.1 is a subclass of BatchNorm that may do "
                                                r"more than normalize"):
        convert_norm(efficientnet_like(BatchNormAct2d), norm)


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_timm_norm_act_keeps_its_activation(norm):
    m = efficientnet_like(TimmBatchNormAct2d)
    acts = [mod.act for mod in m.modules() if isinstance(mod, TimmBatchNormAct2d)]
    convert_norm(m, norm)
    assert count_batchnorm(m) == 0
    assert sum(isinstance(mod, nn.SiLU) for mod in m.modules()) == 2  # none of the activations went away
    assert all(any(a is mod for mod in m.modules()) for a in acts)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7)
    block = m[1]
    assert isinstance(block, nn.Sequential) and block[2] is acts[0]
    h = m[0](x)
    assert torch.allclose(block(h), nn.functional.silu(block[0](h)))


def test_swap_that_would_lose_a_module_is_refused():
    from batchtune.task.norm import UnconvertibleNorm

    bn = nn.BatchNorm1d(4)
    bn.extra = nn.ReLU()  # an exact BatchNorm1d that carries a module the swap would drop
    with pytest.raises(UnconvertibleNorm, match=r"would remove 1 other module\(s\) from the model \(first: ReLU at "
                                                r"model\.1\.extra\)"):
        convert_norm(nn.Sequential(nn.Linear(3, 4), bn), "group")


def test_task_with_unknown_subclass_searches_batch_only(tasks, caplog):
    from batchtune.errors import TaskError
    from batchtune.task.contract import dry_run, load_task, search_norms

    task = load_task(tasks / "bn_act.py")
    norms, note = search_norms(task, None)
    assert norms == ("batch",) and "only batch norm is searched; add a `norm` argument to build_model" in note
    assert any("BatchNormAct2d at model.1" in r.getMessage() for r in caplog.records)
    dry_run(task, norms)
    with pytest.raises(TaskError, match=r"bn_act\.py: build_model\(\): BatchNormAct2d at model\.1 is a BatchNorm "
                                        r"subclass .* add a `norm` argument to build_model"):
        search_norms(task, ["batch", "group"])


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_a_frozen_batchnorm_stays_frozen_and_keeps_its_affine(norm):
    """A frozen backbone's BatchNorm became a trainable GroupNorm at ones and zeros: the swap unfroze 2 x C
    parameters and dropped the pretrained scale and shift."""
    backbone = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU())
    with torch.no_grad():
        backbone[1].weight.uniform_(0.5, 2.0)
        backbone[1].bias.uniform_(-1.0, 1.0)
    backbone.requires_grad_(False)
    model = nn.Sequential(backbone, nn.Flatten(), nn.LazyLinear(2))
    scale, shift = backbone[1].weight.clone(), backbone[1].bias.clone()
    converted = convert_norm(model, norm)
    new = converted[0][1]
    assert isinstance(new, nn.GroupNorm)
    assert not new.weight.requires_grad and not new.bias.requires_grad
    assert torch.equal(new.weight, scale) and torch.equal(new.bias, shift)
    trainable = [n for n, p in converted.named_parameters() if p.requires_grad]
    assert trainable == ["2.weight", "2.bias"]


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_a_shared_batchnorm_stays_shared(norm):
    """One BatchNorm used by two branches became two independent GroupNorms: the swapped model had more
    parameters than the user's, and its trials trained another architecture."""
    shared = nn.BatchNorm1d(32)

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 32), nn.Linear(4, 32)
            self.norm_a = shared
            self.norm_b = shared
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            return self.head(self.norm_a(self.a(x)) + self.norm_b(self.b(x)))

    model = TwoBranches()
    before = sum(p.numel() for p in model.parameters()) - 2 * 32  # the batch norm's own affine, counted once
    converted = convert_norm(model, norm)
    assert converted.norm_a is converted.norm_b
    replaced = converted.norm_a
    assert sum(p.numel() for p in converted.parameters()) == before + sum(p.numel() for p in replaced.parameters())
    assert count_batchnorm(converted) == 0
