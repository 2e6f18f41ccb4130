"""A 49:1 imbalanced binary task: the minority class is 2% of the samples."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model(norm="batch"):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=g)[: n // 50]] = 1
    return TensorDataset(x, y)


def train_dataset():
    return _data(1000, 0)


def val_dataset():
    return _data(200, 1)
