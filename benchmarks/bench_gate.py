"""Does the CI gate survive a noisy machine? False alarms on unchanged code, detection of a slowdown.

Each of ``--pairs`` rounds measures a baseline, then the unchanged task again (an A/A comparison:
any failure is a false alarm), then the task with ``BATCHTUNE_TEST_SLOWDOWN`` set (every training
step takes ``--slowdown`` more CPU time: a failure is a detection). All at batchtune bench's default
settings unless flags say otherwise. Prints the false-alarm and detection counts, the time one
comparison (``bench --compare``: measure, then decide) takes, and the machine's load average (the
1-minute load of a 2-core machine shows how much other jobs competed) at the start and the end.

    PYTHONPATH=. python benchmarks/bench_gate.py            # 10 rounds on benchmarks/digits_slowable.py
    PYTHONPATH=. python benchmarks/bench_gate.py --mode interleaved
    PYTHONPATH=. python benchmarks/bench_gate.py --pairs 3 --task tests/tasks/slowable_mlp.py --batch-size 32
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path

from batchtune.gate.baseline import save_run
from batchtune.gate.decision import EXIT_REGRESSION, Thresholds, decide
from batchtune.gate.measure import BenchConfig, run_bench, run_interleaved

HERE = Path(__file__).resolve().parent
KNOB = "BATCHTUNE_TEST_SLOWDOWN"


def measure(config: BenchConfig, slowdown: float) -> tuple[object, float]:
    os.environ[KNOB] = str(slowdown)  # the worker processes inherit it and the task file reads it
    start = time.perf_counter()
    run = run_bench(config)
    return run, time.perf_counter() - start


def main() -> None:
    defaults = {f.name: f.default for f in fields(BenchConfig)}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=str(HERE / "digits_slowable.py"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--slowdown", type=float, default=0.15)
    parser.add_argument("--repeat", type=int, default=defaults["repeat"])
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--processes", type=int, default=defaults["processes"])
    parser.add_argument("--clock", default=defaults["clock"])
    parser.add_argument("--mode", choices=("file", "interleaved"), default="file",
                        help="file: bench --compare a baseline measured before; interleaved: bench --against-env, both measured together.")
    parser.add_argument("--keep", default=None, help="Folder to save every run in (re-decide later with `batchtune compare`).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the per-run "noisy measurement" warnings are summarised below
    config = BenchConfig(
        task_path=args.task, batch_size=args.batch_size, repeat=args.repeat, steps=args.steps,
        processes=args.processes, clock=args.clock,
    ).validated()
    th = Thresholds()
    print(f"load average {_load()}, {os.cpu_count()} CPUs", flush=True)
    print(f"mode {args.mode}: task {args.task}, batch {args.batch_size}, repeat {config.repeat}, steps {config.steps}, "
          f"processes {config.processes}, clock {config.clock}, threads {config.threads}; "
          f"threshold +{th.max_slowdown:.0%}, injected slowdown +{args.slowdown:.0%}", flush=True)
    false_alarms = detections = 0
    seconds: list[float] = []
    aa_ratios: list[float] = []
    label = "step time"
    ab_ratios: list[float] = []
    os.environ[KNOB] = "0"
    quick = replace(config, env=((KNOB, "0"),))
    slowed = replace(config, env=((KNOB, str(args.slowdown)),))
    for i in range(args.pairs):
        if args.mode == "interleaved":
            start = time.perf_counter()
            base, same = run_interleaved(quick, quick)
            t_same = time.perf_counter() - start
            start = time.perf_counter()
            base_b, slow = run_interleaved(slowed, quick)
            t_slow = time.perf_counter() - start
        else:
            base, _ = measure(config, 0.0)
            same, t_same = measure(config, 0.0)
            slow, t_slow = measure(config, args.slowdown)
            base_b = base
        if args.keep:
            for name, r in (("base", base), ("same", same), ("base_b", base_b), ("slow", slow)):
                save_run(r, Path(args.keep) / f"round{i + 1:02d}-{name}.json")
        t0 = time.perf_counter()
        aa = decide(base, same, th)
        ab = decide(base_b, slow, th)
        t_decide = (time.perf_counter() - t0) / 2
        seconds += [t_same + t_decide, t_slow + t_decide]
        false_alarms += aa.exit_code == EXIT_REGRESSION
        detections += ab.exit_code == EXIT_REGRESSION
        ra, rb = aa.rows[0].values, ab.rows[0].values
        label = aa.rows[0].threshold.split(" <=")[0]  # e.g. "median step time / reference"
        aa_ratios.append(ra["step_time_ratio"])
        ab_ratios.append(rb["step_time_ratio"])
        print(
            f"round {i + 1:>2}: A/A {ra['step_time_ratio'] - 1:+6.1%} "
            f"[{ra['ci_low'] - 1:+.1%}, {ra['ci_high'] - 1:+.1%}] -> {ra['decision']:<10} | "
            f"slowed {rb['step_time_ratio'] - 1:+6.1%} [{rb['ci_low'] - 1:+.1%}, {rb['ci_high'] - 1:+.1%}] "
            f"-> {rb['decision']:<10} | IQR {base.step_time.rel_iqr:.0%} | core share {base.cpu_share:.0%}/"
            f"{same.cpu_share:.0%}/{slow.cpu_share:.0%} | {t_same:.1f} s",
            flush=True,
        )
    print()
    print(f"false alarms (A/A, unchanged code): {false_alarms}/{args.pairs}")
    print(f"detections (+{args.slowdown:.0%} step time):    {detections}/{args.pairs}")
    print(f"A/A change of {label}: median {statistics.median(aa_ratios) - 1:+.1%}, "
          f"range {min(aa_ratios) - 1:+.1%} .. {max(aa_ratios) - 1:+.1%}")
    print(f"slowed change of {label}: median {statistics.median(ab_ratios) - 1:+.1%}, "
          f"range {min(ab_ratios) - 1:+.1%} .. {max(ab_ratios) - 1:+.1%}")
    print(f"one comparison (measure + decide): median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s")
    print(f"load average {_load()}")


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


if __name__ == "__main__":
    main()
