"""Statistical efficiency and goodput of a batch size (Pollux, Qiao et al., OSDI 2021).

Pure arithmetic on a measured throughput curve and a gradient noise scale; the measuring lives in
:mod:`batchtune.noise.measure`, the rendering in :mod:`batchtune.noise.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# The hardware knee: the first batch size after which doubling the batch buys less than this much
# more throughput. 10% per doubling is where the throughput curve has visibly flattened.
KNEE_GAIN_PER_DOUBLING = 0.10


def efficiency(batch_size: float, b_noise: float, reference: float) -> float:
    """Statistical efficiency of ``batch_size`` relative to ``reference``.

    Pollux eq. (5): E(M) = (phi + M0) / (phi + M), with phi the gradient noise scale. One sample at
    batch M makes E(M) as much training progress as one sample at batch M0; E(M0) = 1. It follows from
    McCandlish et al. 2018 eq. 2.11, where the steps needed scale as (1 + B_noise / B).
    """
    if batch_size <= 0 or reference <= 0:
        raise ValueError("batch sizes must be positive")
    if not math.isfinite(b_noise):
        return 1.0  # infinite noise scale: every sample counts fully at any batch size
    b_noise = max(0.0, b_noise)
    return (b_noise + reference) / (b_noise + batch_size)


def hardware_knee(curve: Mapping[int, float], gain: float = KNEE_GAIN_PER_DOUBLING) -> int | None:
    """The smallest batch size after which throughput gains flatten.

    The first size whose next measured size improves throughput by less than ``gain`` per doubling
    of the batch; the largest size when the curve never flattens; None for fewer than two points.
    """
    sizes = sorted(b for b, t in curve.items() if t is not None and math.isfinite(t) and t > 0)
    if len(sizes) < 2:
        return None
    for small, big in zip(sizes, sizes[1:]):
        doublings = math.log2(big / small)
        if curve[big] / curve[small] < (1.0 + gain) ** doublings:
            return small
    return sizes[-1]


@dataclass(frozen=True)
class GoodputCurve:
    """Throughput, efficiency and goodput at each candidate batch size."""

    sizes: tuple[int, ...]
    throughput: tuple[float, ...]  # samples/s
    efficiency: tuple[float, ...]  # relative to ``reference``
    goodput: tuple[float, ...]  # throughput * efficiency: reference-batch-equivalent samples/s
    b_noise: float
    reference: int
    best: int  # the batch size with the highest goodput
    best_range: tuple[int, int]  # the best batch size across the noise scale's uncertainty band
    knee: int | None
    throughput_source: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["best_range"] = list(self.best_range)
        return out


def goodput_curve(
    throughput: Mapping[int, float],
    b_noise: float,
    *,
    reference: int | None = None,
    band: Sequence[float | None] = (),
    source: str = "measured",
) -> GoodputCurve:
    """Goodput(B) = throughput(B) * E(B) over the measured sizes (Pollux eq. 6).

    ``reference`` defaults to the smallest size; the best batch size does not depend on it, since
    E(B) only changes by a constant factor. ``band`` holds the low and high ends of the noise scale's
    uncertainty band; the best size under each gives ``best_range``.
    """
    sizes = tuple(sorted(b for b, t in throughput.items() if t is not None and math.isfinite(t) and t > 0))
    if not sizes:
        raise ValueError("the throughput curve has no measured batch size")
    ref = reference or sizes[0]
    thr = tuple(float(throughput[b]) for b in sizes)

    def best_for(noise: float) -> int:
        values = [t * efficiency(b, noise, ref) for b, t in zip(sizes, thr)]
        return sizes[max(range(len(sizes)), key=values.__getitem__)]

    eff = tuple(efficiency(b, b_noise, ref) for b in sizes)
    good = tuple(t * e for t, e in zip(thr, eff))
    best = sizes[max(range(len(sizes)), key=good.__getitem__)]
    ends = [best_for(v if v is not None else math.inf) for v in band] or [best]
    ends.append(best)
    return GoodputCurve(
        sizes=sizes,
        throughput=thr,
        efficiency=eff,
        goodput=good,
        b_noise=b_noise,
        reference=ref,
        best=best,
        best_range=(min(ends), max(ends)),
        knee=hardware_knee(dict(zip(sizes, thr))),
        throughput_source=source,
    )


def compare(curve: GoodputCurve, recommended: int | None) -> list[str]:
    """Sentences that say where goodput, the hardware knee and the search's recommendation agree."""
    lines = []
    best, knee = curve.best, curve.knee
    lo, hi = curve.best_range
    span = f" ({lo} to {hi} across the noise scale's uncertainty band)" if lo != hi else ""
    lines.append(f"Goodput is highest at batch size {best}{span}.")
    if knee is not None:
        if knee == best:
            lines.append(f"The hardware knee is at {knee} too: the hardware and the statistics agree.")
        elif knee > best:
            lines.append(
                f"The hardware knee is at {knee}, above it: throughput still grows past {best}, but each extra "
                f"sample does less training there, since the noise scale ({curve.b_noise:.3g}) is small."
            )
        else:
            lines.append(
                f"The hardware knee is at {knee}, below it: throughput has flattened, yet the noise scale "
                f"({curve.b_noise:.3g}) says larger batches still lose little per sample."
            )
    if recommended is not None:
        if lo <= recommended <= hi:
            lines.append(f"The search recommended {recommended}, which agrees with goodput.")
        else:
            ratio = recommended / best
            side = "larger" if ratio > 1 else "smaller"
            lines.append(
                f"The search recommended {recommended}, {max(ratio, 1 / ratio):.3g}x {side} than the goodput "
                "optimum: the search judges the metric after a fixed budget of epochs, goodput judges training "
                "progress per second; trust the search for the final metric at that budget, goodput for time "
                "to a loss."
            )
    return lines
