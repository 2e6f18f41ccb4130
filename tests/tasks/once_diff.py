"""A model with an operation that has a first derivative only (@once_differentiable): --curvature must refuse it."""

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.data import TensorDataset


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return _Square.apply(self.linear(x))


def build_model():
    return Model()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x[:, :3].argmax(dim=1))


def train_dataset():
    return _data(256, 0)


def val_dataset():
    return _data(64, 1)
