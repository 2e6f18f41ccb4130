"""The recommendation rule replayed on measured seeds: which candidate does it pick, and how good and fast is that?

The last step of the default search re-trains a few candidates on 2 fresh seeds each and applies the
rule (``batchtune.study.recommend.recommend_measured``): of the candidates as good as the best mean,
the fastest cell wins. How "as good" is judged under seed noise decides between accuracy and speed.
This replays the rule many times on real measurements instead of on one search: the cells that
``search_grid.py --recheck`` re-trained on 6 seeds each (every cell within 2 points of a bundled
example's grid best) stand for the candidates; each draw takes ``--candidates`` of them at random,
gives each 2 of its 6 seeds as its "fresh seeds", and asks the rule for a pick. The mean of a cell's
other 4 seeds is its truth (so no pick is judged on the seeds that chose it), its speed the median
throughput of its grid runs (known exactly here: the timing noise is another question, answered by
the cell measurement's bootstrap).

For each rule it prints, over the draws: how far the pick's true mean lies below the best true mean
among the drawn candidates (points), how often that is within the tolerance, the pick's speed as a
share of the fastest drawn candidate that is truly within the tolerance, how often that share is at
least 0.9, and how often both hold (what issue 12's criteria (a) and (b) ask of a search). The rules:

- ``shipped``: as good when the gap plus its standard error (the seed spread pooled over the
  candidates; at least a quarter of the tolerance) stays within the tolerance;
- ``mean+quarter``: as good when the gap of the means plus a quarter of the tolerance (a fixed margin
  for seed noise) stays within it;
- ``mean``: the gap of the means within the tolerance, no margin;
- ``best``: always the best mean (no trade for speed).

A second table replays the shipped rule without and with racing (``batchtune.study.measured.RACE`` more
seeds, on the best mean and the fastest candidate the seeds leave open), on the held-out task too.

No timing: the load does not matter. 40 s on 2 CPU cores.

    python benchmarks/decision_rule.py [--draws 4000] [--candidates 4]
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from batchtune.study import cells as cells_module
from batchtune.study import recommend
from batchtune.study.candidates import Candidate
from batchtune.study.cells import Cell, CellTable, SpeedComparison
from batchtune.study.config import Tolerance

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
EXAMPLES = ("digits_mlp", "digits_cnn", "tiny_transformer")
TOL = 0.01
EMPTY = pd.DataFrame(columns=["trial", "metric", "throughput", "peak_memory_bytes"])


def cells_of(example: str) -> list[dict]:
    recheck = pd.read_csv(DATA / f"recheck_{example}.csv")
    grid = pd.read_csv(DATA / f"grid_{example}.csv")
    speed = grid[grid["status"] == "ok"].groupby(["batch_size", "norm"])["throughput"].median()
    out = []
    for (b, lr, norm), g in recheck.groupby(["batch_size", "lr", "norm"]):
        seeds = [float(m) for m in g["metric"] if math.isfinite(float(m))]
        if len(seeds) >= 4 and (b, norm) in speed.index:
            out.append({"batch": int(b), "lr": float(lr), "norm": str(norm), "seeds": seeds,
                        "speed": float(speed.loc[(b, norm)])})
    return out


def table(drawn: list[dict]) -> CellTable:
    cells = {}
    for d in drawn:  # exact speeds: a ratio repeated in every round (no timing noise)
        ratio = d["batch"] / d["speed"] / 1e-3
        cell = Cell(batch_size=d["batch"], norm=d["norm"], precision="fp32", ratios=((ratio,),) * 4, reference=1e-3)
        cells[cell.key] = cell
    return CellTable(cells=cells)


def rules() -> dict[str, Callable[..., bool]]:
    """The "as good" tests to replay, each ``(candidate, best, tolerance, mode, sd)``."""

    def gap(c: Any, best: Any) -> float:
        return best.mean - c.mean

    shipped = recommend._as_good
    return {
        "shipped": shipped,
        "mean+quarter": lambda c, best, tol, mode, sd: gap(c, best) + tol.limit(best.mean) / 4 <= tol.limit(best.mean) + 1e-12,
        "mean": lambda c, best, tol, mode, sd: gap(c, best) <= tol.limit(best.mean) + 1e-12,
        "best": lambda c, best, tol, mode, sd: c is best,
    }


def exact_compare(a: Cell, b: Cell, **_: object) -> SpeedComparison | None:
    """The speed ratio of two cells measured without noise (the bootstrap's interval collapses to it)."""
    ratio = (a.throughput or 0.0) / (b.throughput or 1.0)
    return SpeedComparison(ratio, ratio, ratio)


def replay(cells: list[dict], rule: Callable[..., bool], draws: int, k: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    shipped, bootstrap = recommend._as_good, cells_module.compare
    cells_module.compare = exact_compare
    try:
        short, within, ratio, fast, both = [], 0, [], 0, 0
        for _ in range(draws):
            drawn = rng.sample(cells, min(k, len(cells)))
            # Two cells of one (batch, norm) at different LRs share a speed cell; the rule compares cells.
            # Each candidate's "fresh seeds" are 2 of its 6; its truth is the mean of the other 4, so the pick
            # is not judged on the seeds it was picked by.
            fresh = [rng.sample(range(len(d["seeds"])), 2) for d in drawn]
            truth = [sum(v for k, v in enumerate(d["seeds"]) if k not in f) / (len(d["seeds"]) - 2)
                     for d, f in zip(drawn, fresh)]
            candidates = [Candidate(trial=i, batch_size=d["batch"], lr=d["lr"], norm=d["norm"], precision="fp32",
                                    trial_metric=0.0, why="x", metrics=tuple(d["seeds"][k] for k in f),
                                    seeds=(0, 1)) for i, (d, f) in enumerate(zip(drawn, fresh))]
            sd = recommend.pooled_seed_sd(candidates)
            recommend._as_good = lambda c, best, tol, mode, _sd=None: rule(c, best, tol, mode, sd)
            rec = recommend.recommend_measured(candidates, table(drawn), EMPTY, mode="max",
                                               tolerance=Tolerance(TOL, "absolute"))
            pick = drawn[rec.trial]
            top = max(truth)
            good_speed = max(d["speed"] for d, t in zip(drawn, truth) if t >= top - TOL)
            gap = top - truth[rec.trial]
            short.append(gap)
            ok_a = gap <= TOL + 1e-12
            ok_b = pick["speed"] >= 0.9 * good_speed
            ratio.append(pick["speed"] / good_speed)
            within += ok_a
            fast += ok_b
            both += ok_a and ok_b
    finally:
        recommend._as_good, cells_module.compare = shipped, bootstrap
    return {"points below the best": 100 * sum(short) / draws, "within 1 point": within / draws,
            "speed share": sum(ratio) / draws, "speed >= 0.9": fast / draws, "both": both / draws}


def replay_race(cells: list[dict], race: int, draws: int, k: int, seed: int) -> dict[str, float]:
    """The shipped rule after racing (``batchtune.study.measured.rerun_candidates``): while ``race`` seeds are
    left and ``recommend.undecided`` names a best mean and a faster rival the seeds leave open, one more seed
    each. Each candidate's 6 seeds are shuffled: 2 are its fresh seeds, the next 2 its race seeds, the last 2
    its truth (for every row of this table alike, so that rows with and without racing are judged on the same
    seeds, paired draw by draw)."""
    rng = random.Random(seed)
    bootstrap = cells_module.compare
    cells_module.compare = exact_compare
    tol = Tolerance(TOL, "absolute")
    try:
        within, fast, both, raced = 0, 0, 0, 0
        for _ in range(draws):
            drawn = rng.sample(cells, min(k, len(cells)))
            orders = [rng.sample(range(len(d["seeds"])), len(d["seeds"])) for d in drawn]
            used = [o[:2] for o in orders]

            def candidates() -> list[Candidate]:
                return [Candidate(trial=i, batch_size=d["batch"], lr=d["lr"], norm=d["norm"], precision="fp32",
                                  trial_metric=0.0, why="x", metrics=tuple(d["seeds"][j] for j in u),
                                  seeds=tuple(range(len(u)))) for i, (d, u) in enumerate(zip(drawn, used))]

            left = race
            while left >= 2:
                pair = recommend.undecided(candidates(), table(drawn), mode="max", tolerance=tol)
                if pair is None:
                    break
                raced += left == race
                for c in pair:
                    used[c.trial] = orders[c.trial][:len(used[c.trial]) + 1]
                left -= 2
            rec = recommend.recommend_measured(candidates(), table(drawn), EMPTY, mode="max", tolerance=tol)
            truth = [sum(d["seeds"][j] for j in o[4:]) / len(o[4:]) for d, o in zip(drawn, orders)]
            top = max(truth)
            good_speed = max(d["speed"] for d, t in zip(drawn, truth) if t >= top - TOL)
            ok_a = top - truth[rec.trial] <= TOL + 1e-12
            ok_b = drawn[rec.trial]["speed"] >= 0.9 * good_speed
            within += ok_a
            fast += ok_b
            both += ok_a and ok_b
    finally:
        cells_module.compare = bootstrap
    return {"raced": raced / draws, "within 1 point": within / draws, "speed >= 0.9": fast / draws,
            "both": both / draws}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for example in EXAMPLES:
        cells = cells_of(example)
        for name, rule in rules().items():
            rows.append({"example": example, "cells": len(cells), "rule": name,
                         **replay(cells, rule, args.draws, args.candidates, seed=0)})
    print(f"# the recommendation rule replayed on re-checked seeds: {args.draws} draws of {args.candidates} "
          "candidates x 2 of their 6 seeds per example\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    from batchtune.study.measured import RACE

    rows = []
    for example in (*EXAMPLES, "heldout_waveforms"):
        cells = cells_of(example)
        for race in (0, RACE):
            rows.append({"example": example, "cells": len(cells), "race seeds": race,
                         **replay_race(cells, race, args.draws, args.candidates, seed=0)})
    print(f"\n# racing: the shipped rule without and with {RACE} race seeds (one more seed each for the best mean and "
          "the fastest rival the seeds leave open), each candidate's 6 seeds shuffled into 2 fresh, 2 for the race "
          "and 2 as its truth; 'raced' is the share of draws that raced\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
