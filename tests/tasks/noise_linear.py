"""Linear regression whose gradient noise is known in closed form (tests of the noise-scale estimator).

x ~ N(0, I_d), y = w*.x + eps with eps ~ N(0, SIGMA^2), model w.x with w = 0 at the start, loss the
mean squared error. The per-sample gradient is g = 2 (x.delta - eps) x with delta = w - w*, so
|G|^2 = 4 |delta|^2 and tr(Sigma) = 4 ((d + 1) |delta|^2 + SIGMA^2 d) (Gaussian fourth moments), and
at initialisation B_simple = ((d + 1) |w*|^2 + SIGMA^2 d) / |w*|^2.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

METRIC_MODE = "min"
W_STAR = torch.tensor([1.0, -2.0, 0.5, 0.0])
SIGMA = 2.0
D = len(W_STAR)
EXPECTED_B_SIMPLE = float(((D + 1) * W_STAR.pow(2).sum() + SIGMA**2 * D) / W_STAR.pow(2).sum())


def build_model():
    model = nn.Linear(D, 1, bias=False)
    nn.init.zeros_(model.weight)
    return model


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = x @ W_STAR + SIGMA * torch.randn(n, generator=g)
    return TensorDataset(x, y.unsqueeze(1))


def train_dataset():
    return _data(8192, 0)


def val_dataset():
    return _data(256, 1)


def loss_fn(output, target):
    return nn.functional.mse_loss(output, target)


def metric(output, target):
    return (output - target).abs().mean().item()


def build_optimizer(params, lr):
    return torch.optim.SGD(params, lr=lr)
