"""Faster and as good: the trials the search adds after its sampler's, climbing from the best to faster cells.

The sampler spends its trials where the metric is best; the recommendation wants the fastest
configuration that is as good, which is rarely the sampler's best trial. A near-tie at a larger
batch size is only found if some trial ran that cell at a good LR, and with a few dozen trials
over twenty cells, most cells get one trial at a random LR, or none. So after the sampled trials
the search climbs: from the fastest trial that is close to the best, it tries the next faster cell
(the next larger batch size of the same normalization, then the other normalizations and
precisions at the same batch size that the cell measurement found faster beyond timing noise, of
the normalizations with a trial close to the best). Another normalization is tried at the same
position in its cell's measured LR window (the range tests measured how its LR differs). A larger
batch size is tried at the anchor's own LR first and, when that loses, at the same position in the
larger cell's window, which carries the LR over by the scaling the range tests' loss minima showed:
against the exhaustive grids (``benchmarks/climb_lr.py``, 6 range-test seeds x 4 tasks, 270 steps
from a cell's best LR to the next batch size) the own LR landed within 1 point of the larger cell's
best in 77% of the steps, the carried one in 71% (33% on the tiny transformer, whose range tests'
minima move the other way from its best LRs), the better of the two in 79%. A neighbour close to the
best is a new step to climb from; one that is not at either LR, or that the pruner stops, ends that
direction. The climb stops when its share of the budget is
spent or no faster neighbour is left untried; the candidates re-trained on fresh seeds then
include the fastest trials close to the best (:mod:`batchtune.study.candidates`).

This is coordinate search toward speed (a line search along the batch size, as in "Don't Decay the
Learning Rate, Increase the Batch Size", Smith et al. 2018, which moves to larger batches at a
scaled LR while the metric holds), constrained by the metric instead of guided by a model of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from batchtune.study.cells import CellTable, compare

# The share of the budget the climb may spend: at 30 trial-equivalents, 4 full trials (fewer when
# the pruner stops a neighbour early, which is how a direction that loses ends).
SHARE = 0.15
# Two trials of one cell whose LR parameters differ by less than this are the same configuration
# (in the window position 0..1, or in log10 of the LR).
SAME_LR = 0.02
ORIGIN = "climb"


@dataclass(frozen=True)
class Step:
    """One configuration to try: the parameters for the study, and why it is tried."""

    params: dict[str, Any]
    anchor: int  # the trial it climbs from
    why: str


def _lr_value(row: Any, lr_param: str) -> float | None:
    value = row.get(lr_param) if hasattr(row, "get") else getattr(row, lr_param, None)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _same_lr(a: float, b: float, lr_param: str) -> bool:
    if lr_param == "lr_position":
        return abs(a - b) < SAME_LR
    return a > 0 and b > 0 and abs(math.log10(a) - math.log10(b)) < SAME_LR


def _position_of(lr: float, window: tuple[float, float]) -> float:
    """Where ``lr`` lies in ``window`` (0 to 1, log-uniformly; clipped to the window), to 4 decimals."""
    low, high = window
    if high <= low:
        return 0.5
    return round(min(1.0, max(0.0, math.log(lr / low) / math.log(high / low))), 4)


def next_step(
    trials: pd.DataFrame, cells: CellTable | None, *, sizes: tuple[int, ...], norms: tuple[str, ...],
    precisions: tuple[str, ...], lr_param: str, mode: str, close: float, unfit: frozenset[str] = frozenset(),
    bounds: Any = None,
) -> Step | None:
    """The next faster neighbour to try, or None when every direction from the trials close to the best is tried.

    ``trials`` is :func:`batchtune.study.results.trials_frame` (every counted trial, pruned and
    failed ones too: a configuration that ran is not run again); ``close`` is how far below the best
    single-seed metric a trial may be and still be climbed from (in metric units: the search passes the
    tolerance). With ``bounds`` (:class:`batchtune.study.lr_range.LrBounds`, under ``lr_position``), a
    larger batch size is tried at the anchor's own LR first, then at its window position.
    """
    if trials.empty:
        return None
    done = trials[(trials["status"] == "ok") & trials["feasible"].astype(bool)].dropna(subset=["metric"])
    done = done[[math.isfinite(float(m)) for m in done["metric"]]]
    if done.empty:
        return None
    sign = 1.0 if mode == "max" else -1.0
    best = max(float(m) * sign for m in done["metric"])
    frontier = done[[best - sign * float(m) <= close + 1e-12 for m in done["metric"]]]

    def cell_key(row: Any) -> tuple[int, str, str]:
        return int(row["batch_size"]), str(row["norm"]), str(row["precision"] or "fp32")

    def speed(k: tuple[int, str, str]) -> float:
        c = cells.get(*k) if cells is not None else None
        if c is not None and c.throughput:
            return float(c.throughput)
        return float(k[0])  # no measurement: larger batches are assumed faster

    tried: dict[tuple[int, str, str], list[float]] = {}
    for _, row in trials.iterrows():
        value = _lr_value(row, lr_param)
        if value is not None:
            tried.setdefault(cell_key(row), []).append(value)

    def faster(new: tuple[int, str, str], old: tuple[int, str, str]) -> bool:
        if f"{new[0]}/{new[1]}/{new[2]}" in unfit:
            return False
        if cells is None:
            return new[0] > old[0]
        a, b = cells.get(*new), cells.get(*old)
        if a is None or b is None or not a.fits:
            return False
        cmp = compare(a, b)
        return cmp is not None and cmp.faster

    # The best metric each norm reached so far orders the other norms: the likeliest to hold first. A
    # norm none of whose trials came close to the best has shown nothing to climb to, and is not tried.
    norm_best = {n: max(float(m) * sign for m in g["metric"]) for n, g in done.groupby("norm")}
    close_norms = set(frontier["norm"].astype(str))
    ordered = sorted(frontier.iterrows(), key=lambda ir: (-speed(cell_key(ir[1])), -sign * float(ir[1]["metric"])))
    held = {cell_key(row) for _, row in ordered}  # cells with a trial close to the best
    for _, anchor in ordered:
        value = _lr_value(anchor, lr_param)
        if value is None:
            continue
        b, n, p = cell_key(anchor)
        larger = sorted(s for s in sizes if s > b)
        options = [((larger[0], n, p), f"the next batch size of {n} norm")] if larger else []
        others = sorted((o for o in norms if o != n and o in close_norms), key=lambda o: -norm_best.get(o, -math.inf))
        options += [((b, o, p), f"{o} norm at the same batch size") for o in others]
        options += [((b, n, q), f"{q} at the same batch size and norm") for q in precisions if q != p]
        for k, what in options:
            if not faster(k, (b, n, p)):
                continue
            lrs = [(value, "the same LR position")]
            own = _lr_value(anchor, "lr")
            if k[0] != b and bounds is not None and lr_param == "lr_position" and own is not None and own > 0:
                at_own = _position_of(own, bounds.window(k[0], k[1]))
                if not _same_lr(at_own, value, lr_param):
                    # The anchor's own LR first; the carried position only once that lost (no trial of the
                    # larger cell came close to the best).
                    lrs.insert(0, (at_own, f"its own LR {own:.3g}"))
                    if k in held:
                        lrs = lrs[:1]
            for lr_value, how in lrs:
                if any(_same_lr(lr_value, v, lr_param) for v in tried.get(k, [])):
                    continue
                params: dict[str, Any] = {"batch_size": k[0], lr_param: lr_value, "norm": k[1]}
                if len(precisions) > 1:
                    params["precision"] = k[2]
                return Step(params=params, anchor=int(anchor["trial"]),
                            why=f"faster than trial {int(anchor['trial'])}: {what}, at {how}")
    return None


def spent(study_trials: list[Any]) -> int:
    """Samples the climb's trials trained on so far (they carry the user attribute ``origin``)."""
    total = 0
    for t in study_trials:
        if t.user_attrs.get("origin") == ORIGIN:
            total += int((t.user_attrs.get("result") or {}).get("samples") or 0)
    return total
