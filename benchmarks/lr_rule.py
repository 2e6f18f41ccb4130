"""Does sampling a base LR and scaling it by batch size find a good configuration in fewer trials?

On examples/digits_cnn.py, for several seeds, runs the same search (batch size and LR; one norm,
so that only the LR-batch interaction is in play) twice: with the optimizer's LR rule (SGD: linear,
Goyal et al. 2017) and with ``--lr-rule none``. Each run is scored by the number of trials it
needed to come within 1% (relative) of the best validation accuracy of the reference pool; a run that
never gets there is shown as ">N".

The reference pool of a seed is the union of all trials of both runs with that seed. The seed also
fixes every trial's model initialisation and data order, and a lucky initialisation can lift every
configuration of that seed, so a pool across seeds would score runs by
their seed's luck rather than by their search; within a seed, trials differ only in configuration.

Both searches can reach the same learning rates: with the rule, the base LR lies in
[lr_min, lr_max] at the reference batch 256, so the actual LR at batch B lies in that range times
B/256; without it, the LR range is the union of those ranges over the searched batch sizes. The
search without the rule therefore contains every configuration the rule can reach, and more.

Run:  PYTHONPATH=. python benchmarks/lr_rule.py            (about 6 minutes on 1 CPU thread)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchtune.api import search  # noqa: E402

SIZES = (16, 512)  # batch-size range searched
REFERENCE = 256  # the rule's reference batch (256 lies inside SIZES)
RULES = ("auto", "none")  # auto is linear: the digits task uses the default SGD


def run(task: Path, out: Path, *, name: str, rule: str, seed: int, trials: int, epochs: float,
        lr: tuple[float, float]) -> list[float]:
    """Validation metric of each trial, in trial order (failed trials count as -inf)."""
    if rule == "none":
        # The union over batch sizes of the LRs the rule can reach (see the module docstring).
        lr = (lr[0] * SIZES[0] / REFERENCE, lr[1] * SIZES[1] / REFERENCE)
    result = search(
        task,
        study=name,
        trials=trials,
        seed=seed,
        lr_rule=rule,
        lr_reference_batch=REFERENCE,
        lr_min=lr[0],
        lr_max=lr[1],
        epochs=epochs,
        norms=("group",),
        batch_size_min=SIZES[0],
        batch_size_max=SIZES[1],
        threads=1,
        plots=False,
        output_dir=str(out / "reports"),
        studies_dir=str(out / "studies"),
    )
    frame = result.trials.sort_values("trial")
    ok = frame["status"] == "ok"
    return [float(m) if good and np.isfinite(m) else -np.inf for m, good in zip(frame["metric"], ok)]


def trials_to(metrics: list[float], threshold: float) -> int | None:
    best = -np.inf
    for i, m in enumerate(metrics, start=1):
        best = max(best, m)
        if best >= threshold:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=18, help="trials per run")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=1.0, help="training budget per trial")
    parser.add_argument("--lr-min", type=float, default=1e-3, help="base LR range at batch 256 under the rule")
    parser.add_argument("--lr-max", type=float, default=1.0)
    parser.add_argument("--within", type=float, default=0.01, help="relative distance from the best")
    args = parser.parse_args()
    task = ROOT / "examples" / "digits_cnn.py"
    lr = (args.lr_min, args.lr_max)
    start = time.perf_counter()
    runs: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for rule in RULES:
                runs[(rule, seed)] = run(task, Path(tmp), name=f"{rule}-{seed}", rule=rule, seed=seed,
                                         trials=args.trials, epochs=args.epochs, lr=lr)
                print(f"  seed {seed} rule {rule:<4}: best {max(runs[(rule, seed)]):.4f}", file=sys.stderr)
    print(f"digits_cnn, group norm, batch {SIZES[0]}..{SIZES[1]}, {args.epochs:g} epoch(s) per trial, {args.trials} "
          f"trials per run; base lr {args.lr_min:g}..{args.lr_max:g} at batch {REFERENCE} with the rule, "
          f"lr {args.lr_min * SIZES[0] / REFERENCE:g}..{args.lr_max * SIZES[1] / REFERENCE:g} without")
    print(f"trials needed to come within {args.within:.0%} of the best accuracy of the seed's "
          f"{2 * args.trials}-trial pool (both runs)")
    print("")
    print(f"{'seed':>4}  {'pool best':>9}  {'target':>7}  {'with rule (linear)':>18}  {'without (none)':>14}"
          f"  {'best with':>9}  {'best without':>12}")
    needed: dict[str, list[int | None]] = {rule: [] for rule in RULES}
    for seed in range(args.seeds):
        pool = max(max(runs[(rule, seed)]) for rule in RULES)
        threshold = pool * (1 - args.within)
        cells = []
        for rule in RULES:
            n = trials_to(runs[(rule, seed)], threshold)
            needed[rule].append(n)
            cells.append(f"{n}" if n is not None else f">{args.trials}")
        print(f"{seed:>4}  {pool:>9.4f}  {threshold:>7.4f}  {cells[0]:>18}  {cells[1]:>14}  "
              f"{max(runs[('auto', seed)]):>9.4f}  {max(runs[('none', seed)]):>12.4f}")
    print("")
    for rule, label in zip(RULES, ("with rule (linear)", "without (none)")):
        hits = [n for n in needed[rule] if n is not None]
        # Runs that never got there count as trials + 1: a lower bound on what they would have needed.
        censored = [n if n is not None else args.trials + 1 for n in needed[rule]]
        print(f"{label:<20} reached in {len(hits)}/{args.seeds} runs; trials needed: median "
              f"{statistics.median(censored):g}, mean {statistics.mean(censored):.1f} (misses counted as "
              f"{args.trials + 1})")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
