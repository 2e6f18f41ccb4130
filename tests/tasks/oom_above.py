"""Raises an out-of-memory error when a batch is larger than BATCHTUNE_TEST_OOM_ABOVE.

BATCHTUNE_TEST_OOM_KIND picks the error: "torch" (torch.OutOfMemoryError, default), "cuda", "cudnn",
"mps", "hip", "xpu" or "cpu" (the RuntimeError messages of those allocators). BATCHTUNE_TEST_OOM_WHERE
picks where: "forward" (default), "backward" or "step" (the first optimizer step).
"""

import os

import torch
from torch import nn
from torch.utils.data import TensorDataset

MESSAGES = {
    "cuda": "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)",
    "cudnn": "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input.",
    "mps": "MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.00 GB)",
    "hip": "HIP out of memory. Tried to allocate 1.00 GiB",
    "xpu": "XPU out of memory. Tried to allocate 1.00 GiB",
    "cpu": "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes.",
}


def _raise():
    kind = os.environ.get("BATCHTUNE_TEST_OOM_KIND", "torch")
    if kind == "torch":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    raise RuntimeError(MESSAGES[kind])


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _raise()


class Net(nn.Module):
    def __init__(self, norm):
        super().__init__()
        mid = nn.BatchNorm1d(16) if norm == "batch" else nn.Identity()
        self.body = nn.Sequential(nn.Linear(8, 16), mid, nn.ReLU(), nn.Linear(16, 2))
        self.limit = int(os.environ.get("BATCHTUNE_TEST_OOM_ABOVE", "1000000"))
        self.where = os.environ.get("BATCHTUNE_TEST_OOM_WHERE", "forward")

    def forward(self, x):
        big = x.shape[0] > self.limit and self.training
        if big and self.where == "forward":
            _raise()
        out = self.body(x)
        if big and self.where == "backward":
            out = _Boom.apply(out)
        return out


class Optim(torch.optim.SGD):
    def __init__(self, params, lr, limit_model):
        super().__init__(params, lr=lr, momentum=0.9)
        self.limit_model = limit_model

    def step(self, closure=None):
        if self.limit_model.where == "step" and getattr(self.limit_model, "last_batch", 0) > self.limit_model.limit:
            _raise()
        return super().step(closure)


_current = {}


def build_model(norm="batch"):
    model = Net(norm)
    _current["model"] = model
    original = model.forward

    def forward(x):
        model.last_batch = x.shape[0]
        return original(x)

    model.forward = forward
    return model


def build_optimizer(params, lr):
    return Optim(params, lr, _current["model"])


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def train_dataset():
    return _data(512, 0)


def val_dataset():
    return _data(64, 1)
