"""Trials per minute with 2 local workers vs 1 on a small task (target >= 1.6x on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(workers: int, trials: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "batchtune", "search", str(ROOT / "examples" / "digits_cnn.py"), "--trials",
               str(trials), "--epochs", "4", "--batch-sizes", "32,64", "--norms", "batch,group", "--no-plots",
               "--workers", str(workers), "--threads", "1",
               # The probe and the doctor run once per study, before any trial: this measures trials.
               "--no-probe", "--no-doctor"]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
        return trials / ((time.perf_counter() - start) / 60)


def main(trials: int = 16, rounds: int = 2) -> None:
    one, two = [], []
    for _ in range(rounds):  # interleaved, so drift hits both alike
        one.append(run(1, trials))
        two.append(run(2, trials))
    ratio = (sum(two) / rounds) / (sum(one) / rounds)
    print(f"{trials} digits trials, 1 thread per trial: 1 worker {sum(one) / rounds:.1f} trials/min, "
          f"2 workers {sum(two) / rounds:.1f} trials/min: {ratio:.2f}x (target >= 1.6x: {'PASS' if ratio >= 1.6 else 'FAIL'})")


if __name__ == "__main__":
    main()
