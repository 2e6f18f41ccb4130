"""Out-of-memory classification and recovery, in one place, for every backend."""

from __future__ import annotations

import gc

import torch

# Messages of OOMs that do not arrive as torch.OutOfMemoryError. Sources: c10 CUDA/HIP caching
# allocators, the MPS and XPU allocators, c10's DefaultCPUAllocator, and cuDNN/cuBLAS, which report
# allocation failure as NOT_SUPPORTED / ALLOC_FAILED (Lightning's `is_oom_error` treats the cuDNN one
# the same way).
_OOM_MESSAGES = (
    "cuda out of memory",
    "cuda error: out of memory",
    "hip out of memory",
    "hip error: out of memory",
    "mps backend out of memory",
    "xpu out of memory",
    "defaultcpuallocator: can't allocate memory",
    "defaultcpuallocator: not enough memory",
    "cudnn_status_not_supported",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "out of memory",
)


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` means the device ran out of memory."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(m in text for m in _OOM_MESSAGES)
    return False


def oom_reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"out of memory ({type(exc).__name__}: {first[:200]})"


def release_memory(device: torch.device | None = None) -> None:
    """Free cached memory. Call it after leaving the ``except`` block: a live traceback pins tensors."""
    gc.collect()
    if device is None or device.type == "cuda":
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if device is not None and device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
