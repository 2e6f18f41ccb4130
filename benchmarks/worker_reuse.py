"""Wall time of a default search with one worker process for every phase vs a fresh one per phase.

A search has phases that train: speed per cell, LR range tests, the sampled trials, each step of the
climb, the trials the climb left budget for, the re-runs. Until this change each phase started its own
worker process, which imports torch, imports the task file and builds its datasets (on CUDA: makes a
context) before its first step. Now one process per worker slot serves them all
(``batchtune.study.coordinator.WorkerPool``). This runs the same default search both ways, alternating
(ABAB..., the machine is shared and its speed drifts), and prints per run the wall time, the worker
starts and the seconds they took (process start to ready), with the median ratio of wall times. The
searches are the same study on the same seed, so they train the same samples; only trial timing can
make them take different decisions (a different climb), which the printed trial counts show.

    python benchmarks/worker_reuse.py [--example digits_mlp] [--budget 12] [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from batchtune.study import coordinator
from batchtune.study.config import SearchConfig
from batchtune.study.run import search
from batchtune.trial import process

ROOT = Path(__file__).resolve().parents[1]


class FreshPerPhase(coordinator.WorkerPool):
    """The previous behaviour: every phase that asks for workers gets new processes; the last phase's close."""

    def take(self, count: int) -> list[Any]:
        self.close()
        self._runners = []
        return super().take(count)


def timed_starts() -> list[float]:
    """Patch TrialRunner._start to record how long each worker start took; returns the list it fills."""
    starts: list[float] = []
    real = process.TrialRunner._start

    def start(self: Any) -> str | None:
        began = time.perf_counter()
        try:
            return real(self)
        finally:
            starts.append(time.perf_counter() - began)

    process.TrialRunner._start = start  # type: ignore[method-assign]
    return starts


def one_search(example: str, budget: float, epochs: float, pool_class: type, starts: list[float]) -> dict[str, Any]:
    coordinator_pool = coordinator.WorkerPool
    import batchtune.study.run as run

    run.WorkerPool = pool_class  # type: ignore[misc]
    del starts[:]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            cfg = SearchConfig(task_path=str(ROOT / "examples" / f"{example}.py"), budget=budget, epochs=epochs,
                               threads=1, plots=False, doctor=False)
            began = time.perf_counter()
            result = search(cfg, write_report=False)
            wall = time.perf_counter() - began
        finally:
            os.chdir(cwd)
            run.WorkerPool = coordinator_pool  # type: ignore[misc]
    rec = result.recommendation
    return {"wall s": wall, "worker starts": len(starts), "start s": sum(starts), "trials": len(result.trials),
            "pick": f"b{rec.params['batch_size']} {rec.params['norm']} lr {rec.params['lr']:.3g}" if rec else "none"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="digits_mlp")
    parser.add_argument("--budget", type=float, default=12)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    starts = timed_starts()
    rows: list[dict[str, Any]] = []
    print(f"# {args.example}, --budget {args.budget:g} --epochs {args.epochs:g} --threads 1, load average "
          f"{os.getloadavg()[0]:.2f} at the start")
    for r in range(args.repeats):
        for name, pool in (("one per slot (now)", coordinator.WorkerPool), ("fresh per phase (before)", FreshPerPhase)):
            row = {"run": r, "workers": name, **one_search(args.example, args.budget, args.epochs, pool, starts)}
            rows.append(row)
            print(f"  {row['workers']:<25} {row['wall s']:6.1f} s wall, {row['worker starts']} worker start(s) taking "
                  f"{row['start s']:.1f} s, {row['trials']} trials, pick {row['pick']}", flush=True)
    now = [r["wall s"] for r in rows if r["workers"].startswith("one")]
    before = [r["wall s"] for r in rows if r["workers"].startswith("fresh")]
    ratios = [a / b for a, b in zip(now, before)]
    print(f"wall time now / before: median {statistics.median(ratios):.2f} over {len(ratios)} pair(s) "
          f"({', '.join(f'{x:.2f}' for x in ratios)}); load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
