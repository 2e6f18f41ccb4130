"""Does the gradient noise scale predict the critical batch size? (issue 6, validation)

For each task: measure steps-to-target at several batch sizes, each with the best learning rate of a
small sweep; fit S(B) = S_min (1 + B_crit / B) (McCandlish et al. 2018, eq. 2.11, which is
(S/S_min - 1)(E/E_min - 1) = 1 with E = B S and B_crit = E_min / S_min); and compare B_crit with
B_simple measured by batchtune.noise on a model trained (at the smallest batch, with its best LR)
to the target. The prediction should land within a factor of 2.

Run:  PYTHONPATH=. python benchmarks/noise_vs_steps.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch.utils.data import Subset

from batchtune.noise import measure_gradient_noise
from batchtune.task import load_task, make_dataset, optimizer_family
from batchtune.train import TrialSpec, run_trial

TASKS = {
    "digits_cnn": {
        "path": "examples/digits_cnn.py",
        "norm": "batch",
        "target": 0.95,  # validation accuracy
        "sizes": (8, 16, 32, 64, 128, 256),
        "lrs": (0.01, 0.03, 0.1, 0.3),
        "max_samples": 40_000,
        "noise": (8, 128),
    },
    # The same CNN with GroupNorm: per-sample gradients no longer depend on the rest of the batch, as
    # the estimator assumes (not in the default run; select with --tasks digits_cnn_group).
    "digits_cnn_group": {
        "path": "examples/digits_cnn.py",
        "norm": "group",
        "target": 0.95,
        "sizes": (8, 16, 32, 64, 128, 256),
        "lrs": (0.01, 0.03, 0.1, 0.3),
        "max_samples": 40_000,
        "noise": (8, 128),
    },
    "tiny_transformer": {
        "path": "examples/tiny_transformer.py",
        "norm": "as-built",
        "target": 0.95,
        "sizes": (8, 16, 32, 64, 128, 256),
        "lrs": (3e-4, 1e-3, 3e-3),
        "max_samples": 100_000,
        "noise": (8, 128),
    },
}


def steps_to_target(task, train, val, b, lr, norm, target, max_samples, max_steps=None, seed=0):
    """Optimizer steps until the validation metric first reaches ``target`` (None: not within budget).

    ``max_steps`` stops a run once it cannot beat the best learning rate found so far.
    """
    steps_per_epoch = len(train) // b
    eval_steps = max(1, min(4, round(64 / b)))  # steps to target are resolved to 4 steps or better
    spec = TrialSpec(
        batch_size=b, lr=lr, norm=norm, seed=seed, epochs=None, budget_samples=max_samples,
        eval_every=eval_steps / steps_per_epoch, threads=1, warmup_steps=0, max_steps=max_steps,
    )
    hit = {}

    def report(step, value):
        if value >= target:
            hit["step"] = step
            return True
        return False

    result = run_trial(task, spec, train, val, report=report)
    if result.status not in ("ok", "pruned"):
        return None
    return hit.get("step")


def fit_critical(sizes, steps):
    """Weighted least squares of S = S_min + S_min B_crit / B (relative errors: weights 1/S)."""
    b = np.asarray(sizes, float)
    s = np.asarray(steps, float)
    design = np.column_stack([np.ones_like(b), 1.0 / b]) / s[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
    s_min, c = coef
    if s_min <= 0 or c <= 0:
        return None, None
    return float(s_min), float(c / s_min)


def run_task(name, cfg, quick):
    torch.set_num_threads(1)
    task = load_task(cfg["path"])
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    # Evaluating often is most of the cost: 512 validation samples resolve a 0.95 target well enough.
    val = Subset(val, range(min(512, len(val))))
    sizes = cfg["sizes"][::2] if quick else cfg["sizes"]
    lrs = cfg["lrs"]
    rows = []
    t0 = time.perf_counter()
    for b in sizes:
        best = None
        # The middle of the grid first: it usually wins, and its steps cap the others.
        order = sorted(lrs, key=lambda v: abs(math.log(v) - math.log(lrs[len(lrs) // 2])))
        for lr in order:
            cap = best[0] if best else None
            s = steps_to_target(task, train, val, b, lr, cfg["norm"], cfg["target"], cfg["max_samples"], cap)
            if s is not None and (best is None or s < best[0]):
                best = (s, lr)
        rows.append((b, best))
        print(f"  {name}: batch {b:>4}: " + (f"{best[0]:>5} steps to target (lr {best[1]:g})" if best else "target not reached"), flush=True)
    reached = [(b, r) for b, r in rows if r is not None]
    s_min, b_crit = fit_critical([b for b, _ in reached], [r[0] for _, r in reached]) if len(reached) >= 3 else (None, None)
    b_small, b_big = cfg["noise"]
    first = dict(reached).get(min(b for b, _ in reached)) if reached else None
    burst_b = min(b for b, _ in reached) if reached else b_small
    burst_epochs = (first[0] * burst_b / len(train)) if first else 1.0
    lr = first[1] if first else lrs[len(lrs) // 2]
    # The burst trains at b_small: rescale the epochs so it takes the samples the fastest small batch needed.
    power = 1.0 if optimizer_family(task) == "sgd" else 0.5  # linear (SGD) or square-root (Adam) LR scaling
    noise = measure_gradient_noise(
        task_path=cfg["path"], norm=None if cfg["norm"] == "as-built" else cfg["norm"], lr=lr * (b_small / burst_b) ** power,
        b_small=b_small, b_big=b_big, steps=40, burst_epochs=burst_epochs, device="cpu", seed=0, threads=1,
    )
    return rows, s_min, b_crit, noise, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every other batch size")
    parser.add_argument("--tasks", default="digits_cnn,tiny_transformer", help=f"comma-separated, from {', '.join(TASKS)}")
    args = parser.parse_args()
    summary = []
    for name in args.tasks.split(","):
        cfg = TASKS[name]
        rows, s_min, b_crit, noise, seconds = run_task(name, cfg, args.quick)
        init, end = noise.phases[0].estimate, noise.phases[-1].estimate
        print(f"\n{name} (target {cfg['target']}, {seconds:.0f} s)")
        print(f"  {'batch':>6} {'steps S':>8} {'samples E':>10} {'best lr':>8}  (S/S_min-1)(E/E_min-1)")
        for b, r in rows:
            if r is None:
                print(f"  {b:>6} {'-':>8}")
                continue
            s = r[0]
            check = ""
            if s_min:
                e_min = s_min * b_crit
                check = f"{(s / s_min - 1) * (s * b / e_min - 1):.2f}"
            print(f"  {b:>6} {s:>8} {s * b:>10} {r[1]:>8g}  {check}")
        pred = end.b_simple
        print(f"  fit: S_min {s_min:.3g} steps, B_crit = E_min/S_min = {b_crit:.3g}" if b_crit else "  fit: failed")
        print(f"  B_simple at initialisation {init.b_simple:.3g} ({init.low:.3g} to {init.high:.3g}); at the target "
              f"({noise.phases[-1].label} at batch {noise.b_small}) {pred:.3g} "
              f"({end.low:.3g} to {end.high if end.high else math.inf:.3g})" if pred else "  B_simple not resolved")
        ratio = (pred / b_crit) if (pred and b_crit) else None
        verdict = ("within a factor of 2" if ratio and 0.5 <= ratio <= 2 else "outside a factor of 2") if ratio else "n/a"
        print(f"  predicted / measured critical batch: {ratio:.2f} -> {verdict}" if ratio else "  no ratio")
        summary.append((name, b_crit, pred, ratio, verdict))
    print("\nsummary")
    for name, b_crit, pred, ratio, verdict in summary:
        print(f"  {name:<18} B_crit (steps fit) {b_crit or float('nan'):8.3g}   B_simple {pred or float('nan'):8.3g}   "
              f"ratio {ratio or float('nan'):.2f}  {verdict}")


if __name__ == "__main__":
    main()
