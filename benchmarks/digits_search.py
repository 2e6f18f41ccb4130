"""The quickstart search on 2 CPU cores: wall time (target < 5 min) and recommended accuracy (>= 95%)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["search", str(ROOT / "examples" / "digits_cnn.py"), "--trials", "20", "--epochs", "6",
           "--batch-size-max", "256", "--lr-min", "0.003", "--lr-max", "0.3"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "batchtune", *COMMAND, "--no-plots"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((Path(tmp) / "reports" / "digits_cnn" / "summary.json").read_text())
    rec = summary["recommendation"]
    print(f"batchtune {' '.join(COMMAND[:1] + ['examples/digits_cnn.py'] + COMMAND[2:])}")
    print(f"wall time {wall:.0f} s (target < 300 s: {'PASS' if wall < 300 else 'FAIL'}); "
          f"recommended {rec['params']} with validation accuracy {rec['metric']:.4f} "
          f"(target >= 0.95: {'PASS' if rec['metric'] >= 0.95 else 'FAIL'}); best trial accuracy {rec['best_metric']:.4f}; "
          f"statuses {summary['status_counts']}")


if __name__ == "__main__":
    main()
