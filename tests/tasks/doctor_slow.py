"""A plain Dataset whose __getitem__ does slow per-item work (5 ms), starving a tiny model."""

import time

import torch
from torch import nn
from torch.utils.data import Dataset


class Slow(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        time.sleep(0.005)  # stands in for decoding an image from disk
        return self.x[i], self.y[i]


def build_model(norm="batch"):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def train_dataset():
    return Slow(96, 0)


def val_dataset():
    return Slow(16, 1)
