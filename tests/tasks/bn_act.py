"""A CNN built from a BatchNorm subclass that also applies its activation, as timm's BatchNormAct2d does.

timm cannot be imported against this CPU torch (it imports torchvision, built for CUDA here), so
``BatchNormAct2d`` below reproduces timm.layers.norm_act.BatchNormAct2d: BatchNorm2d, then ``drop``,
then ``act``. Defined here it is a subclass batchtune does not know, so it must not be swapped.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class BatchNormAct2d(nn.BatchNorm2d):
    def __init__(self, channels, act_layer=nn.SiLU):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = act_layer()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


def build_model():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), BatchNormAct2d(8),
        nn.Conv2d(8, 8, 3, padding=1), BatchNormAct2d(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def train_dataset():
    return _data(32, 0)


def val_dataset():
    return _data(16, 1)
