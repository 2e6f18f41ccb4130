"""Ground truth for judging the search: an exhaustive grid per bundled example, cached as CSV.

For each example, every batch size x learning rate (half-decade steps) x allowed normalization x
2 seeds is trained with ``run_trial`` at a fixed epoch budget and one thread; the rows go to
``benchmarks/data/grid_<example>.csv`` and the settings to ``grid_<example>.json``.
``search_quality.py`` reads them. A diverged or failed run counts as chance accuracy (its status is
kept beside it). Resumable: rows already in the CSV are skipped, so an interrupted run picks up
where it stopped; ``--force`` starts an example afresh.

On 2 shared CPU cores, one thread (measured 2026-11): digits_mlp 384 runs x ~1 s (~6 min),
digits_cnn 384 runs x ~5 s (~32 min), tiny_transformer 108 runs x ~4 s (~7 min); ~45 min in all.

    python benchmarks/search_grid.py [--examples digits_mlp,digits_cnn,tiny_transformer] [--force]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import time
from pathlib import Path

import torch

from batchtune.task.contract import load_task, make_dataset, search_norms
from batchtune.trial.train import TrialSpec, run_trial

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
COLUMNS = ["batch_size", "lr", "norm", "seed", "status", "metric", "throughput", "seconds"]
BATCH_SIZES = (8, 16, 32, 64, 128, 256)
SEEDS = (1000, 1001)
# LR exponents in half-decade steps, wide enough that both ends lose accuracy: SGD momentum 0.9
# from 1e-3 to 10^0.5, AdamW from 10^-4.5 to 10^-0.5.
SGD_EXPONENTS = tuple(k / 2 for k in range(-6, 2))
ADAMW_EXPONENTS = tuple(k / 2 for k in range(-9, 0))
# chance: the metric a diverged or failed run counts as (1 / classes).
EXAMPLES = {
    "digits_mlp": {"epochs": 6, "exponents": SGD_EXPONENTS, "chance": 0.1},
    "digits_cnn": {"epochs": 6, "exponents": SGD_EXPONENTS, "chance": 0.1},
    # 1 epoch, the smaller of {1, 2} that does not saturate: checked on seed 1000, 1 epoch gave
    # 0.79-0.98 over six cells, 2 epochs gave 0.99-1.0 on three of four (see "epochs_note").
    "tiny_transformer": {"epochs": 1, "exponents": ADAMW_EXPONENTS, "chance": 0.25,
                         "epochs_note": "seed 1000, 1 epoch: b32 lr1e-3 0.978, b32 3.16e-3 0.969, b128 3.16e-3 0.951, "
                                        "b8 1e-3 0.982, b256 1e-2 0.790, b64 3.16e-4 0.873; 2 epochs: b32 1e-3 0.992, "
                                        "b8 1e-3 1.000, b128 3.16e-3 0.998, b64 3.16e-4 0.965"},
}


def lr_grid(exponents: tuple[float, ...]) -> list[float]:
    # Rounded so the CSV, the resume key and search_quality agree on the same float.
    return [float(f"{10 ** e:.6g}") for e in exponents]


def grid_paths(example: str) -> tuple[Path, Path]:
    return DATA / f"grid_{example}.csv", DATA / f"grid_{example}.json"


def key(batch_size: int | str, lr: float | str, norm: str, seed: int | str) -> tuple[int, str, str, int]:
    return int(batch_size), f"{float(lr):.6g}", norm, int(seed)


def done_keys(path: Path) -> set[tuple[int, str, str, int]]:
    if not path.exists():
        return set()
    with path.open(newline="") as f:
        return {key(r["batch_size"], r["lr"], r["norm"], r["seed"]) for r in csv.DictReader(f)}


def append_row(path: Path, row: dict[str, object]) -> None:
    # Opened per row: if a git checkout swaps the file underneath, later rows still land in the
    # file at the path instead of in the unlinked one (rows lost that way are rerun by main()).
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def run_example(example: str, force: bool) -> int:
    settings = EXAMPLES[example]
    task = load_task(ROOT / "examples" / f"{example}.py")
    norms, _ = search_norms(task, None)
    lrs = lr_grid(settings["exponents"])
    cells = [(b, lr, n, s) for n in norms for b in BATCH_SIZES for lr in lrs for s in SEEDS]
    csv_path, json_path = grid_paths(example)
    DATA.mkdir(parents=True, exist_ok=True)
    if force and csv_path.exists():
        csv_path.unlink()
    done = done_keys(csv_path)
    todo = [c for c in cells if key(*c) not in done]
    print(f"{example}: {len(cells)} grid runs, {len(cells) - len(todo)} cached, {len(todo)} to run "
          f"(epochs {settings['epochs']}, norms {','.join(norms)}, lrs {','.join(f'{x:g}' for x in lrs)})", flush=True)
    meta = {
        "example": example,
        "epochs": settings["epochs"],
        "lr_grid": lrs,
        "lr_exponents": list(settings["exponents"]),
        "batch_sizes": list(BATCH_SIZES),
        "norms": list(norms),
        "seeds": list(SEEDS),
        "chance": settings["chance"],
        "total_trials": len(cells),
        "optimizer": type(task.build_optimizer(torch.nn.Linear(1, 1).parameters(), 1e-3)).__name__,
        "threads": 1,
        "torch": torch.__version__,
    }
    if "epochs_note" in settings:
        meta["epochs_note"] = settings["epochs_note"]
    train_set = make_dataset(task, "train")
    val_set = make_dataset(task, "val")
    start = time.perf_counter()
    for i, (b, lr, norm, seed) in enumerate(todo, 1):
        spec = TrialSpec(batch_size=b, lr=lr, norm=norm, epochs=settings["epochs"], seed=seed, threads=1)
        result = run_trial(task, spec, train_set, val_set)
        metric = result.final_metric
        if result.status != "ok" or metric is None or not math.isfinite(metric):
            metric = settings["chance"]
        append_row(csv_path, {
            "batch_size": b, "lr": f"{lr:.6g}", "norm": norm, "seed": seed, "status": result.status,
            "metric": f"{metric:.6f}", "throughput": f"{result.throughput:.1f}" if result.throughput else "",
            "seconds": f"{result.wall_time:.2f}",
        })
        elapsed = time.perf_counter() - start
        print(f"  [{i:>3}/{len(todo)}] {example} batch {b:>3} lr {lr:<8g} {norm:<8} seed {seed} "
              f"{result.status:<8} metric {metric:.4f} {result.wall_time:5.1f} s  "
              f"(eta {elapsed / i * (len(todo) - i) / 60:.1f} min)", flush=True)
    meta["completed"] = len(done_keys(csv_path) & {key(*c) for c in cells})
    meta["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{example}: {meta['completed']}/{len(cells)} runs in {csv_path.relative_to(ROOT)} "
          f"({time.perf_counter() - start:.0f} s this time)", flush=True)
    return len(cells) - meta["completed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES), help="comma-separated example names")
    parser.add_argument("--force", action="store_true", help="discard the cached rows and run the grid again")
    args = parser.parse_args()
    # One thread: the grid shares 2 cores, and the throughput column is then comparable run to run.
    torch.set_num_threads(1)
    for example in args.examples.split(","):
        if example not in EXAMPLES:
            raise SystemExit(f"unknown example {example!r}; choose from {', '.join(EXAMPLES)}")
        missing = run_example(example, args.force)
        # Rows can go missing if the CSV is replaced while the grid runs; a second pass reruns them.
        if missing:
            run_example(example, False)


if __name__ == "__main__":
    main()
