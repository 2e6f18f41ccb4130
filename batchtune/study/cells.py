"""Speed and memory are properties of a cell (batch size, normalization, precision), not of a trial.

Trials run one after another on a machine whose speed moves by a factor of several within minutes,
so two trials' throughputs compare the machine at two moments. Here every cell is measured in
interleaved rounds (each round visits every cell in a fresh random order), each visit a fresh model
in the worker process timing a few training steps after warm-up, with batchtune's reference
workload run before each step (the calibration of ``batchtune bench``, :mod:`batchtune.gate.measure`):
drift slows the reference alike and cancels in the ratio step / reference. On a CPU the steps run
on one thread and are timed by process CPU time, as ``batchtune bench`` does by default: a busy
neighbour then slows neither clock (with several threads, OpenMP's spinning under load slowed
steps 20x and more on the 2-core machine this was built on), and the cells rank by the work a step
costs. On an accelerator, synchronised wall time. A cell's speed is the
median over its steps of that ratio, turned back into samples/s at the median reference time; two
cells' speed ratio gets a bootstrap interval over rounds (whole rounds resampled: steps of one
visit share the machine's state). Peak memory is the largest of a cell's visits; a cell that runs
out of memory, or whose peak leaves less than the headroom of the budget, is not searched.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ROUNDS = 3
STEPS = 6  # timed steps per visit
WARMUP = 2
CONFIDENCE = 0.95
BOOTSTRAP = 2000
# Speeds whose interval of the ratio straddles 1 +- this are "can't tell" apart: a ranking inside it
# is timing noise (2%, the tie of the Pareto rule before; the interval decides first).
TIE = 0.02


def key(batch_size: int, norm: str, precision: str = "fp32") -> str:
    return f"{batch_size}/{norm}/{precision}"


@dataclass(frozen=True)
class Cell:
    """One cell's speed and memory, over its interleaved visits."""

    batch_size: int
    norm: str
    precision: str
    ratios: tuple[tuple[float, ...], ...] = ()  # per round: step time / reference time, per step
    reference: float | None = None  # median reference seconds over every cell's visits (one for the table)
    step_time: float | None = None  # median raw seconds per step
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    error: str | None = None  # out of memory, or an error in the task's code
    over_limit: str | None = None  # why a cell that ran is not searched (headroom)

    @property
    def key(self) -> str:
        return key(self.batch_size, self.norm, self.precision)

    @property
    def fits(self) -> bool:
        return self.error is None and self.over_limit is None

    @property
    def calibrated_step(self) -> float | None:
        """Median step / reference over every timed step."""
        flat = [r for rnd in self.ratios for r in rnd]
        return float(np.median(flat)) if flat else None

    @property
    def throughput(self) -> float | None:
        """Samples/s at the median reference time: comparable between cells, drift cancelled."""
        ratio = self.calibrated_step
        if ratio is None or not self.reference:
            return None
        return self.batch_size / (ratio * self.reference)

    def round_throughputs(self) -> list[float]:
        """The cell's samples/s in each round (median step of the round), at the table's reference time."""
        if not self.reference:
            return []
        return [self.batch_size / (float(np.median(r)) * self.reference) for r in self.ratios if r]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size, "norm": self.norm, "precision": self.precision,
            "throughput": self.throughput, "calibrated_step": self.calibrated_step, "reference": self.reference,
            "step_time": self.step_time, "peak_memory_bytes": self.peak_memory_bytes, "memory_kind": self.memory_kind,
            "error": self.error, "over_limit": self.over_limit, "fits": self.fits,
            "ratios": [[float(f"{r:.5g}") for r in rnd] for rnd in self.ratios],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(
            batch_size=int(data["batch_size"]), norm=str(data["norm"]), precision=str(data["precision"]),
            ratios=tuple(tuple(float(r) for r in rnd) for rnd in data.get("ratios") or ()),
            reference=data.get("reference"), step_time=data.get("step_time"),
            peak_memory_bytes=data.get("peak_memory_bytes"), memory_kind=data.get("memory_kind"),
            error=data.get("error"), over_limit=data.get("over_limit"),
        )


@dataclass(frozen=True)
class SpeedComparison:
    """How much faster cell ``a`` is than cell ``b`` (samples/s ratio), with a bootstrap interval."""

    ratio: float
    low: float
    high: float

    @property
    def faster(self) -> bool:
        """``a`` is faster beyond noise: the whole interval is above 1 + :data:`TIE`."""
        return self.low > 1 + TIE

    @property
    def tells(self) -> bool:
        """The interval decides either way (not straddling the tie band)."""
        return self.low > 1 + TIE or self.high < 1 - TIE


def compare(a: Cell, b: Cell, *, seed: int = 0) -> SpeedComparison | None:
    """Throughput of ``a`` over ``b``; rounds are resampled together (paired), since round r of both ran side by side."""
    if not a.ratios or not b.ratios:
        return None
    rounds = min(len(a.ratios), len(b.ratios))
    ra = [np.asarray(x) for x in a.ratios[:rounds]]
    rb = [np.asarray(x) for x in b.ratios[:rounds]]

    def stat(idx: Sequence[int]) -> float:
        ma = float(np.median(np.concatenate([ra[i] for i in idx])))
        mb = float(np.median(np.concatenate([rb[i] for i in idx])))
        return (a.batch_size / ma) / (b.batch_size / mb)

    point = stat(range(rounds))
    rng = np.random.default_rng(seed)
    draws = [stat(rng.integers(0, rounds, rounds).tolist()) for _ in range(BOOTSTRAP)]
    alpha = (1 - CONFIDENCE) / 2
    return SpeedComparison(point, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha)))


@dataclass
class CellTable:
    """Every searched cell's speed and memory, as stored in the study (user attribute ``cells``)."""

    cells: dict[str, Cell] = field(default_factory=dict)
    rounds: int = 0
    samples: int = 0  # training samples the measurement spent
    limit_bytes: int | None = None
    headroom: float = 0.0
    clock: str = "wall"  # "cpu" (process time, one thread) on a CPU device; "wall" on an accelerator

    def get(self, batch_size: int, norm: str, precision: str = "fp32") -> Cell | None:
        return self.cells.get(key(batch_size, norm, precision))

    def fitting(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.fits]

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "samples": self.samples, "limit_bytes": self.limit_bytes,
                "headroom": self.headroom, "clock": self.clock, "cells": [c.to_dict() for c in self.cells.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellTable:
        cells = [Cell.from_dict(c) for c in data.get("cells") or []]
        return cls(cells={c.key: c for c in cells}, rounds=int(data.get("rounds") or 0),
                   samples=int(data.get("samples") or 0), limit_bytes=data.get("limit_bytes"),
                   headroom=float(data.get("headroom") or 0.0), clock=str(data.get("clock") or "wall"))


def measure_cells(
    call: Callable[[dict[str, Any]], dict[str, Any]],
    cells: Sequence[tuple[int, str, str]],
    *,
    device: str,
    threads: int,
    seed: int,
    limit_bytes: int | None,
    headroom: float,
    rounds: int = ROUNDS,
    steps: int = STEPS,
    warmup: int = WARMUP,
    on_visit: Callable[[int, int], None] | None = None,
) -> CellTable:
    """Measure ``cells`` ((batch, norm, precision)) in interleaved rounds through ``call``.

    ``call(plan)`` runs :func:`batchtune.gate.measure.measure_repeat` in a worker process (the
    search passes its runner's ``call_task``) and returns its dict, or ``{"error": reason}``.
    A cell that fails once is not visited again. On a CPU device the steps run on one thread,
    timed by CPU time (see the module's docstring); ``threads`` applies to accelerators' hosts.
    """
    clock = "cpu" if device.startswith("cpu") else "wall"
    if clock == "cpu":
        threads = 1
    per_round: dict[tuple[int, str, str], list[tuple[float, ...]]] = {c: [] for c in cells}
    references: dict[tuple[int, str, str], list[float]] = {c: [] for c in cells}
    raw: dict[tuple[int, str, str], list[float]] = {c: [] for c in cells}
    peaks: dict[tuple[int, str, str], int] = {}
    kinds: dict[tuple[int, str, str], str] = {}
    errors: dict[tuple[int, str, str], str] = {}
    samples = 0
    order = list(cells)
    rng = random.Random(seed)
    visits, total = 0, rounds * len(order)
    for _ in range(rounds):
        rng.shuffle(order)
        for cell in order:
            visits += 1
            if on_visit is not None:
                on_visit(visits, total)
            if cell in errors:
                continue
            b, norm, precision = cell
            out = call({"batch_size": b, "lr": 1e-3, "norm": norm, "precision": precision, "device": device,
                        "threads": threads, "seed": seed, "warmup": warmup, "steps": steps, "calibrate": True})
            if "error" in out:
                errors[cell] = str(out["error"])
                continue
            samples += (warmup + steps) * b
            wall = out[clock]
            ref = (out.get("calibration") or {}).get(clock) or []
            if ref and len(ref) == len(wall):
                per_round[cell].append(tuple(w / max(r, 1e-9) for w, r in zip(wall, ref)))
                references[cell] += list(ref)
            raw[cell] += list(wall)
            peaks[cell] = max(peaks.get(cell, 0), int(out.get("peak_memory_bytes") or 0))
            kinds[cell] = str(out.get("memory_kind"))
    table = CellTable(rounds=rounds, samples=samples, limit_bytes=limit_bytes, headroom=headroom, clock=clock)
    # One reference time for every cell: a cell's own would bring back the drift of its moments.
    every = [r for refs in references.values() for r in refs]
    reference = float(np.median(every)) if every else None
    for cell in cells:
        b, norm, precision = cell
        peak = peaks.get(cell)
        over = None
        if limit_bytes and peak is not None and peak > (1 - headroom) * limit_bytes:
            over = (f"peak {peak / 2**20:,.0f} MiB is above {1 - headroom:.0%} of the {limit_bytes / 2**20:,.0f} MiB "
                    "limit (the headroom)")
        table.cells[key(*cell)] = Cell(
            batch_size=b, norm=norm, precision=precision, ratios=tuple(per_round[cell]),
            reference=reference if references[cell] else None,
            step_time=float(np.median(raw[cell])) if raw[cell] else None,
            peak_memory_bytes=peak, memory_kind=kinds.get(cell), error=errors.get(cell), over_limit=over,
        )
    return table


def describe(cmp: SpeedComparison | None) -> str:
    """``1.84x (1.71-1.97)`` or a plain "can't tell" when the interval straddles the tie band."""
    if cmp is None or not math.isfinite(cmp.ratio):
        return "not measured"
    text = f"{cmp.ratio:.2f}x ({cmp.low:.2f}-{cmp.high:.2f}, {CONFIDENCE:.0%} interval)"
    return text if cmp.tells else f"can't tell ({text})"
