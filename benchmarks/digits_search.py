"""The quickstart search on 2 CPU cores: wall time (target < 5 min) and its stated accuracy against the
digits grid's best mean (``benchmarks/data/grid_digits_cnn.csv``, target: within 1 point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["search", str(ROOT / "examples" / "digits_cnn.py"), "--epochs", "6"]  # the README's quickstart


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "batchtune", *COMMAND, "--no-plots"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((Path(tmp) / "reports" / "digits_cnn" / "summary.json").read_text())
    rec = summary["recommendation"]
    grid = pd.read_csv(ROOT / "benchmarks" / "data" / "grid_digits_cnn.csv")
    best = float(grid.groupby(["batch_size", "lr", "norm"])["metric"].mean().max())
    load = os.getloadavg()[0]
    print(f"batchtune {' '.join(COMMAND[:1] + ['examples/digits_cnn.py'] + COMMAND[2:])}  (load average {load:.1f})")
    print(f"wall time {wall:.0f} s (target < 300 s: {'PASS' if wall < 300 else 'FAIL'}); "
          f"recommended {rec['params']}, stated accuracy {rec['metric']:.4f} (mean of fresh seeds) against the grid's "
          f"best mean {best:.4f} (target within 0.01: {'PASS' if rec['metric'] >= best - 0.01 else 'FAIL'}); "
          f"compute {summary.get('compute', {}).get('spent_trial_equivalents')}; statuses {summary['status_counts']}")


if __name__ == "__main__":
    main()
