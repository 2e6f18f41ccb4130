"""Does the gradient noise scale predict the critical batch size? (issue 6, validation)

For each task: measure steps to a target validation loss (the quantity of McCandlish et al.'s model;
it is also smoother than accuracy, which jumps) at several batch sizes, median of 3 seeds, each with
its best learning rate (a sweep in factors of 3 around the LR scaled from a reference batch, linearly for SGD, Goyal et al.
2017, by the square root for Adam-type, Malladi et al. 2022, extended until the best is inside it);
fit S(B) = S_min (1 + B_crit / B) (McCandlish et al. 2018, eq. 2.11, which is
(S/S_min - 1)(E/E_min - 1) = 1 with E = B S and B_crit = E_min / S_min); and compare B_crit with
B_simple, and B_noise = tr(H Sigma)/(G^T H G) with the Hessian (`curvature`, as `batchtune noise
--curvature`; skip it with --no-curvature), measured by batchtune.noise.measure (`until_loss`, as `batchtune noise
--burst-until-loss`) on a model trained at the smallest batch, with its best LR, until its validation
loss reaches the target: the median over 3 seeds. The prediction should land within a factor of 2.

BatchNorm breaks the estimator's assumption that per-sample gradients are independent (a sample's
gradient depends on its batch mates), so the BatchNorm task is measured both ways: as in training
(batch statistics; `batchtune noise` warns) and with `--batchnorm-stats running` (precise running
statistics, frozen while measuring).

Run:  PYTHONPATH=. python benchmarks/noise_vs_steps.py [--quick] [--metric accuracy] [--tasks digits_mlp_group,...]
(about 11 minutes on 2 CPU cores; 7.5 with --no-curvature)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import numpy as np
import torch
from torch.utils.data import Subset

from batchtune.noise.measure import measure_gradient_noise
from batchtune.task.contract import load_task, make_dataset, optimizer_family
from batchtune.trial.train import TrialSpec, run_trial

SIZES = (8, 16, 32, 64, 128, 256)
MAX_LRS = 5  # learning rates tried per batch size, at most
TASKS = {
    # lr_ref at batch ref: the centre of each batch size's sweep, scaled by the task's LR rule.
    "digits_mlp_group": {
        "path": "examples/digits_mlp.py", "norm": "group", "target": 0.15, "accuracy": 0.97, "lr_ref": 0.03, "ref": 64,
        "max_samples": 40_000, "bn_stats": ("batch",),
    },
    "digits_mlp_batch": {
        "path": "examples/digits_mlp.py", "norm": "batch", "target": 0.15, "accuracy": 0.97, "lr_ref": 0.03, "ref": 32,
        "max_samples": 40_000, "bn_stats": ("batch", "running"),
    },
    "tiny_transformer": {
        "path": "examples/tiny_transformer.py", "norm": "as-built", "target": 0.12, "accuracy": 0.95, "lr_ref": 1e-3, "ref": 32,
        "max_samples": 100_000, "bn_stats": ("batch",),
    },
    # A CNN on the CPU: about 3 minutes. The BatchNorm variant is not in the default run.
    "digits_cnn_group": {
        "path": "examples/digits_cnn.py", "norm": "group", "target": 0.15, "accuracy": 0.97, "lr_ref": 0.1, "ref": 64,
        "max_samples": 40_000, "bn_stats": ("batch",),
    },
    "digits_cnn_batch": {
        "path": "examples/digits_cnn.py", "norm": "batch", "target": 0.15, "accuracy": 0.97, "lr_ref": 0.1, "ref": 64,
        "max_samples": 40_000, "bn_stats": ("batch", "running"),
    },
}
DEFAULT_TASKS = "digits_mlp_group,digits_mlp_batch,tiny_transformer,digits_cnn_group"
B_SMALL, B_BIG = 8, 128  # the noise measurement's two batch sizes
WHY = {
    "batch": "BatchNorm in train mode: per-sample gradients depend on the batch (batchtune noise warns)",
    "running": "frozen statistics leave out the noise that batch statistics add in training",
}


def loss_as_metric(task):
    """The task with its metric replaced by minus the loss, so the trial's reports carry the validation loss."""
    return dataclasses.replace(task, metric=lambda output, target: -float(task.loss_fn(output, target)))


def steps_to_target(task, train, val, b, lr, norm, target, max_samples, max_steps=None, seed=0):
    """Optimizer steps until the validation metric first reaches ``target`` (None: not within budget).

    Under :func:`loss_as_metric` the metric is minus the loss and ``target`` minus the target loss.

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


def best_lr(run, centre):
    """The LR with the fewest steps to target: factors of 3 around ``centre``, extended while the best is at an edge."""
    tried = {}

    def attempt(lr):
        best = min((s for s in tried.values() if s is not None), default=None)
        tried[lr] = run(lr, best)

    for lr in (centre, centre * 3, centre / 3):
        attempt(lr)
    while len(tried) < MAX_LRS:
        reached = {lr: s for lr, s in tried.items() if s is not None}
        if not reached:
            break
        lr = min(reached, key=lambda k: (reached[k], k))
        if lr == max(tried):
            attempt(lr * 3)
        elif lr == min(tried):
            attempt(lr / 3)
        else:
            break
    reached = {lr: s for lr, s in tried.items() if s is not None}
    if not reached:
        return None, len(tried)
    lr = min(reached, key=lambda k: (reached[k], k))
    return (reached[lr], lr), len(tried)


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


def median_steps(run, lr, first, seeds):
    """Median steps to target over ``seeds`` seeds at one LR (seed 0 already ran); None if most miss."""
    steps = [first] + [run(lr, 3 * first, seed) for seed in range(1, seeds)]
    if sum(s is not None for s in steps) * 2 <= len(steps):
        return None, steps
    return statistics.median(math.inf if s is None else s for s in steps), steps  # a miss is slower than any hit


def run_task(name, cfg, quick, seeds, by_loss, curvature):
    torch.set_num_threads(1)
    task = loss_as_metric(load_task(cfg["path"])) if by_loss else load_task(cfg["path"])
    target = -cfg["target"] if by_loss else cfg["accuracy"]
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    # Evaluating often is most of the cost: 512 validation samples resolve the target well enough.
    val = Subset(val, range(min(512, len(val))))
    sizes = SIZES[::2] if quick else SIZES
    power = 1.0 if optimizer_family(task) == "sgd" else 0.5  # linear (SGD) or square-root (Adam) LR scaling
    rows = []
    t0 = time.perf_counter()
    for b in sizes:
        centre = cfg["lr_ref"] * (b / cfg["ref"]) ** power

        def run(lr, cap, seed=0, b=b):
            return steps_to_target(task, train, val, b, lr, cfg["norm"], target, cfg["max_samples"], cap, seed)

        best, tried = best_lr(run, centre)
        if best is None:
            rows.append((b, None))
            print(f"  {name}: batch {b:>4}: target not reached", flush=True)
            continue
        median, per_seed = median_steps(run, best[1], best[0], seeds)
        rows.append((b, (median, best[1], per_seed) if median is not None else None))
        print(f"  {name}: batch {b:>4}: {median} steps to target, median of seeds {per_seed} (lr {best[1]:.3g}, "
              f"best of {tried} on seed 0)", flush=True)
    reached = [(b, r) for b, r in rows if r is not None]
    s_min, b_crit = fit_critical([b for b, _ in reached], [r[0] for _, r in reached]) if len(reached) >= 3 else (None, None)
    per_seed_fits = []  # B_crit fitted to each seed's steps alone: how far the seeds spread
    for i in range(seeds):
        pts = [(b, r[2][i]) for b, r in reached if r[2][i] is not None]
        per_seed_fits.append(fit_critical(*zip(*pts))[1] if len(pts) >= 3 else None)
    first_b = min(b for b, _ in reached) if reached else B_SMALL
    first = dict(reached).get(first_b)
    # The burst trains at B_SMALL with the smallest batch's best LR, rescaled, and stops where the validation
    # loss (or accuracy) reaches the target, so B_simple is measured at the point B_crit is measured for
    # (B_simple grows fast near it); it may train up to 3 times the samples the smallest batch needed.
    needed = (first[0] * first_b / len(train)) if first else 1.0
    lr = (first[1] if first else cfg["lr_ref"]) * (B_SMALL / first_b) ** power
    noise = {}
    for stats in cfg["bn_stats"]:
        noise[stats] = [
            measure_gradient_noise(
                task_path=cfg["path"], norm=None if cfg["norm"] == "as-built" else cfg["norm"], lr=lr, b_small=B_SMALL,
                b_big=B_BIG, steps=40, burst_epochs=3 * needed, device="cpu", seed=seed, threads=1, bn_stats=stats,
                until_loss=cfg["target"] if by_loss else None, until_metric=None if by_loss else cfg["accuracy"],
                # The BatchNorm task's batch statistics leave |G|^2 unresolved: B_noise only with running statistics.
                curvature=curvature and (stats == "running" or len(cfg["bn_stats"]) == 1),
            )
            for seed in range(seeds)
        ]
    return rows, s_min, b_crit, per_seed_fits, noise, time.perf_counter() - t0


def _g(v):
    return f"{v:.3g}" if v is not None and math.isfinite(v) else "unbounded"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every other batch size")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the steps-to-target runs (median)")
    parser.add_argument("--target", type=float, default=None, help="one target (loss or accuracy) for every task")
    parser.add_argument("--no-curvature", action="store_true",
                        help="skip B_noise with the Hessian (batchtune noise --curvature), the slower half of the measurement")
    parser.add_argument("--metric", choices=("loss", "accuracy"), default="loss",
                        help="steps to a validation loss (default) or to a validation accuracy")
    args = parser.parse_args()
    start = time.perf_counter()
    summary = []
    for name in args.tasks.split(","):
        key = "target" if args.metric == "loss" else "accuracy"
        cfg = TASKS[name] if args.target is None else {**TASKS[name], key: args.target}
        rows, s_min, b_crit, seed_fits, noise, seconds = run_task(
            name, cfg, args.quick, args.seeds, args.metric == "loss", not args.no_curvature
        )
        what = f"validation loss {cfg['target']}" if args.metric == "loss" else f"validation accuracy {cfg['accuracy']}"
        print(f"\n{name} ({cfg['path']}, norm {cfg['norm']}, target: {what}, {seconds:.0f} s)")
        print(f"  {'batch':>6} {'steps S':>8} {'samples E':>10} {'best lr':>8}  (S/S_min-1)(E/E_min-1)")
        for b, r in rows:
            if r is None:
                print(f"  {b:>6} {'-':>8}")
                continue
            s = r[0]
            check = f"{(s / s_min - 1) * (s * b / (s_min * b_crit) - 1):.2f}" if s_min else ""
            print(f"  {b:>6} {s:>8g} {s * b:>10g} {r[1]:>8.3g}  {check}")
        print(f"  fit: S_min {s_min:.3g} steps, B_crit = E_min/S_min = {b_crit:.3g}" if b_crit else "  fit: failed")
        print(f"  B_crit fitted to each seed alone: {', '.join(_g(v) if v else 'failed' for v in seed_fits)}")
        for stats, results in noise.items():
            ends = [r.phases[-1] for r in results]
            how = f"BatchNorm {stats} statistics" if results[0].batchnorm_layers else "no BatchNorm"
            print(f"  burst at batch {results[0].b_small}, lr {results[0].lr:.3g} ({how}):")
            estimators = [("B_simple", lambda p: p.estimate)]
            if ends[0].curvature is not None:
                estimators.append(("B_noise", lambda p: p.curvature))
            for label, pick in estimators:
                for seed, (r, p) in enumerate(zip(results, ends)):
                    e = pick(p)
                    print(f"    {label} seed {seed}: at initialisation {_g(pick(r.phases[0]).b_simple)}; {p.label}: "
                          f"{_g(e.b_simple) if e.b_simple else 'not resolved'} (95% band {_g(e.low)} to {_g(e.high)})")
                values = [pick(p).b_simple for p in ends]
                resolved = sorted(v for v in values if v)
                # The median over seeds, an unresolved seed counting as larger than any value; None if most are unresolved.
                pred = statistics.median([math.inf if v is None else v for v in values]) if len(resolved) * 2 > len(values) else None
                pred = pred if pred is not None and math.isfinite(pred) else None
                ratio = pred / b_crit if (pred and b_crit) else None
                verdict = ("yes" if 0.5 <= ratio <= 2 else "no") if ratio else "no (not resolved)"
                why = WHY[stats] if results[0].batchnorm_layers else ("" if verdict == "yes" else "see docs/noise.md")
                span = f"{_g(resolved[0])} to {_g(resolved[-1])}" if resolved else "-"
                if resolved and len(resolved) < len(values):
                    span += f"; {len(values) - len(resolved)} seed(s) not resolved"
                reached = sum(bool(p.reached) for p in ends) if ends[0].until is not None else None
                summary.append((name, how, label, b_crit, seed_fits, pred, span, reached, len(ends), ratio, verdict, why))
    print("\n| task | measured with | estimate | B_crit (fit of median steps; per seed) | at target (median of seeds; "
          "seeds' range) | ratio | within 2x | why not |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for name, how, label, b_crit, seed_fits, pred, span, reached, n, ratio, verdict, why in summary:
        fits = ", ".join(_g(v) if v else "failed" for v in seed_fits)
        where = f"; {reached}/{n} bursts reached the target" if reached is not None and reached < n else ""
        pred_s = f"{_g(pred)} ({span}{where})" if pred else f"not resolved ({span}{where})"
        print(f"| {name} | {how} | {label} | {_g(b_crit)} ({fits}) | {pred_s} | {f'{ratio:.2f}' if ratio else '-'} | {verdict} | "
              f"{why if verdict != 'yes' else ''} |")
    print(f"\n({time.perf_counter() - start:.0f} s, CPU, 1 thread)")


if __name__ == "__main__":
    main()
