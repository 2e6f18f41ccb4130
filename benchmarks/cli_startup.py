"""Wall time of `batchtune --help` (target: under 0.3 s). Heavy imports must stay lazy."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def main(repeats: int = 10) -> None:
    cmd = [sys.executable, "-m", "batchtune", "--help"]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    bare = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
        bare.append(time.perf_counter() - start)
    med = statistics.median(times)
    print(f"batchtune --help: median {med * 1000:.0f} ms over {repeats} runs "
          f"(python -c pass: {statistics.median(bare) * 1000:.0f} ms); target < 300 ms: {'PASS' if med < 0.3 else 'FAIL'}")


if __name__ == "__main__":
    main()
