"""Which LR the climb should try at a larger batch size: the anchor's window position, its own LR, or both.

After the sampled trials, the search climbs from a trial close to the best to the next larger batch
size of its normalization (``batchtune.study.climb``), at the same position in the larger cell's LR
window. The windows come from the range tests, so that carries the LR over by the scaling the range
tests' loss minima show; the best LR of a full run need not scale the same way. This checks the
choice against the cached exhaustive grids (``search_grid.py``): for each example, range-test seed,
normalization with a window of its own and step b -> 2b between searched sizes, the climb starts from
the grid's best LR at b and predicts the LR at 2b

- ``position``: the same position in the window at 2b (what the climb does),
- ``same``: the anchor's own LR (no scaling; clipped to the window at 2b),
- ``bracket``: both, keeping the better (one more trial per step when the first one loses),

and reads the grid's 2-seed mean accuracy at the predicted LR (interpolated in log-LR), against the
best of the cell at 2b: the mean shortfall in points and how often it is within 1 point. The range
tests run exactly as the search runs them (smallest, middle and largest searched size, 50 steps, one
thread). No timing: the load does not matter. About 3.5 min on 2 CPU cores with the held-out task.

    python benchmarks/climb_lr.py [--examples digits_mlp,digits_cnn,tiny_transformer,heldout_waveforms] [--seeds 6]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch

from batchtune.study.budget import judgeable_sizes
from batchtune.task.contract import load_task, make_dataset, optimizer_family, search_norms
from search_grid import EXAMPLES as GRIDS  # benchmarks/ is on the path when run as a script
from search_grid import task_path
from start_lr import SIZES, best_lr, grid_metric, measured_bounds

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
TOLERANCE = 0.01


def position(bounds, b: int, norm: str, lr: float) -> float:
    low, high = bounds.window(b, norm)
    return min(1.0, max(0.0, math.log(lr / low) / math.log(high / low))) if high > low else 0.5


def run(example: str, seeds: int) -> list[dict]:
    torch.set_num_threads(1)
    task = load_task(task_path(example))
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    family = optimizer_family(task)
    norms, _ = search_norms(task, None)
    sizes, _ = judgeable_sizes(SIZES, GRIDS[example]["epochs"] * len(train))
    grid = pd.read_csv(DATA / f"grid_{example}.csv")
    rows = []
    for seed in range(seeds):
        bounds = measured_bounds(task, (train, val), sizes, norms, family, seed)
        for norm in norms:
            if not any(k.endswith(f"/{norm}") for k in bounds.windows):
                continue  # no range-test signal for this norm: the fallback window, no scaling to carry
            for b, bigger in zip(sizes, sizes[1:]):
                here = grid[(grid["batch_size"] == b) & (grid["norm"] == norm)]
                there = grid[(grid["batch_size"] == bigger) & (grid["norm"] == norm)]
                if here.empty or there.empty:
                    continue
                anchor = best_lr(here)
                low, high = bounds.window(bigger, norm)
                by_position = bounds.lr(bigger, norm, position(bounds, b, norm, anchor))
                same = min(high, max(low, anchor))
                best = float(there.groupby("lr")["metric"].mean().max())
                acc = {"position": grid_metric(there, by_position), "same": grid_metric(there, same)}
                acc["bracket"] = max(acc.values())
                rows.append({"example": example, "norm": norm, "seed": seed, "step": f"{b}->{bigger}",
                             "ratio": by_position / anchor, "best_lr_ratio": best_lr(there) / anchor,
                             **{f"short_{k}": best - v for k, v in acc.items()},
                             **{f"within_{k}": best - v <= TOLERANCE + 1e-9 for k, v in acc.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="digits_mlp,digits_cnn,tiny_transformer,heldout_waveforms")
    parser.add_argument("--seeds", type=int, default=6, help="range-test seeds per example (0..N-1)")
    args = parser.parse_args()
    frame = pd.DataFrame([r for example in args.examples.split(",") for r in run(example, args.seeds)])
    kinds = ("position", "same", "bracket")
    summary = frame.groupby("example").agg(
        steps=("step", "size"), lr_ratio_median=("ratio", "median"), best_ratio_median=("best_lr_ratio", "median"),
        **{f"short_{k}": (f"short_{k}", "mean") for k in kinds},
        **{f"within_{k}": (f"within_{k}", "mean") for k in kinds}).reset_index()
    for k in kinds:
        summary[f"short_{k}"] *= 100
    print(f"# the climb's LR at the next batch size against the grids, {args.seeds} range-test seeds, "
          f"torch {torch.__version__}\n")
    print("lr_ratio: the LR the window position carries to 2b over the anchor's (median); best_ratio: the best grid "
          "LR at 2b over the best at b (median). short: points below the best of the cell at 2b, at the predicted "
          "LR (bracket: the better of the two). within: the share within 1 point of it.\n")
    print(summary.to_markdown(index=False, floatfmt=".3f"))
    print(f"\nover all {len(frame)} (example, norm, seed, step): short {frame['short_position'].mean() * 100:.2f} / "
          f"{frame['short_same'].mean() * 100:.2f} / {frame['short_bracket'].mean() * 100:.2f} points, within 1 point "
          f"{frame['within_position'].mean():.0%} / {frame['within_same'].mean():.0%} / "
          f"{frame['within_bracket'].mean():.0%} (position / same LR / bracket)")


if __name__ == "__main__":
    main()
