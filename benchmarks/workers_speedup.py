"""Trials per minute with 2 local workers vs 1 on a small task (target >= 1.6x on 2 cores).

Prints two figures: end to end (the whole command, with the one-off start: dry run, study, worker
processes importing torch) and the trial phase (first trial's start to last trial's end, read from
the study), which is what --workers speeds up.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def run(workers: int, trials: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "batchtune", "search", str(ROOT / "examples" / "digits_cnn.py"), "--trials",
               str(trials), "--epochs", "4", "--batch-sizes", "32,64", "--norms", "batch,group", "--no-plots",
               "--workers", str(workers), "--threads", "1",
               # The probe and the doctor run once per study, before any trial: this measures trials.
               "--no-probe", "--no-doctor"]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
        wall = time.perf_counter() - start
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="digits_cnn", storage=f"sqlite:///{tmp}/studies/digits_cnn.db")
        first = min(t.datetime_start for t in study.trials)
        last = max(t.datetime_complete for t in study.trials)
        phase = (last - first).total_seconds()
        return trials / (wall / 60), trials / (phase / 60)


def main(trials: int = 16, rounds: int = 2) -> None:
    one, two = [], []
    for _ in range(rounds):  # interleaved, so drift hits both alike
        one.append(run(1, trials))
        two.append(run(2, trials))
    for i, label in ((0, "end to end"), (1, "trial phase")):
        a = sum(r[i] for r in one) / rounds
        b = sum(r[i] for r in two) / rounds
        print(f"{label:>11}: 1 worker {a:.1f} trials/min, 2 workers {b:.1f} trials/min: {b / a:.2f}x "
              f"(target >= 1.6x: {'PASS' if b / a >= 1.6 else 'FAIL'})")
    print(f"({trials} digits trials of 4 epochs, 1 thread per trial, {rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
