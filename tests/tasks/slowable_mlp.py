"""A tiny MLP whose training can be made slower on purpose, for the CI-gate tests and benchmark.

BATCHTUNE_TEST_SLOWDOWN=0.15 makes every training step about 15% slower; BATCHTUNE_TEST_SLOWDOWN_KIND
says how (default ``compute``):

- ``compute``: each training forward pass busy-waits (burns CPU) for that fraction of the step;
- ``stall``: each training forward pass sleeps that long (a host stall: a synchronising or logging
  call, a lock); CPU time cannot see it, wall time can;
- ``data``: the data path sleeps that long while making each batch (``collate``: a data loader
  starved by I/O or a lock); a task file opts in by setting ``collate_fn = collate``;
- ``memory``: the model holds an extra buffer of that fraction of the process's resident memory,
  touched once (peak memory grows by about that much; the step time barely changes).

The fraction is of the median step period of the model's first ``LEARN`` steps, measured in CPU
time without the injected wait (the work of an uncontended step), and then held. Holding it
matters: ``batchtune bench`` runs its reference workload between timed steps (not between warm-up
steps), and a period measured then would count that work as the step's. The file's bytes do not
change, so its fingerprint hash stays the same.
"""

import os
import time
from collections import deque

import torch
from torch import nn
from torch.utils.data import TensorDataset

SLOWDOWN = float(os.environ.get("BATCHTUNE_TEST_SLOWDOWN", "0") or 0)
KIND = os.environ.get("BATCHTUNE_TEST_SLOWDOWN_KIND", "compute") or "compute"
KINDS = ("compute", "stall", "data", "memory")
if KIND not in KINDS:
    raise ValueError(f"BATCHTUNE_TEST_SLOWDOWN_KIND={KIND!r}: choose from {', '.join(KINDS)}")

LEARN = 8  # step periods measured before the wait is held: fewer than batchtune bench's 10 warm-up steps

# The model built last: collate() reads its learned step period (a fresh model per repeat; one process
# trains one model at a time).
_latest = []


def _resident_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Slowed(nn.Module):
    """Runs ``inner`` after waiting for ``fraction`` of the un-slowed step period (0: no wait)."""

    def __init__(self, inner, fraction, kind=KIND):
        super().__init__()
        self.inner = inner
        self.fraction = fraction
        self.kind = kind
        self._last = None
        self._spent = 0.0
        self._periods = deque(maxlen=LEARN)
        self._ballast = None
        _latest[:] = [self]

    def wait_seconds(self):
        """The injected wait per step: ``fraction`` of the learned median period (0 while learning)."""
        if self.fraction <= 0 or not self._periods:
            return 0.0
        return self.fraction * sorted(self._periods)[len(self._periods) // 2]

    def forward(self, x):
        now = time.process_time()
        if self._last is not None and len(self._periods) < LEARN:
            self._periods.append(now - self._last - self._spent)
        self._last, self._spent = now, 0.0
        if self.training and self.fraction > 0:
            if self.kind == "compute" and self._periods:
                end = now + self.wait_seconds()
                while time.process_time() < end:
                    pass
                self._spent = time.process_time() - now
            elif self.kind == "stall" and self._periods:
                time.sleep(self.wait_seconds())  # costs next to no CPU time, so _spent stays 0
            elif self.kind == "memory" and self._ballast is None:
                # Filled, so the pages are resident; kept for the model's life (one repeat).
                self._ballast = torch.ones(int(self.fraction * _resident_bytes()) // 4)
        return self.inner(x)


def collate(items):
    """Stack (input, target) items into a batch; with the ``data`` kind, sleep like a starved loader."""
    if KIND == "data" and _latest and _latest[0].training:
        time.sleep(_latest[0].wait_seconds())
    inputs, targets = zip(*items)
    return torch.stack(inputs), torch.stack(targets)


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
