"""The phases of the default search that measure before and after the trials.

Before: each cell's speed and memory (:mod:`batchtune.study.cells`) and each cell's LR window
(:mod:`batchtune.study.lr_range`). After: the candidates re-trained on fresh seeds
(:mod:`batchtune.study.candidates`). Each phase runs the user's code in one worker process, stores
its result in the study (so a resume reuses it) and adds what it trained on to the budget.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from batchtune.study import recommend
from batchtune.study.budget import Budget, Spend
from batchtune.study.candidates import Candidate, choose, rerun_seeds
from batchtune.study.cells import CellTable, measure_cells
from batchtune.study.config import SearchConfig, Tolerance
from batchtune.study.lr_range import STEPS as LR_STEPS
from batchtune.study.lr_range import WINDOW_BELOW, LrBounds, RangeTest, fit_bounds, sizes_to_test

log = logging.getLogger(__name__)

Phase = Callable[[str], None]

# The share of the budget each measuring phase may take before it measures less.
SPEED_SHARE = 0.08
LR_SHARE = 0.15
RERUN_SHARE = 0.4
# Fewer ramp steps than this cannot show where the loss turns (10 steps per decade over 6 decades at 50).
MIN_LR_STEPS = 15


def measure_speed(study: Any, runner: Any, cfg: SearchConfig, *, sizes: tuple[int, ...], norms: tuple[str, ...],
                  device: str, threads: int, budget: Budget, limit_bytes: int | None, warnings: list[str],
                  on_phase: Phase | None = None) -> CellTable | None:
    """Every cell's speed and memory, interleaved and calibrated; stored in (and reused from) the study.

    None (with a warning) when even the shortest measurement would take over its share of the budget.
    """
    cells = [(b, n, p) for b in sizes for n in norms for p in cfg.precisions]
    key = {"cells": [list(c) for c in cells], "device": device, "threads": 1 if device.startswith("cpu") else threads,
           "limit": limit_bytes,
           "headroom": cfg.headroom}
    stored = study.user_attrs.get("cells")
    if stored and stored.get("key") == key:
        return CellTable.from_dict(stored)
    per_visit = sum(b for b, _, _ in cells)
    rounds, steps, warmup = 3, 6, 2
    while rounds * (warmup + steps) * per_visit > SPEED_SHARE * budget.samples and (steps > 3 or rounds > 2):
        if steps > 3:
            steps -= 1
        else:
            rounds -= 1
    if rounds * (warmup + steps) * per_visit > SPEED_SHARE * budget.samples:
        warnings.append(
            f"the budget is too small to measure speed per cell ({len(cells)} cells would take more than "
            f"{SPEED_SHARE:.0%} of it): the trials' own throughput stands in, measured one trial at a time; raise --budget"
        )
        return None
    if on_phase:
        on_phase(f"speed and memory: {len(cells)} cells x {rounds} interleaved rounds of {steps} timed steps")
    done = [0]

    def call(plan: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = runner.call_task("batchtune.gate.measure:measure_repeat", {"plan": plan},
                                               timeout=cfg.trial_timeout)
        if "error" not in out:
            done[0] += (plan["warmup"] + plan["steps"]) * plan["batch_size"]
        return out

    with interrupted_spend(study, "speed", done):
        table = measure_cells(call, cells, device=device, threads=threads, seed=cfg.seed, limit_bytes=limit_bytes,
                              headroom=cfg.headroom, rounds=rounds, steps=steps, warmup=warmup)
    study.set_user_attr("cells", {**table.to_dict(), "key": key})
    return table


def measure_lr_windows(study: Any, runner: Any, cfg: SearchConfig, *, sizes: tuple[int, ...], norms: tuple[str, ...],
                       device: str, threads: int, family: str, budget: Budget, warnings: list[str],
                       on_phase: Phase | None = None) -> tuple[LrBounds, int]:
    """The LR window of every cell from range tests at a few sizes per norm; (bounds, samples spent)."""
    tested = sizes_to_test(sizes)
    key = {"sizes": list(sizes), "tested": list(tested), "norms": list(norms), "device": device, "family": family,
           "precision": cfg.precisions[0]}
    stored = study.user_attrs.get("lr_range")
    if stored and stored.get("key") == key:
        return LrBounds.from_dict(stored["bounds"]), int(stored.get("samples") or 0)
    per_step = sum(tested) * len(norms)
    # No longer than its share of the budget, nor than a trial at the largest tested size.
    steps = min(LR_STEPS, int(LR_SHARE * budget.samples / max(1, per_step)), budget.trial_samples // max(tested))
    if steps < MIN_LR_STEPS:
        warnings.append(
            f"the budget is too small for LR range tests ({MIN_LR_STEPS} steps at batch {','.join(map(str, tested))} "
            f"would take more than {LR_SHARE:.0%} of it, or be longer than a trial): the trials sample the LR in the "
            "default window; raise --budget or --epochs, or pass --lr-min/--lr-max"
        )
        return fit_bounds([], sizes, norms, family), 0  # not stored: a resume with a larger budget measures
    if on_phase:
        on_phase(f"LR range tests: {len(norms)} norm(s) x batch {','.join(map(str, tested))}, {steps} steps each")
    tests: list[RangeTest] = []
    done = [0]
    with interrupted_spend(study, "lr_range", done):
        for norm in norms:
            for b in tested:
                out = runner.call_task(
                    "batchtune.study.lr_range:range_test",
                    {"batch_size": b, "norm": norm, "precision": cfg.precisions[0], "device": device, "seed": cfg.seed,
                     "family": family, "steps": steps, "threads": threads},
                    timeout=cfg.trial_timeout,
                )
                if "lrs" not in out:  # the worker failed: no signal from this cell
                    out = {"batch_size": b, "norm": norm, "lrs": (), "losses": (), "samples": 0,
                           "error": out.get("error")}
                tests.append(RangeTest(batch_size=b, norm=norm, lrs=tuple(out["lrs"]), losses=tuple(out["losses"]),
                                       samples=int(out["samples"]), error=out.get("error")))
                done[0] += tests[-1].samples
    bounds = fit_bounds(tests, sizes, norms, family)
    samples = sum(t.samples for t in tests)
    study.set_user_attr("lr_range", {"key": key, "bounds": bounds.to_dict(), "samples": samples, "steps": steps,
                                     "tests": [t.to_dict() for t in tests]})
    return bounds, samples


INTERRUPTED_KEY = "interrupted_spend"


@contextlib.contextmanager
def interrupted_spend(study: Any, phase: str, done: list[int]) -> Iterator[None]:
    """On Ctrl-C inside a measuring phase, add what it had trained (``done[0]`` samples, the finished
    measurements) to the study's record of interrupted compute before the interrupt goes on: the phase is
    measured again on resume, and the compute totals count both (:func:`add_interrupted`)."""
    try:
        yield
    except KeyboardInterrupt:
        if done[0]:
            record = dict(study.user_attrs.get(INTERRUPTED_KEY) or {})
            record[phase] = int(record.get(phase, 0)) + int(done[0])
            study.set_user_attr(INTERRUPTED_KEY, record)
        raise


def add_interrupted(study: Any, spend: Spend) -> None:
    """Count the compute of measuring phases that a Ctrl-C cut short (stored by :func:`interrupted_spend`)."""
    for phase, samples in (study.user_attrs.get(INTERRUPTED_KEY) or {}).items():
        spend.add(phase, int(samples))


def reserve_reruns(cfg: SearchConfig, budget: Budget) -> tuple[int, int]:
    """(candidates, seeds) the budget keeps for re-runs: fewer candidates when they would take over 40% of it."""
    candidates, seeds = cfg.candidates, cfg.rerun_seeds
    while candidates > 1 and candidates * seeds * budget.trial_samples > RERUN_SHARE * budget.samples:
        candidates -= 1
    return candidates, seeds


# Racing: when the fresh seeds leave the pick open (a faster candidate inside the tolerance by its mean, not
# by more than the gap's standard error), one more seed each for it and the best mean, kept in reserve when
# the re-runs' share of the budget holds it. Replayed on the re-checked seeds (benchmarks/decision_rule.py),
# this made the pick both within 1 point of the best and >= 0.9 of the fastest near-best speed more often
# on three of four tasks (the fourth, the held-out one, unchanged).
RACE = 2


def reserve_race(budget: Budget, candidates: int, seeds: int) -> int:
    """Extra seeds kept for racing: ``RACE`` when there are two candidates with two seeds each to race and the
    re-runs' share of the budget holds them, else 0."""
    if candidates < 2 or seeds < 2:
        return 0
    return RACE if (candidates * seeds + RACE) * budget.trial_samples <= RERUN_SHARE * budget.samples else 0


def reserve_climb(budget: Budget) -> int:
    """Samples kept for the climb to faster cells: its share of the budget, when that is at least one trial."""
    from batchtune.study.climb import SHARE

    samples = int(SHARE * budget.samples)
    return samples if samples >= budget.trial_samples else 0


def trial_budget(budget: Budget, spend: Spend, reserved: int, warnings: list[str]) -> int:
    """Samples left for the trials; at least two full trials, with a warning when that overshoots the budget."""
    left = budget.samples - spend.total - reserved
    if left < 2 * budget.trial_samples:
        warnings.append(
            f"the budget of {budget.trial_equivalents:g} trial-equivalents leaves {max(0.0, budget.equivalents(left)):.1f} "
            "for the trials after measuring speed, LR windows and keeping the re-runs; 2 trials run anyway (the budget "
            "is exceeded); raise --budget"
        )
        return 2 * budget.trial_samples
    return left


def cell_speeds(cells: CellTable | None, trials: Any) -> dict[tuple[int, str, str], float]:
    """(batch, norm, precision) -> samples/s: the cells' calibrated figures, or without a cell measurement the
    median of the trials' own throughput per cell."""
    if cells is not None:
        return {(c.batch_size, c.norm, c.precision): c.throughput or 0.0 for c in cells.cells.values()}
    ok = trials[trials["status"] == "ok"].dropna(subset=["throughput"])
    return {(int(b), str(n), str(p or "fp32")): float(g["throughput"].median())
            for (b, n, p), g in ok.groupby(["batch_size", "norm", "precision"])}


def provisional_candidates(trials: Any, cells: CellTable | None, *, mode: str, tolerance: Tolerance | None,
                           seed: int) -> list[Candidate]:
    """Candidates from the trials alone, each with its trial's own seed as its one metric: what an interrupted
    search can recommend before its re-runs (as ``--rerun-seeds 0`` would)."""
    from batchtune.study.recommend import default_tolerance

    ok = trials[trials["status"] == "ok"]["metric"].dropna() if not trials.empty else trials
    if not len(ok):
        return []
    tol = tolerance or default_tolerance(ok, mode)
    best = float(ok.max() if mode == "max" else ok.min())
    chosen = choose(trials, mode=mode, close=2 * tol.limit(best), speed=cell_speeds(cells, trials))
    return [replace(c, metrics=(c.trial_metric,), seeds=(seed,)) for c in chosen]


def rerun_candidates(study: Any, runner: Any, cfg: SearchConfig, *, trials: Any, cells: CellTable | None,
                     mode: str, count: int, seeds: int, spec_for: Callable[[Candidate, int], Any],
                     close: float, on_phase: Phase | None = None, race: int = 0,
                     tolerance: Tolerance | None = None) -> list[Candidate]:
    """Choose the candidates and re-train each on ``seeds`` fresh seeds, then race (up to ``race`` more seeds, two
    at a time, on the best mean and the fastest candidate the seeds leave open); stored as ``candidates``."""
    chosen = choose(trials, mode=mode, close=close, speed=cell_speeds(cells, trials), count=count)
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    for old in study.user_attrs.get("candidates") or []:
        c = Candidate.from_dict(old)
        done[(c.batch_size, c.norm, c.precision, round(c.lr, 12))] = old
    fresh = rerun_seeds(cfg.seed, seeds)
    if on_phase and chosen and seeds:
        on_phase(f"re-training {len(chosen)} candidate(s) on {seeds} fresh seed(s) each")
    out = []
    for c in chosen:
        old = done.get((c.batch_size, c.norm, c.precision, round(c.lr, 12)))
        if old is not None and list(old.get("seeds") or [])[:len(fresh)] == list(fresh):  # a resume: raced seeds too
            out.append(replace(Candidate.from_dict(old), trial=c.trial, why=c.why, trial_metric=c.trial_metric))
            continue
        if not seeds:  # no re-runs asked for: the trial's own seed is all there is
            out.append(replace(c, metrics=(c.trial_metric,), seeds=(cfg.seed,)))
        else:
            out.append(_train_seeds(study, runner, cfg, replace(c, metrics=(), seeds=()), fresh, spec_for))
        study.set_user_attr("candidates", [c.to_dict() for c in out])  # each as it finishes: a Ctrl-C keeps them
    left = race
    while left >= 2 and tolerance is not None:
        pair = recommend.undecided(out, cells, mode=mode, tolerance=tolerance)
        if pair is None:
            break
        if on_phase:
            on_phase(f"racing: one more seed each for trials {pair[0].trial} and {pair[1].trial}, which the seeds "
                     "cannot yet tell apart within the tolerance")
        for c in pair:
            i = out.index(c)
            out[i] = _train_seeds(study, runner, cfg, c, (rerun_seeds(cfg.seed, len(c.seeds) + 1)[-1],), spec_for)
            study.set_user_attr("candidates", [c.to_dict() for c in out])
        left -= 2
    return out


def _train_seeds(study: Any, runner: Any, cfg: SearchConfig, c: Candidate, seeds: tuple[int, ...],
                 spec_for: Callable[[Candidate, int], Any]) -> Candidate:
    """``c`` with ``seeds`` trained and appended to its metrics (a failed seed as None, with its reason)."""
    metrics, failures, samples = list(c.metrics), list(c.failures), c.samples
    partial = [0]
    with interrupted_spend(study, "reruns", partial):
        for seed in seeds:
            result = runner.run(spec_for(c, seed), timeout=cfg.trial_timeout)
            samples += int(result.samples or 0)
            partial[0] += int(result.samples or 0)
            ok = result.status == "ok" and result.final_metric is not None and math.isfinite(result.final_metric)
            metrics.append(float(result.final_metric) if ok else None)
            if not ok:
                failures.append(f"seed {seed}: {result.status} ({result.reason})")
    return replace(c, metrics=tuple(metrics), seeds=(*c.seeds, *seeds), failures=tuple(failures), samples=samples)


# A wide seed spread points at instability only for an LR this close below the range test's loss minimum (the
# ramp's loss turned up just above it); further below, seeds that disagree more often learn at different
# speeds in a short budget, and a lower LR would not help.
NEAR_MINIMUM = 3.0


def _near_instability(c: Candidate, bounds: LrBounds | None) -> float | None:
    """The range test's loss-minimum LR of a candidate's cell when its LR is within ``NEAR_MINIMUM``x below it
    (a lower LR may help seeds that disagree there); 0.0 when no range test measured its cell (nothing to tell
    instability from slow learning); None when its LR is far below the minimum (a lower LR is no obvious fix)."""
    window = bounds.windows.get(f"{c.batch_size}/{c.norm}") if isinstance(bounds, LrBounds) else None
    if window is None:
        return 0.0
    minimum = window[0] * WINDOW_BELOW
    return None if c.lr * NEAR_MINIMUM < minimum else minimum


def _names(trials: list[int]) -> str:
    """"trial 3", "trials 3 and 5", "trials 1, 3 and 5"."""
    if len(trials) == 1:
        return f"trial {trials[0]}"
    return f"trials {', '.join(map(str, trials[:-1]))} and {trials[-1]}"


def _spread_warnings(candidates: list[Candidate], tolerance: Any, bounds: LrBounds | None) -> list[str]:
    """One warning for the candidates whose seeds spread wider than the tolerance, and one for those of them
    whose LR sits near where training turns unstable (one more for those no range test measured), with the
    flags that search below their LRs."""
    wide = [c for c in candidates if c.spread is not None and c.mean is not None and c.spread > tolerance.limit(c.mean)]
    if not wide:
        return []
    spreads = ", ".join(f"trial {c.trial} ±{c.spread:.2g}" for c in wide)
    if len(candidates) == 1:
        what = (f"the only candidate varies between seeds by more than the {tolerance.describe()} tolerance ({spreads}): "
                "its stated mean is uncertain by more than the tolerance; raise --rerun-seeds to pin it down")
    else:
        what = (f"{len(wide)} of {len(candidates)} candidates vary between seeds by more than the {tolerance.describe()} "
                f"tolerance ({spreads}): their ranking against each other is uncertain; raise --rerun-seeds to rank them")
    out = [what + " (or --epochs, if a short budget leaves some seeds still learning)"]
    near = [(c, m) for c in wide if (m := _near_instability(c, bounds))]
    blind = [c for c in wide if _near_instability(c, bounds) == 0.0]
    for group, why in (([c for c, _ in near], None), (blind, "no range test to tell")):
        if not group:
            continue
        one = len(group) == 1
        flags = f"--lr-min {min(c.lr for c in group) / 30:.2g} --lr-max {max(c.lr for c in group):.2g}"
        if why is None:
            minima = ", ".join(f"{m:.2g}" for _, m in near)
            whose = "its LR is within {x}x of the LR where its cell's range test" if one else \
                "their LRs are within {x}x of the LRs where their cells' range tests"
            why = f"{whose.format(x=f'{NEAR_MINIMUM:g}')} found the loss turning up ({minima}): training may be turning unstable there"
        else:  # no range test: instability and too short a trial look alike, so both fixes are named
            trials = _names([c.trial for c in group])
            out.append(f"{trials}'s seeds disagree, and with no range test to tell, that can mean training turns "
                       f"unstable near {'its LR' if one else 'their LRs'} (search below: {flags}) or that a trial is "
                       "too short for the seeds to settle (raise --epochs)")
            continue
        trials = _names([c.trial for c in group])
        out.append(f"{trials}'s seeds disagree and {why}; search below {'its LR' if one else 'their LRs'} "
                   f"({flags})")
    return out


def weak_answer_warnings(trials: Any, candidates: list[Candidate], *, mode: str, tolerance: Any, chance: float | None,
                         bounds: LrBounds | None, rerun_seeds_: int) -> list[str]:
    """What makes this answer weak, each a sentence with what to do about it."""
    out = []
    full = trials[trials["status"] == "ok"] if not trials.empty else trials
    if len(full) < 5:
        out.append(f"only {len(full)} trial(s) trained to full length: too few to know the region around the best; "
                   "raise --budget")
    if "steps" in full and len(full):
        import pandas as pd

        from batchtune.study.budget import MIN_STEPS

        short = full[pd.to_numeric(full["steps"], errors="coerce") < MIN_STEPS]
        if len(short):
            sizes = ", ".join(str(int(b)) for b in sorted(short["batch_size"].unique()))
            low, high = int(short["steps"].min()), int(short["steps"].max())
            steps = f"{low}" if low == high else f"{low} to {high}"
            out.append(f"trials at batch {sizes} trained only {steps} optimizer steps (fewer than {MIN_STEPS}): too "
                       "short to judge a configuration well; raise --epochs (the budget scales with it)")
    means = [c.mean for c in candidates if c.mean is not None]
    if chance is not None and means and mode == "max":
        best = max(means)
        if best <= chance + 0.1 * (1 - chance):
            out.append(f"the best candidate's metric {best:.4g} is near chance ({chance:.4g}): nothing learned well "
                       "in this budget; raise --epochs, or check the task's data and loss")
    if tolerance is not None:
        out += _spread_warnings(candidates, tolerance, bounds)
    if rerun_seeds_ == 0:
        out.append("no re-runs (--rerun-seeds 0): the stated metric is one seed's best-of-many and over-states what "
                   "re-training gives")
    if bounds is not None and not trials.empty and "lr_position" in trials:
        ok = trials[trials["status"] == "ok"].dropna(subset=["metric", "lr_position"])
        if len(ok):
            top = ok.sort_values("metric", ascending=(mode == "min")).iloc[0]
            if float(top["lr_position"]) > 0.95:
                out.append("the best trial's LR is at the top of its measured window: the best LR may lie above it; "
                           "pass --lr-min/--lr-max to search a wider range")
    return out
