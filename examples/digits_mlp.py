"""An MLP with BatchNorm1d on scikit-learn's handwritten digits (1,797 real images as 64 features).

The model where BatchNorm's small-batch collapse shows (Ioffe 2017; Wu and He 2018): in training,
BatchNorm1d normalizes each feature over the samples of the batch, so at batch 2 every normalized
activation is -1 or +1 whatever the input, and the running averages used at evaluation describe
different activations than the ones the next layer learned on. GroupNorm normalizes each sample on
its own and does not care about the batch. Needs scikit-learn (`pip install "batchtune[examples]"`).
Run:
    batchtune search examples/digits_mlp.py --batch-sizes 2,4,8,32 --norms batch,group --trials 12
"""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

VAL_FRACTION = 0.2
HIDDEN = 128


def _norm(kind, features):
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "group":
        return nn.GroupNorm(8, features)  # 8 groups of 16 features, per sample
    if kind == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()


def build_model(norm="batch"):
    return nn.Sequential(
        nn.Linear(64, HIDDEN),
        _norm(norm, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        _norm(norm, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 10),
    )


def _split():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values are 0..16
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
