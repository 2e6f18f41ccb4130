"""No winner's curse: the few best configurations re-trained on fresh seeds before one is recommended.

The best of many trials, each one seed, over-states what its configuration gives: it was picked
*because* its seed was lucky. So the search re-trains a handful of candidates, each on seeds no
trial used, and states their mean (Cawley and Talbot 2010 call the bias "selection"; the
over-statement measured on the digits CNN was 1.4 to 21 points). The candidates are the best trial,
the fastest cells among the trials close to the best (so a faster configuration that is as good gets
its chance to be re-trained too; the climb, :mod:`batchtune.study.climb`, ran them), the best trials
of other cells, then the runners-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from batchtune.study.cells import TIE

# Candidates and fresh seeds per candidate. 4 x 2 re-trains are 8 trial-equivalents: the budget
# reserves them before the trials start (fewer candidates when that is over 40% of it).
CANDIDATES = 4
SEEDS = 2
# The fresh seeds start here above --seed, away from every trial's seed (trials use --seed).
SEED_OFFSET = 1000


@dataclass(frozen=True)
class Candidate:
    """One configuration chosen for re-training, with its fresh seeds' metrics once they ran."""

    trial: int
    batch_size: int
    lr: float
    norm: str
    precision: str
    trial_metric: float  # the single seed the trial ran (selected, so biased up)
    why: str  # best, runner-up, fastest close to the best
    metrics: tuple[float | None, ...] = ()
    seeds: tuple[int, ...] = ()
    failures: tuple[str, ...] = ()
    samples: int = 0

    @property
    def retrained(self) -> bool:
        """Whether it trained on fresh seeds (samples counted, or a seed that failed), not only its trial's own
        (``--rerun-seeds 0``, or a search stopped before its re-runs)."""
        return bool(self.samples) or any(m is None for m in self.metrics)

    @property
    def finished(self) -> list[float]:
        return [m for m in self.metrics if m is not None and math.isfinite(m)]

    @property
    def mean(self) -> float | None:
        done = self.finished
        return sum(done) / len(done) if done else None

    @property
    def spread(self) -> float | None:
        """Half the range of the fresh seeds' metrics (with two seeds: the distance of each from the mean)."""
        done = self.finished
        return (max(done) - min(done)) / 2 if len(done) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "params": {"batch_size": self.batch_size, "lr": self.lr, "norm": self.norm,
                                                "precision": self.precision},
                "trial_metric": self.trial_metric, "why": self.why, "seeds": list(self.seeds),
                "metrics": list(self.metrics), "failures": list(self.failures), "mean": self.mean,
                "spread": self.spread, "samples": self.samples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        p = data["params"]
        return cls(trial=int(data["trial"]), batch_size=int(p["batch_size"]), lr=float(p["lr"]), norm=str(p["norm"]),
                   precision=str(p.get("precision", "fp32")), trial_metric=float(data["trial_metric"]),
                   why=str(data["why"]), metrics=tuple(data.get("metrics") or ()), seeds=tuple(data.get("seeds") or ()),
                   failures=tuple(data.get("failures") or ()), samples=int(data.get("samples") or 0))


def choose(trials: pd.DataFrame, *, mode: str, close: float, speed: dict[tuple[int, str, str], float],
           count: int = CANDIDATES) -> list[Candidate]:
    """The candidates from the finished full-budget trials (not pruned).

    ``close`` is how far from the best single-seed metric a trial may be to be the "fastest close to
    the best" candidate (in metric units); ``speed`` maps (batch, norm, precision) to the cell's
    calibrated throughput.
    """
    done = trials[(trials["status"] == "ok") & trials["feasible"].astype(bool)].dropna(subset=["metric"])
    done = done[[math.isfinite(float(m)) for m in done["metric"]]]
    if done.empty:
        return []
    picked: list[Candidate] = []

    def config(row: Any) -> tuple[int, str, str, float]:
        return (int(row["batch_size"]), str(row["norm"]), str(row["precision"] or "fp32"), round(float(row["lr"]), 12))

    # Best metric first; equal metrics go faster cell first (with one candidate, the faster of two equal
    # trials is the one re-trained), then by trial number.
    cell_speed = [speed.get(config(row)[:3], 0.0) for _, row in done.iterrows()]
    done = (done.assign(_speed=cell_speed)
            .sort_values(["metric", "_speed", "trial"], ascending=[mode == "min", False, True], kind="mergesort"))

    def add(row: Any, why: str) -> None:
        if len(picked) >= count or any(config(row) == (c.batch_size, c.norm, c.precision, round(c.lr, 12)) for c in picked):
            return
        picked.append(Candidate(trial=int(row["trial"]), batch_size=int(row["batch_size"]), lr=float(row["lr"]),
                                norm=str(row["norm"]), precision=str(row["precision"] or "fp32"),
                                trial_metric=float(row["metric"]), why=why))

    best = done.iloc[0]
    add(best, "best trial")
    gap = (float(best["metric"]) - done["metric"].astype(float)) if mode == "max" else (done["metric"].astype(float) - float(best["metric"]))
    near = done[gap <= close + 1e-12]
    if speed:
        # The faster cells close to the best, fastest first, each by its best trial: the recommendation
        # wants the fastest configuration that is as good, so these are re-trained before other cells.
        floor = speed.get(config(best)[:3], 0.0) * (1 + TIE)
        per_cell: dict[tuple[int, str, str], Any] = {}
        for _, row in near.iterrows():  # sorted best first: the first row of a cell is its best
            per_cell.setdefault(config(row)[:3], row)
        faster = sorted((k for k in per_cell if speed.get(k, 0.0) > floor), key=lambda k: -speed.get(k, 0.0))
        for k in faster[:max(1, count - 2)]:
            add(per_cell[k], "faster cell close to the best")
    # Runners-up from cells not picked yet first: another LR in the same cell re-tests little that is new.
    cells = {(c.batch_size, c.norm, c.precision) for c in picked}
    for _, row in done.iloc[1:].iterrows():
        if config(row)[:3] not in cells:
            add(row, "best of another cell")
            cells.add(config(row)[:3])
    for _, row in done.iloc[1:].iterrows():
        add(row, "runner-up")
    return picked


def retrained(candidates: list[dict[str, Any]]) -> bool:
    """Whether stored candidates were re-trained on fresh seeds (with --rerun-seeds 0 each keeps its trial's seed:
    no samples trained, no failed seed)."""
    return any(c.get("samples") or any(m is None for m in c.get("metrics") or []) for c in candidates)


def rerun_seeds(seed: int, count: int = SEEDS) -> tuple[int, ...]:
    return tuple(seed + SEED_OFFSET + i for i in range(count))
