"""A tiny MLP without BatchNorm whose optimizer records the learning rate of every step (LRS)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

NORMS = ["none"]
LRS = []


class RecordingSGD(torch.optim.SGD):
    def step(self, closure=None):
        LRS.append(self.param_groups[0]["lr"])
        return super().step(closure)


def build_model(norm="none"):
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :3].argmax(dim=1))


def train_dataset():
    return _data(512, 0)


def val_dataset():
    return _data(128, 1)


def build_optimizer(params, lr):
    return RecordingSGD(params, lr=lr, momentum=0.9)
