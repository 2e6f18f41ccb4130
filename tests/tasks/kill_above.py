"""Kills its own process with SIGKILL, as the kernel's out-of-memory killer would, when a training
batch is larger than BATCHTUNE_TEST_KILL_ABOVE."""

import os
import signal

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.limit = int(os.environ.get("BATCHTUNE_TEST_KILL_ABOVE", "1000000"))

    def forward(self, x):
        if self.training and x.shape[0] > self.limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.body(x)


def build_model(norm="none"):
    return Net()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def train_dataset():
    return _data(256, 0)


def val_dataset():
    return _data(64, 1)
