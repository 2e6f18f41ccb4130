"""The probe's result values (probe.json, schema 1) and what follows from the measured points.

Measuring lives in :mod:`batchtune.probe`, rendering in :mod:`batchtune.probing.report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SCHEMA = 1


@dataclass(frozen=True)
class ProbePoint:
    """One measured batch size of one curve."""

    batch_size: int
    fits: bool
    status: str  # ok | oom | over-budget | failed | killed | timeout
    reason: str | None = None  # why it does not fit; None when it fits
    throughput: float | None = None  # samples/s, median over synchronised timed steps
    step_time_median: float | None = None  # seconds
    step_time_iqr: float | None = None
    timed_steps: int = 0
    peak_memory_bytes: int | None = None  # max(train peak, eval peak)
    train_peak_bytes: int | None = None
    eval_peak_bytes: int | None = None
    reserved_bytes: int | None = None  # CUDA: max_memory_reserved over the measurement
    baseline_memory_bytes: int | None = None  # allocated (CUDA) / resident (CPU) before the model was built
    memory_after_bytes: int | None = None  # CUDA/MPS: allocated after memory was released (leak check)
    memory_kind: str | None = None
    achieved_flops: float | None = None  # counted FLOPs per sample x samples/s
    mfu: float | None = None  # achieved / datasheet (or --peak-flops) peak
    matmul_utilisation: float | None = None  # achieved / measured matmul ceiling
    order: int = 0  # 1 for the first size measured in this curve, and so on
    wall_time: float = 0.0

    @property
    def step_time_rel_iqr(self) -> float | None:
        if self.step_time_iqr is None or not self.step_time_median:
            return None
        return self.step_time_iqr / self.step_time_median


@dataclass(frozen=True)
class MemoryModel:
    """peak = fixed + per_sample x batch, least squares over the sizes that ran (ok status)."""

    fixed_bytes: float  # weights, gradients, optimizer state, workspace, the process itself on CPU
    per_sample_bytes: float  # activations and other memory that grows with the batch
    r2: float | None
    n_points: int
    limit_bytes: int | None
    predicted_max: int | None  # the largest batch the line puts under the limit; a prediction, not a measurement

    def predict(self, batch_size: float) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size


@dataclass(frozen=True)
class ProbeCurve:
    """Every measured size of one normalization and precision, and what they say."""

    norm: str
    precision: str
    points: tuple[ProbePoint, ...]
    largest_fit: int | None
    recommended_max: int | None
    knee: int | None
    stop_reason: str
    memory_model: MemoryModel | None
    flops_per_sample: float | None
    peak_flops: float | None
    peak_flops_source: str
    matmul_peak_flops: float | None

    @property
    def measured_sizes(self) -> int:
        return len(self.points)

    def point(self, batch_size: int | None) -> ProbePoint | None:
        for p in self.points:
            if p.batch_size == batch_size:
                return p
        return None

    @property
    def label(self) -> str:
        return f"{self.norm}/{self.precision}"


@dataclass(frozen=True)
class ProbeSettings:
    """The options a probe ran with; a search reuses a stored probe only when these match."""

    norms: tuple[str, ...]
    precisions: tuple[str, ...]
    device: str
    memory_budget_bytes: int | None
    headroom: float
    knee: float
    granularity: int
    batch_size_min: int
    batch_size_max: int | None
    limit_bytes: int | None  # what "fits" and the headroom refer to: the budget, else device memory
    limit_source: str
    peak_flops: float | None
    warmup_steps: int
    time_cap_s: float
    target_rel_iqr: float


@dataclass(frozen=True)
class ProbeResult:
    """A whole probe: one curve per normalization and precision."""

    task: str
    name: str
    settings: ProbeSettings
    curves: tuple[ProbeCurve, ...]
    environment: dict[str, Any]
    wall_time_s: float
    flops_note: str
    created: float = 0.0  # Unix time the measurements finished
    train_size: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """probe.json: the documented shape (docs/probe.md)."""
        curves = []
        for c in self.curves:
            d = asdict(c)
            d["measured_sizes"] = c.measured_sizes
            d["points"] = [dict(asdict(p), step_time_rel_iqr=p.step_time_rel_iqr) for p in c.points]
            curves.append(d)
        return _clean(
            {
                "schema": SCHEMA,
                "task": self.task,
                "name": self.name,
                "created": self.created,
                "wall_time_s": self.wall_time_s,
                "train_size": self.train_size,
                "settings": asdict(self.settings),
                "curves": curves,
                "flops_note": self.flops_note,
                "notes": list(self.notes),
                "environment": self.environment,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        settings = data["settings"]
        curves = []
        for c in data["curves"]:
            points = tuple(_build(ProbePoint, p) for p in c["points"])
            model = _build(MemoryModel, c["memory_model"]) if c.get("memory_model") else None
            curves.append(_build(ProbeCurve, dict(c, points=points, memory_model=model)))
        return cls(
            task=data["task"],
            name=data["name"],
            settings=_build(
                ProbeSettings,
                dict(settings, norms=tuple(settings["norms"]), precisions=tuple(settings["precisions"])),
            ),
            curves=tuple(curves),
            environment=dict(data.get("environment") or {}),
            wall_time_s=float(data.get("wall_time_s") or 0.0),
            flops_note=data.get("flops_note", ""),
            created=float(data.get("created") or 0.0),
            train_size=data.get("train_size"),
            notes=tuple(data.get("notes") or ()),
        )

    def curve(self, norm: str, precision: str) -> ProbeCurve | None:
        for c in self.curves:
            if c.norm == norm and c.precision == precision:
                return c
        return None


def _build(cls: Any, data: dict[str, Any]) -> Any:
    """``cls`` from a dict; unknown keys are ignored, and absent ones are None unless they have a default
    (the copy stored in a study drops nulls)."""
    values = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = data[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            values[f.name] = None
    return cls(**values)


def _clean(value: Any) -> Any:
    """JSON-safe: tuples become lists, NaN and infinities become null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------- what the points say


def largest_fit(points: Sequence[ProbePoint]) -> int | None:
    """The largest measured size that fits and has no failing measured size below it."""
    fitting = sorted(p.batch_size for p in points if p.fits)
    failing = [p.batch_size for p in points if not p.fits]
    lowest_fail = min(failing) if failing else math.inf
    below = [b for b in fitting if b < lowest_fail]
    return below[-1] if below else None


def recommended_max(
    points: Sequence[ProbePoint], limit_bytes: int | None, headroom: float, largest: int | None
) -> int | None:
    """The largest measured size up to ``largest`` whose peak stays under (1 - headroom) x limit."""
    if largest is None:
        return None
    ok = [p for p in points if p.fits and p.batch_size <= largest and p.peak_memory_bytes is not None]
    if limit_bytes is None:
        return largest
    cap = (1.0 - headroom) * limit_bytes
    under = [p.batch_size for p in ok if p.peak_memory_bytes <= cap]  # type: ignore[operator]
    return max(under) if under else None


def knee(points: Sequence[ProbePoint], tolerance: float, largest: int | None) -> int | None:
    """The smallest measured size whose throughput is within ``tolerance`` of the best measured one.

    Past it a bigger batch buys no speed, only memory. Only sizes up to ``largest`` count, so a size
    measured above a failure (never the case for the probe's own search) cannot be the knee.
    """
    ok = sorted(
        (p for p in points if p.fits and p.throughput and (largest is None or p.batch_size <= largest)),
        key=lambda p: p.batch_size,
    )
    if not ok:
        return None
    best = max(p.throughput for p in ok)  # type: ignore[type-var]
    for p in ok:
        if p.throughput >= (1.0 - tolerance) * best:  # type: ignore[operator]
            return p.batch_size
    return None


def fit_memory_model(points: Sequence[ProbePoint], limit_bytes: int | None) -> MemoryModel | None:
    """Least-squares line through the peaks of the sizes that ran; None with fewer than two sizes."""
    import numpy as np

    ran = [p for p in points if p.status in ("ok", "over-budget") and p.peak_memory_bytes]
    sizes = sorted({p.batch_size for p in ran})
    if len(sizes) < 2:
        return None
    x = np.array([p.batch_size for p in ran], dtype=float)
    y = np.array([p.peak_memory_bytes for p in ran], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (intercept + slope * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else None
    predicted = None
    if limit_bytes is not None and slope > 0:
        # The small epsilon keeps an exact fit from flooring one below its true value.
        predicted = max(0, math.floor((limit_bytes - intercept) / slope + 1e-9))
    return MemoryModel(
        fixed_bytes=float(intercept),
        per_sample_bytes=float(slope),
        r2=r2,
        n_points=len(ran),
        limit_bytes=limit_bytes,
        predicted_max=predicted,
    )
