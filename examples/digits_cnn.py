"""A small CNN on scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes).

Needs scikit-learn (`pip install "batchtune[examples]"`). Run:
    batchtune search examples/digits_cnn.py --trials 20
"""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

VAL_FRACTION = 0.2


def _norm(kind, channels):
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # layer norm over (C, H, W)
    return nn.Identity()


def build_model(norm="batch"):
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        _norm(norm, 32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        _norm(norm, 64),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(64, 64, 3, padding=1),
        _norm(norm, 64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 10),
    )


def _split():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = int(len(y) * VAL_FRACTION)
    return (x[order[n_val:]], y[order[n_val:]]), (x[order[:n_val]], y[order[:n_val]])


def train_dataset():
    (x, y), _ = _split()
    return TensorDataset(x, y)


def val_dataset():
    _, (x, y) = _split()
    return TensorDataset(x, y)
