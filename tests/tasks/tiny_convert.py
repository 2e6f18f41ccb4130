"""No `norm` argument: batchtune converts the BatchNorm layers. Items come from a plain Dataset."""

import torch
from torch import nn
from torch.utils.data import Dataset


class Blobs(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 6, 6, generator=g)
        self.y = (self.x.mean(dim=(1, 2, 3)) > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def build_model():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2)
    )


def train_dataset():
    return Blobs(256, 0)


def val_dataset():
    return Blobs(64, 1)
