"""Where the LR window should sit around the range test's loss minimum.

The search samples each cell's LR log-uniformly in a window around the LR at the smoothed loss minimum
of a short LR range test (``batchtune.study.lr_range``). This measures, against the cached exhaustive
grids (``search_grid.py``), for every example, norm and tested batch size (the smallest, middle and
largest searched size, as the search tests them) on several range-test seeds:

- ``ratio``: log10(the cell's best grid LR / the range test's loss-minimum LR), in decades;
- for each candidate window (low, high as multiples of that minimum): whether the best grid LR lies
  inside it (``covers``), and the share of the window, log-uniformly, where the grid's 2-seed mean
  (interpolated in log-LR) is within 1 point of the cell's best (``useful``): the chance that a
  sampled LR is a good one. A window that covers the best and wastes less of itself on LRs that
  diverge or crawl gives the sampler more good trials for the same budget.

Cells whose best grid mean is within 10 points of chance are left out (no LR there is good). The grid's LR
steps are half a decade, so a ratio is known to about 0.25 decades. No timing: the load does not matter.

    python benchmarks/lr_window.py [--examples digits_mlp,digits_cnn,tiny_transformer,heldout_waveforms] [--seeds 3] \
        | tee benchmarks/data/lr_window_last.md
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from batchtune.study.budget import judgeable_sizes
from batchtune.study.lr_range import RangeTest, range_test, sizes_to_test
from batchtune.task.contract import load_task, make_dataset, optimizer_family, search_norms

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
PATHS = {"digits_mlp": "examples/digits_mlp.py", "digits_cnn": "examples/digits_cnn.py",
         "tiny_transformer": "examples/tiny_transformer.py", "heldout_waveforms": "benchmarks/tasks/heldout_waveforms.py"}
EPOCHS = {"digits_mlp": 6, "digits_cnn": 6, "tiny_transformer": 1, "heldout_waveforms": 3}  # the grids' budgets
CHANCE = {"digits_mlp": 0.1, "digits_cnn": 0.1, "tiny_transformer": 1 / 3, "heldout_waveforms": 0.25}
SIZES = (8, 16, 32, 64, 128, 256)
# (low, high) as multiples of the loss minimum's LR; the first is the shipped window
WINDOWS = {"1/100..2 (before)": (1 / 100, 2.0), "1/100..1": (1 / 100, 1.0), "1/300..1/2": (1 / 300, 0.5),
           "1/200..1/2 (shipped)": (1 / 200, 0.5), "1/300..1": (1 / 300, 1.0), "1/1000..1/3": (1 / 1000, 1 / 3)}
POINTS = 200  # log-uniform grid over a window for the useful share


def grid_curve(cell: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    means = cell.groupby("lr")["metric"].mean().sort_index()
    return np.log10(means.index.to_numpy()), means.to_numpy()


def run(example: str, seeds: int) -> list[dict]:
    torch.set_num_threads(1)
    task = load_task(ROOT / PATHS[example])
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    family = optimizer_family(task)
    norms, _ = search_norms(task, None)
    sizes, _ = judgeable_sizes(SIZES, EPOCHS[example] * len(train))
    grid = pd.read_csv(DATA / f"grid_{example}.csv")
    rows = []
    for norm in norms:
        for b in sizes_to_test(sizes):
            cell = grid[(grid["batch_size"] == b) & (grid["norm"] == norm)]
            xs, ys = grid_curve(cell)
            best_mean = float(ys.max())
            if best_mean <= CHANCE[example] + 0.1 * (1 - CHANCE[example]):
                continue
            best_lr = float(10 ** xs[int(ys.argmax())])
            for seed in range(seeds):
                out = range_test(task, train, val, batch_size=b, norm=norm, precision="fp32", device="cpu", seed=seed,
                                 family=family)
                test = RangeTest(batch_size=b, norm=norm, lrs=tuple(out["lrs"]), losses=tuple(out["losses"]),
                                 samples=int(out["samples"]), error=out.get("error"))
                m = test.lr_at_min
                row = {"example": example, "norm": norm, "batch": b, "seed": seed, "cell_best": best_mean,
                       "signal": m is not None, "ratio": math.log10(best_lr / m) if m else None}
                for name, (low, high) in WINDOWS.items():
                    if m is None:
                        row[f"covers {name}"] = row[f"useful {name}"] = None
                        continue
                    lo, hi = math.log10(m * low), math.log10(min(m * high, test.lrs[-1]))
                    at = np.interp(np.linspace(lo, hi, POINTS), xs, ys)  # flat beyond the grid's ends
                    row[f"covers {name}"] = lo - 0.25 <= math.log10(best_lr) <= hi + 0.25
                    row[f"useful {name}"] = float((at >= best_mean - 0.01).mean())
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(PATHS))
    parser.add_argument("--seeds", type=int, default=3, help="range-test seeds per cell (0..N-1)")
    args = parser.parse_args()
    frame = pd.DataFrame([r for ex in args.examples.split(",") for r in run(ex, args.seeds)])
    frame.to_csv(DATA / "lr_window_last.csv", index=False)
    measured = frame[frame["signal"]]
    print(f"# LR window against the grids, {args.seeds} range-test seeds per cell, torch {torch.__version__}\n")
    print(f"{len(frame)} (cell, seed) tests, {len(measured)} with a loss minimum; ratio = log10(best grid LR / "
          "loss-minimum LR), decades. covers: the best grid LR within the window (± a quarter decade, the grid's "
          "resolution); useful: the share of the window within 1 point of the cell's best grid mean.\n")
    q = measured["ratio"].quantile([0, 0.1, 0.5, 0.9, 1]).round(2).tolist()
    print(f"ratio quantiles (0, 10, 50, 90, 100%): {q}\n")
    per = measured.groupby("example").agg(
        tests=("ratio", "size"), ratio_median=("ratio", "median"), ratio_min=("ratio", "min"), ratio_max=("ratio", "max"),
        **{f"useful {n}": (f"useful {n}", "mean") for n in WINDOWS})
    print(per.to_markdown(floatfmt=".3g"))
    print()
    summary = pd.DataFrame([{
        "window (x minimum)": name, "decades": round(math.log10(high / low), 2),
        "covers, all": measured[f"covers {name}"].mean(),
        "useful, all": measured[f"useful {name}"].mean(),
        **{f"useful, {ex}": measured[measured["example"] == ex][f"useful {name}"].mean() for ex in measured["example"].unique()},
    } for name, (low, high) in WINDOWS.items()])
    print(summary.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
