"""A tiny task whose first real trial misbehaves, chosen by BATCHTUNE_TEST_FAULT.

kill: the trial's process kills itself with SIGKILL; hang: it sleeps forever; raise: ValueError;
nan: the loss becomes NaN; slow: each step sleeps 0.3 s (a trial to interrupt). The fault fires once,
in the first training step larger than the dry run's batch of 2; BATCHTUNE_TEST_FAULT_DIR holds the
marker that says it has fired (BATCHTUNE_TEST_FAULT_ALWAYS=1 fires it in every trial).
"""

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _fire():
    fault = os.environ.get("BATCHTUNE_TEST_FAULT", "")
    if not fault:
        return ""
    if os.environ.get("BATCHTUNE_TEST_FAULT_ALWAYS") == "1":
        return fault
    marker = Path(os.environ["BATCHTUNE_TEST_FAULT_DIR"]) / "fired"
    if marker.exists():
        return ""
    marker.write_text(str(os.getpid()))
    return fault


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        fault = _fire() if self.training and x.shape[0] > 2 else ""
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(3600)
        if fault == "raise":
            raise ValueError("boom from the model")
        out = self.body(x)
        if fault == "nan":
            out = out * float("nan")
        if os.environ.get("BATCHTUNE_TEST_FAULT") == "slow" and self.training:
            time.sleep(0.3)
        return out


def build_model():
    return Net()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def train_dataset():
    return _data(128, 0)


def val_dataset():
    return _data(32, 1)
