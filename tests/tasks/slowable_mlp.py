"""A tiny MLP whose training can be made slower on purpose, for the CI-gate tests.

BATCHTUNE_TEST_SLOWDOWN=0.15 makes every training step take about 15% more CPU time: each training
forward pass busy-waits for that fraction of the median step period of the model's first
``LEARN`` steps (measured without the wait itself), then holds that amount. Holding it matters:
``batchtune bench`` runs its reference workload between timed steps (not between warm-up steps),
and a period measured then would count that work as the step's and inject more than 15%. The
file's bytes do not change, so its fingerprint hash stays the same.
"""

import os
import time
from collections import deque

import torch
from torch import nn
from torch.utils.data import TensorDataset

SLOWDOWN = float(os.environ.get("BATCHTUNE_TEST_SLOWDOWN", "0") or 0)


LEARN = 8  # step periods measured before the spin is held: fewer than batchtune bench's 10 warm-up steps


class Slowed(nn.Module):
    """Runs ``inner`` after spinning for ``fraction`` of the un-slowed step period (0: no spin)."""

    def __init__(self, inner, fraction):
        super().__init__()
        self.inner = inner
        self.fraction = fraction
        self._last = None
        self._spent = 0.0
        self._periods = deque(maxlen=LEARN)

    def forward(self, x):
        now = time.process_time()
        if self._last is not None and len(self._periods) < LEARN:
            self._periods.append(now - self._last - self._spent)
        self._last, self._spent = now, 0.0
        if self.training and self.fraction > 0 and self._periods:
            end = now + self.fraction * sorted(self._periods)[len(self._periods) // 2]
            while time.process_time() < end:
                pass
            self._spent = time.process_time() - now
        return self.inner(x)


def _norm(kind, c):
    return {"batch": nn.BatchNorm1d(c), "group": nn.GroupNorm(4, c), "layer": nn.LayerNorm(c)}.get(kind, nn.Identity())


def build_model(norm="batch"):
    inner = nn.Sequential(nn.Linear(16, 64), _norm(norm, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    return Slowed(inner, SLOWDOWN)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return TensorDataset(x, x[:, :3].argmax(dim=1))


def train_dataset():
    return _data(1024, 0)


def val_dataset():
    return _data(256, 1)
