"""A 21-sample training set and a BatchNorm1d model: batch size and BatchNorm pitfalls."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model(norm="batch"):
    mid = nn.BatchNorm1d(8) if norm == "batch" else nn.GroupNorm(2, 8)
    return nn.Sequential(nn.Linear(4, 8), mid, nn.ReLU(), nn.Linear(8, 2))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def train_dataset():
    return _data(21, 0)


def val_dataset():
    return _data(16, 1)
