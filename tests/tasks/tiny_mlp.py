"""A tiny, fast task: an MLP with a `norm` argument on separable generated data."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _norm(kind, c):
    return {"batch": nn.BatchNorm1d(c), "group": nn.GroupNorm(4, c), "layer": nn.LayerNorm(c)}.get(kind, nn.Identity())


def build_model(norm="batch"):
    return nn.Sequential(nn.Linear(8, 32), _norm(norm, 32), nn.ReLU(), nn.Linear(32, 3))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :3].argmax(dim=1))


def train_dataset():
    return _data(512, 0)


def val_dataset():
    return _data(128, 1)
