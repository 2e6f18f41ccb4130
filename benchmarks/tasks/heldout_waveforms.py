"""Held-out task (not tuned for): a 1D CNN with BatchNorm1d on generated noisy waveforms, default SGD.

Each signal is one of 4 shapes (sine, square, triangle, sawtooth) at a random frequency and phase,
in strong Gaussian noise; the model says which shape. build_model takes no `norm`: batchtune converts
the BatchNorm1d layers. Data are generated from fixed seeds.
"""
import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

LENGTH = 64
CLASSES = 4


def _signals(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(LENGTH, dtype=torch.float32)
    freq = 1.5 + 3.0 * torch.rand(n, 1, generator=g)
    phase = torch.rand(n, 1, generator=g)
    x = (t / LENGTH) * freq + phase
    frac = x - torch.floor(x)
    label = torch.randint(0, CLASSES, (n,), generator=g)
    shapes = torch.stack([torch.sin(2 * math.pi * x), torch.sign(torch.sin(2 * math.pi * x)),
                          4 * (frac - 0.5).abs() - 1, 2 * frac - 1], dim=1)
    clean = shapes[torch.arange(n), label]
    noisy = clean + 0.8 * torch.randn(n, LENGTH, generator=g)
    return TensorDataset(noisy.unsqueeze(1), label)


def build_model():
    return nn.Sequential(
        nn.Conv1d(1, 32, 7, padding=3), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(32, 64, 5, padding=2), nn.BatchNorm1d(64), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(64, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        nn.Flatten(), nn.Linear(64, CLASSES))


def train_dataset():
    return _signals(3000, seed=0)


def val_dataset():
    return _signals(1000, seed=1)
