"""Robust statistics of timing samples, in the spirit of torch.utils.benchmark (median and IQR)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# torch.utils.benchmark.Measurement warns when IQR/median >= 10% ("noisy measurement").
NOISY_REL_IQR = 0.10


@dataclass(frozen=True)
class Stats:
    """Median and inter-quartile range of a sample."""

    median: float
    q25: float
    q75: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median else float("inf")

    @property
    def noisy(self) -> bool:
        return self.rel_iqr >= NOISY_REL_IQR


def summarize(values: Sequence[float]) -> Stats:
    if len(values) == 0:
        return Stats(float("nan"), float("nan"), float("nan"), 0)
    arr = np.asarray(values, dtype=float)
    q25, med, q75 = np.percentile(arr, [25, 50, 75])
    return Stats(float(med), float(q25), float(q75), int(arr.size))
