"""A full probe of examples/digits_cnn.py (4 normalizations, fp32) on the CPU: wall time (target: under 60 s).

Prints the wall time, the CPU time the measuring worker used, the load average before and after (the
machine may be shared), and the per-curve summary. Needs scikit-learn.

Run: PYTHONPATH=. python benchmarks/probe_digits.py [--threads N] [--time-cap S]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from tabulate import tabulate

from batchtune.probing.measure import ProbeConfig, probe
from batchtune.probing.report import summary_rows, terminal_table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-cap", type=float, default=0.5)
    parser.add_argument("--table", action="store_true", help="also print every measured size")
    args = parser.parse_args()
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = probe(ProbeConfig(task_path=str(EXAMPLE), threads=args.threads, time_cap=args.time_cap))
    wall = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    sizes = sum(c.measured_sizes for c in result.curves)
    print(tabulate(summary_rows(result), headers="keys", tablefmt="github"))
    if args.table:
        print(terminal_table(result))
    print(
        f"\ndigits_cnn probe: {len(result.curves)} curves, {sizes} sizes measured, wall {wall:.1f} s "
        f"(target < 60 s); worker CPU {children.ru_utime + children.ru_stime:.1f} s, coordinator CPU "
        f"{own.ru_utime + own.ru_stime:.1f} s; threads {args.threads}, time cap {args.time_cap:g} s per size; "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
