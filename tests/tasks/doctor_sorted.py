"""Training data ordered by label, and a validation set cut from the tail of the same sorted data."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model(norm="batch"):
    mid = nn.BatchNorm1d(16) if norm == "batch" else nn.Identity()
    return nn.Sequential(nn.Linear(4, 16), mid, nn.ReLU(), nn.Linear(16, 3))


def _sorted():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, generator=g)
    y = x[:, :3].argmax(dim=1)
    order = torch.argsort(y, stable=True)
    return x[order], y[order]


def train_dataset():
    x, y = _sorted()
    return TensorDataset(x[:320], y[:320])


def val_dataset():
    x, y = _sorted()
    return TensorDataset(x[320:], y[320:])  # only the last class: the classic slicing mistake
