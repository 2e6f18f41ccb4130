"""A wide MLP whose activations dominate its memory: each sample holds a 16,384-wide hidden layer
(pre- and post-activation plus their gradients, about 256 KiB), so the peak resident memory of a
training step grows clearly with the batch size, which is what a CPU memory-budget test needs."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

HIDDEN = 16384


def build_model(norm="none"):
    mid = nn.LayerNorm(HIDDEN) if norm == "layer" else nn.Identity()
    return nn.Sequential(nn.Linear(32, HIDDEN), mid, nn.ReLU(), nn.Linear(HIDDEN, 2))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def train_dataset():
    return _data(512, 0)


def val_dataset():
    return _data(64, 1)
