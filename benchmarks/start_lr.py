"""Where the search's first trials start: the range test's suggestion alone, or the bracket of two.

The first trials of a default search sit at the middle batch size of each normalization, at the LR
the range test suggests (its loss minimum's LR / 10, fastai); when the budget holds two start trials
per norm, a second one half a decade lower (the minimum / 30; ``batchtune.study.lr_range``). This
checks that choice against the cached exhaustive grids (``search_grid.py``): for each example and
norm, range tests on several seeds, exactly as the search runs them (the smallest, middle and
largest searched batch size, 50 steps, one thread), and for each seed

- how far, in decades, the start LR lies from the cell's best grid LR (for the bracket: the nearer
  of its two points),
- the grid's 2-seed mean accuracy at the start LR (interpolated in log-LR between grid points; for
  the bracket: the better of its two points), which is what the best start trial can score,

each beside the alternative use of the second trial: a draw uniform in the cell's LR window, as the
sampler's start-up phase would make (expected over 400 draws).

Printed per example and norm as means over the seeds, with the share of seeds where the bracket's
lower point was the better one. The grid's LR steps are half a decade, so distances under about
0.25 decades are within one grid step. No timing is involved: the machine's load does not matter.

    python benchmarks/start_lr.py [--examples digits_mlp,digits_cnn,tiny_transformer] [--seeds 6]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from batchtune.study.budget import judgeable_sizes
from batchtune.study.lr_range import LrBounds, RangeTest, fit_bounds, range_test, sizes_to_test, start_design
from batchtune.task.contract import load_task, make_dataset, optimizer_family, search_norms

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
EPOCHS = {"digits_mlp": 6, "digits_cnn": 6, "tiny_transformer": 1}  # the grids' epoch budgets (grid_*.json)
SIZES = (8, 16, 32, 64, 128, 256)  # the grids' batch sizes
DRAWS = 400  # random window positions per (norm, seed) for the alternative second trial


def grid_metric(cell: pd.DataFrame, lr: float) -> float:
    """The grid's 2-seed mean at ``lr``, interpolated in log10(LR); flat beyond the grid's ends."""
    means = cell.groupby("lr")["metric"].mean().sort_index()
    return float(np.interp(math.log10(lr), np.log10(means.index.to_numpy()), means.to_numpy()))


def best_lr(cell: pd.DataFrame) -> float:
    means = cell.groupby("lr")["metric"].mean()
    return float(means.idxmax())


def measured_bounds(task: Any, sets: tuple[Any, Any], sizes: list[int], norms: list[str], family: str,
                    seed: int) -> LrBounds:
    """The windows a search with ``seed`` would sample in: its range tests (smallest, middle and largest size of
    each norm, 50 steps, on the CPU), fitted over ``sizes``."""
    tests = []
    for norm in norms:
        for b in sizes_to_test(sizes):
            out = range_test(task, *sets, batch_size=b, norm=norm, precision="fp32", device="cpu", seed=seed,
                             family=family)
            tests.append(RangeTest(batch_size=b, norm=norm, lrs=tuple(out["lrs"]), losses=tuple(out["losses"]),
                                   samples=int(out["samples"]), error=out.get("error")))
    return fit_bounds(tests, sizes, norms, family)


def run(example: str, seeds: int) -> list[dict]:
    torch.set_num_threads(1)
    task = load_task(ROOT / "examples" / f"{example}.py")
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    family = optimizer_family(task)
    norms, _ = search_norms(task, None)
    sizes, _ = judgeable_sizes(SIZES, EPOCHS[example] * len(train))
    grid = pd.read_csv(DATA / f"grid_{example}.csv")
    rows = []
    for seed in range(seeds):
        bounds = measured_bounds(task, (train, val), sizes, norms, family, seed)
        design = start_design(bounds, sizes, norms, bracket=True)
        for norm in norms:
            points = [d for d in design if d["norm"] == norm]
            if len(points) < 2:
                continue  # no range test signal for this norm: one trial in the fallback window
            b = points[0]["batch_size"]
            cell = grid[(grid["batch_size"] == b) & (grid["norm"] == norm)]
            lrs = [bounds.lr(b, norm, p["lr_position"]) for p in points]
            target = best_lr(cell)
            dist = [abs(math.log10(lr / target)) for lr in lrs]
            score = [grid_metric(cell, lr) for lr in lrs]
            # The alternative use of the second start trial: a draw of the sampler's start-up phase, uniform
            # in the window's position (its expected outcome over DRAWS positions).
            randoms = [bounds.lr(b, norm, p) for p in np.random.default_rng(seed).uniform(0, 1, DRAWS)]
            rand_dist = np.mean([min(dist[0], abs(math.log10(lr / target))) for lr in randoms])
            rand_acc = np.mean([max(score[0], grid_metric(cell, lr)) for lr in randoms])
            rows.append({"example": example, "norm": norm, "batch": b, "seed": seed, "best_lr": target,
                         "suggested": lrs[0], "lower": lrs[1], "dist_one": dist[0], "dist_pair": min(dist),
                         "dist_random": float(rand_dist), "acc_random": float(rand_acc),
                         "acc_one": score[0], "acc_pair": max(score), "lower_better": score[1] > score[0],
                         "cell_best": float(cell.groupby("lr")["metric"].mean().max())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="digits_mlp,digits_cnn,tiny_transformer")
    parser.add_argument("--seeds", type=int, default=6, help="range-test seeds per example (0..N-1)")
    args = parser.parse_args()
    rows = []
    for example in args.examples.split(","):
        rows += run(example, args.seeds)
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["example", "norm", "batch"]).agg(
        cell_best=("cell_best", "first"), best_lr=("best_lr", "first"),
        suggested=("suggested", "median"), dist_one=("dist_one", "mean"), dist_random=("dist_random", "mean"),
        dist_pair=("dist_pair", "mean"), acc_one=("acc_one", "mean"), acc_random=("acc_random", "mean"),
        acc_pair=("acc_pair", "mean"), lower_better=("lower_better", "mean"),
    ).reset_index()
    print(f"# start LRs against the grids, {args.seeds} range-test seeds per example, torch {torch.__version__}\n")
    print("dist: decades from the cell's best grid LR (one: the suggestion, minimum/10; random: the nearer of it "
          "and a uniform draw in the cell's window, what the sampler's start-up draw would add, expected over "
          f"{DRAWS} draws; pair: the nearer of it and minimum/30). acc: the grid's 2-seed mean at that LR (random, "
          "pair: the better point). lower better: the share of seeds where minimum/30 scored higher.\n")
    print(summary.to_markdown(index=False, floatfmt=".4g"))
    short = {k: (frame["cell_best"] - frame[f"acc_{k}"]).mean() for k in ("one", "random", "pair")}
    print(f"\nover all {len(frame)} (example, norm, seed), suggestion alone / with a random draw / with the bracket: "
          f"mean distance {frame['dist_one'].mean():.3f} / {frame['dist_random'].mean():.3f} / "
          f"{frame['dist_pair'].mean():.3f} decades; mean grid accuracy of the best start point "
          f"{frame['acc_one'].mean():.4f} / {frame['acc_random'].mean():.4f} / {frame['acc_pair'].mean():.4f}, "
          f"{short['one']:.4f} / {short['random']:.4f} / {short['pair']:.4f} short of the cell's best; "
          f"the lower point scored higher in {frame['lower_better'].mean():.0%}")


if __name__ == "__main__":
    main()
