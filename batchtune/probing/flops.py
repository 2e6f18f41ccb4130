"""FLOPs: counting a training step, the device's peak by dtype, and a measured matmul ceiling."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Dense (no structured sparsity) tensor-core / FP32 peaks in TFLOP/s, from NVIDIA's datasheets:
# A100 (Ampere architecture whitepaper, table 1), H100 and H200 (H100/H200 datasheets, SXM, PCIe and
# NVL columns, sparsity figures halved), L4, L40, L40S, T4, V100 and A10 datasheets, and the Ada /
# Ampere GeForce whitepapers (RTX 4090, RTX 3090: FP16/BF16 with FP32 accumulate). "tf32" is what an
# fp32 matmul reaches when TF32 is allowed (torch.set_float32_matmul_precision("high")). None: the
# GPU has no tensor-core support for that dtype. Patterns are tried in order, the first match wins.
_PEAKS: tuple[tuple[str, dict[str, float | None]], ...] = (
    (r"H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0}),
    (r"H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (r"H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0}),
    (r"H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (r"H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (r"A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    (r"L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0}),
    (r"\bL40\b", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0, "fp16": 181.0}),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    (r"\bA10\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    (r"\bT4\b", {"fp32": 8.1, "tf32": None, "bf16": None, "fp16": 65.0}),
    (r"V100", {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0}),
    (r"RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    (r"RTX 3090", {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0}),
)

# What FlopCounterMode counts and what it leaves out (torch/utils/flop_counter.py registers formulas
# for matmuls, convolutions and attention only).
FLOPS_NOTE = (
    "FLOPs are counted once per curve with torch.utils.flop_counter.FlopCounterMode over one forward and "
    "backward pass: matrix multiplications, convolutions and attention kernels, 2 FLOPs per multiply-add. "
    "Left out: element-wise work (activations, normalization, dropout, residual adds), losses and "
    "softmax outside attention, the optimizer update, data loading and host-to-device copies, and any "
    "work in custom kernels the counter does not know. Utilisation is therefore a lower bound on how busy "
    "the device is, and the same count is used for every precision."
)


def _dtype_key(precision: str) -> str:
    if precision != "fp32":
        return precision
    # Ampere and newer run fp32 matmuls on TF32 tensor cores only when torch allows it.
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def table_peak(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a known GPU for ``precision`` (fp32/bf16/fp16), or None if unknown."""
    key = _dtype_key(precision)
    for pattern, peaks in _PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            value = peaks.get(key)
            if value is None and key == "tf32":
                value = peaks.get("fp32")
            return None if value is None else value * 1e12
    return None


def known_devices() -> list[str]:
    """The GPU name patterns of the peak table (for the docs and error messages)."""
    return [p.replace("\\b", "") for p, _ in _PEAKS]


@dataclass(frozen=True)
class PeakFlops:
    """The peak a curve's utilisation is measured against."""

    flops: float | None  # FLOP/s
    source: str  # "--peak-flops", "table: <pattern>" or "unknown"


def device_peak(device_name: str, precision: str, override: float | None) -> PeakFlops:
    if override is not None:
        return PeakFlops(override, "--peak-flops")
    value = table_peak(device_name, precision)
    if value is None:
        return PeakFlops(None, "unknown: the device is not in the datasheet table; pass --peak-flops")
    return PeakFlops(value, f"datasheet dense peak ({_dtype_key(precision)})")


def count_training_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of ``step`` (a forward and backward pass), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_matmul_peak(device: torch.device, precision: str, *, seconds: float = 0.3) -> float:
    """Best FLOP/s of square matmuls in ``precision``'s dtype: the practical ceiling of this device.

    The size grows until one matmul takes a noticeable time (so launch overhead does not count), then
    matmuls repeat for about ``seconds``; the fastest one is reported, as in nanoGPT's bench.py.
    """
    from batchtune.trial.device import synchronize

    dtype = _DTYPES[precision]
    largest = 8192 if device.type == "cuda" else 2048
    n = 256
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.matmul(a, b)  # first call pays for kernel selection
        synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        elapsed = time.perf_counter() - t0
        best = max(best, 2 * n**3 / max(elapsed, 1e-9))
        if elapsed > seconds / 20 or n >= largest or time.perf_counter() > deadline:
            break
        n *= 2
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = max(best, 2 * n**3 / max(time.perf_counter() - t0, 1e-9))
    del a, b
    return best
