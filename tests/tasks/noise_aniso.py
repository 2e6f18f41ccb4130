"""Linear regression with anisotropic inputs: B_noise (with the Hessian) and B_simple differ, both known.

x ~ N(0, D) with D diagonal, y = w*.x + eps, eps ~ N(0, SIGMA^2), model w.x from w = 0, mean squared error.
With delta = w - w*: H = 2D, G = 2 D delta, and (Gaussian fourth moments)
Sigma = 4 ((delta^T D delta + SIGMA^2) D + D delta delta^T D), so at w = 0
B_simple = tr(Sigma)/|G|^2 = ((dDd + s2) tr D + d D^2 d) / (d D^2 d) and
B_noise = tr(H Sigma)/(G^T H G) = ((dDd + s2) tr D^2 + d D^3 d) / (d D^3 d), d = delta.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

METRIC_MODE = "min"
SCALES = torch.tensor([3.0, 1.0, 1.0, 1.0])  # standard deviations of the inputs: D = diag(SCALES^2)
W_STAR = torch.tensor([0.1, 1.0, 1.0, 1.0])  # the gradient points mostly along low curvature
SIGMA = 1.0
D = SCALES.pow(2)
_dDd = float((W_STAR.pow(2) * D).sum())
EXPECTED_B_SIMPLE = ((_dDd + SIGMA**2) * float(D.sum()) + float((W_STAR.pow(2) * D.pow(2)).sum())) / float(
    (W_STAR.pow(2) * D.pow(2)).sum()
)
EXPECTED_B_NOISE = ((_dDd + SIGMA**2) * float(D.pow(2).sum()) + float((W_STAR.pow(2) * D.pow(3)).sum())) / float(
    (W_STAR.pow(2) * D.pow(3)).sum()
)


def build_model():
    model = nn.Linear(len(W_STAR), 1, bias=False)
    nn.init.zeros_(model.weight)
    return model


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(W_STAR), generator=g) * SCALES
    y = x @ W_STAR + SIGMA * torch.randn(n, generator=g)
    return TensorDataset(x, y.unsqueeze(1))


def train_dataset():
    return _data(16384, 0)


def val_dataset():
    return _data(256, 1)


def loss_fn(output, target):
    return nn.functional.mse_loss(output, target)


def build_optimizer(params, lr):
    return torch.optim.SGD(params, lr=lr)
