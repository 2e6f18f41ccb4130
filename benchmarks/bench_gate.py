"""Does the CI gate see every kind of slowdown on a noisy machine, and never pass one? (issue 15)

Each of ``--comparisons`` rounds measures, at batchtune bench's default settings:

- ``file`` mode (``bench --compare FILE``): a baseline, then the unchanged task (an A/A comparison:
  a regression or "stale" verdict is a false alarm) and the task with each injected slowdown, each
  compared with that baseline;
- ``interleaved`` mode (``bench --against-env``): the unchanged task against itself, and each slowed
  task against the unchanged one, measured side by side.

The slowdowns (``benchmarks/digits_slowable.py``, switched by environment variables; the file's
bytes never change): ``compute`` (+15% CPU work per step), ``stall`` (a 15% sleep in the forward
pass: a host stall), ``data`` (a 15% sleep in the data path, collate_fn) and ``memory`` (+10% peak
memory). Every comparison prints its verdict, the speed change with its interval, the time it
took and the 1-minute load; the table of verdict counts per kind and mode is printed after every
round (so a stopped run still has one) and at the end.

    PYTHONPATH=. python benchmarks/bench_gate.py                      # 10 rounds, both modes
    PYTHONPATH=. python benchmarks/bench_gate.py --comparisons 3 --modes file --kinds stall,data
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from batchtune.gate.baseline import save_run
from batchtune.gate.decision import Thresholds, decide
from batchtune.gate.measure import BenchConfig, run_bench, run_interleaved

HERE = Path(__file__).resolve().parent
KNOB, KIND = "BATCHTUNE_TEST_SLOWDOWN", "BATCHTUNE_TEST_SLOWDOWN_KIND"
KINDS = ("compute", "stall", "data", "memory")
AMOUNT = {"compute": 0.15, "stall": 0.15, "data": 0.15, "memory": 0.10}


@dataclass(frozen=True)
class Outcome:
    mode: str
    kind: str
    status: str
    ratio: float
    low: float
    high: float
    memory: float
    seconds: float
    load: float


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--task", default=str(HERE / "digits_slowable.py"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--comparisons", type=int, default=10, help="Rounds: comparisons per kind and mode.")
    parser.add_argument("--modes", default="file,interleaved")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--keep", default=None, help="Folder to save every run in (re-decide later with `batchtune compare`).")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    kinds = [k for k in args.kinds.split(",") if k]
    if set(modes) - {"file", "interleaved"} or set(kinds) - set(KINDS):
        parser.error(f"--modes from file,interleaved; --kinds from {','.join(KINDS)}")
    logging.basicConfig(level=logging.ERROR)  # the per-run "noisy measurement" warnings are counted in the verdicts
    config = BenchConfig(task_path=args.task, batch_size=args.batch_size).validated()
    th = Thresholds()
    plain = replace(config, env=((KNOB, "0"), (KIND, "compute")))
    slowed = {k: replace(config, env=((KNOB, str(AMOUNT[k])), (KIND, k))) for k in kinds}
    print(f"{_uptime()}; {os.cpu_count()} CPUs", flush=True)
    print(f"task {args.task}, batch {args.batch_size}, repeat {config.repeat}, steps {config.steps}, warmup "
          f"{config.warmup}, processes {config.processes}, clock {config.clock}, threads {config.threads}; "
          f"threshold +{th.max_slowdown:.0%} speed, +{th.max_memory_increase:.0%} memory, {th.confidence:.0%} CI; "
          f"injected: " + ", ".join(f"{k} +{AMOUNT[k]:.0%}" for k in kinds), flush=True)
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    for i in range(args.comparisons):
        for mode in modes:
            base = None
            if mode == "file":
                base = run_bench(plain)
                _keep(args.keep, base, i, mode, "baseline")
            for kind in ["A/A", *kinds]:
                cfg = plain if kind == "A/A" else slowed[kind]
                t0 = time.perf_counter()
                if base is not None:
                    ref, cur = base, run_bench(cfg)
                else:
                    ref, cur = run_interleaved(cfg, plain)
                decision = decide(ref, cur, th)
                seconds = time.perf_counter() - t0
                _keep(args.keep, cur, i, mode, kind.replace("/", ""))
                speed = decision.rows[0].values
                memory = next(r.values["change"] for r in decision.rows if r.figure.startswith("peak memory"))
                out = Outcome(mode, kind, decision.status, speed["step_time_ratio"], speed["ci_low"], speed["ci_high"],
                              memory, seconds, os.getloadavg()[0])
                outcomes.append(out)
                print(f"round {i + 1:>2} {mode:<11} {kind:<7} -> {out.status:<12} speed {out.ratio - 1:+6.1%} "
                      f"[{out.low - 1:+.1%}, {out.high - 1:+.1%}] memory {out.memory:+.1%} | {seconds:5.1f} s | "
                      f"load {out.load:.2f}", flush=True)
        print(f"\nafter round {i + 1} ({(time.perf_counter() - started) / 60:.1f} min, {_uptime()}):")
        print(table(outcomes, modes, ["A/A", *kinds]), flush=True)


def table(outcomes: list[Outcome], modes: list[str], kinds: list[str]) -> str:
    """Verdict counts per kind and mode, the median speed change and interval, and the time per comparison."""
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[(o.kind, o.mode)].append(o)
    lines = ["| kind | mode | n | regression | inconclusive | pass | stale | speed change, median [median 99% CI] "
             "| memory change, median | s per comparison, median (max) | load (1 min), range |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in kinds:
        for mode in modes:
            g = groups.get((kind, mode), [])
            if not g:
                continue
            count = {s: sum(o.status == s for o in g) for s in ("regression", "inconclusive", "pass", "stale")}
            med = statistics.median
            lines.append(
                f"| {kind} | {mode} | {len(g)} | {count['regression']} | {count['inconclusive']} | {count['pass']} | "
                f"{count['stale']} | {med(o.ratio for o in g) - 1:+.1%} [{med(o.low for o in g) - 1:+.1%}, "
                f"{med(o.high for o in g) - 1:+.1%}] | {med(o.memory for o in g):+.1%} | "
                f"{med(o.seconds for o in g):.1f} ({max(o.seconds for o in g):.1f}) | "
                f"{min(o.load for o in g):.2f}-{max(o.load for o in g):.2f} |"
            )
    return "\n".join(lines)


def _keep(folder: str | None, run: object, i: int, mode: str, name: str) -> None:
    if folder:
        save_run(run, Path(folder) / f"round{i + 1:02d}-{mode}-{name}.json")  # type: ignore[arg-type]


def _uptime() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


if __name__ == "__main__":
    main()
