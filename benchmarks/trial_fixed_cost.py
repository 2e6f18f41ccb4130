"""Fixed cost per trial after the first on CPU: process round trip, model build, data (target < 0.5 s).

Runs trials of one optimizer step without evaluation through the same reusable worker process that a
search uses, and subtracts the measured training time, leaving the per-trial overhead.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from batchtune.trial.process import TrialRunner
from batchtune.trial.train import TrialSpec

ROOT = Path(__file__).resolve().parents[1]


def main(trials: int = 8) -> None:
    for task in ("digits_cnn.py", "tiny_transformer.py"):
        path = str(ROOT / "examples" / task)
        costs = []
        with TrialRunner(path, env={"OMP_NUM_THREADS": "1"}) as runner:
            start = time.perf_counter()
            first = runner.run(TrialSpec(batch_size=32, lr=0.01, norm="batch" if "digits" in task else "as-built",
                                         max_steps=1, evaluate=False, warmup_steps=0, threads=1))
            first_cost = time.perf_counter() - start
            assert first.ok, first.reason
            for i in range(trials):
                spec = TrialSpec(batch_size=32, lr=0.01, norm="batch" if "digits" in task else "as-built",
                                 seed=i, max_steps=1, evaluate=False, warmup_steps=0, threads=1)
                start = time.perf_counter()
                result = runner.run(spec)
                wall = time.perf_counter() - start
                assert result.ok, result.reason
                costs.append(wall - result.train_time)
        med = statistics.median(costs)
        print(f"{task}: first trial (process start, imports, datasets) {first_cost:.2f} s; fixed cost per later trial "
              f"median {med * 1000:.0f} ms, max {max(costs) * 1000:.0f} ms over {trials}; target < 500 ms: "
              f"{'PASS' if med < 0.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
