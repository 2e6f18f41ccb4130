"""BatchNorm against GroupNorm at small batches on the digits CNN (Wu and He 2018), and what a search says.

Part 1: validation accuracy by batch size (2, 4, 8, 32) for both norms and several seeds, each
(batch, norm) at the best learning rate of a small sweep (the base LR is scaled linearly with the
batch, Goyal et al. 2017), a fixed budget of epochs.
Part 2: the mechanism. A BatchNorm model trained at batch B normalizes with the statistics of B
samples in training and with running averages in evaluation. We measure how far the running
statistics are from the population statistics of the same model, and the accuracy gained by
recomputing them precisely (PreciseBN, Wu and Johnson 2021): both grow as the batch shrinks.
Part 3: `batchtune search examples/digits_cnn.py --batch-sizes 2,4 --norms batch,group` and the norm it
recommends.

Run:  PYTHONPATH=. python benchmarks/bn_collapse.py [--seeds 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from batchtune.task import build_model, build_optimizer, load_task, make_dataset
from batchtune.train import (
    TrialSpec,
    evaluate,
    run_trial,
    seed_everything,
    train_batches,
)

TASK = "examples/digits_cnn.py"
SIZES = (2, 4, 8, 32)
NORMS = ("batch", "group")
BASE_LR = 0.1  # at batch 32, SGD with momentum 0.9 (the task's optimizer)
LR_FACTORS = (0.5, 1.0, 2.0)


def part1(task, train, val, seeds, epochs):
    print(f"Part 1: validation accuracy after {epochs:g} epochs (mean +- sd over {seeds} seeds; LR tuned on seed 0)")
    table = {}
    for b in SIZES:
        for norm in NORMS:
            scores = {}
            for f in LR_FACTORS:
                lr = BASE_LR * b / 32 * f
                r = run_trial(task, TrialSpec(batch_size=b, lr=lr, norm=norm, seed=0, epochs=epochs, threads=1,
                                              eval_every=epochs), train, val)
                scores[lr] = r.final_metric if r.ok and r.final_metric is not None else float("nan")
            lr = max(scores, key=lambda k: -1 if scores[k] != scores[k] else scores[k])
            accs = [scores[lr]]
            for seed in range(1, seeds):
                r = run_trial(task, TrialSpec(batch_size=b, lr=lr, norm=norm, seed=seed, epochs=epochs, threads=1,
                                              eval_every=epochs), train, val)
                accs.append(r.final_metric if r.ok and r.final_metric is not None else float("nan"))
            table[(b, norm)] = (accs, lr)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"  batch {b:>3} {norm:<6} lr {lr:<8.4g} accuracy {statistics.mean(accs):.4f} +- {sd:.4f}  "
                  f"({', '.join(f'{a:.3f}' for a in accs)})", flush=True)
    print("\n  batch | " + " | ".join(f"{n:>13}" for n in NORMS) + " | batch - group")
    for b in SIZES:
        means = [statistics.mean(table[(b, n)][0]) for n in NORMS]
        print(f"  {b:>5} | " + " | ".join(f"{m:>13.4f}" for m in means) + f" | {means[0] - means[1]:+.4f}")
    return table


def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def part2(task, train, val, table, epochs):
    print("\nPart 2: BatchNorm's eval-mode running statistics against the population statistics (seed 0)")
    print("  batch | accuracy (running stats) | accuracy (precise stats) | gain | running-var rel. error | train-mode val acc at that batch")
    for b in SIZES:
        lr = table[(b, "batch")][1]
        seed_everything(0)
        model = build_model(task, "batch")
        opt = build_optimizer(task, model, lr)
        steps = round(epochs * (len(train) // b))
        model.train()
        for _, (x, y) in zip(range(steps), train_batches(train, b, torch.Generator().manual_seed(0), pin=False)):
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(x), y).backward()
            opt.step()
        spec = TrialSpec(batch_size=256, lr=lr, norm="batch")
        acc_running, _ = evaluate(task, model, val, spec, torch.device("cpu"))
        running = [(m.running_mean.clone(), m.running_var.clone()) for m in _bn_layers(model)]
        # Precise statistics: cumulative averages over the whole training set (momentum=None), in train mode.
        for m in _bn_layers(model):
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            x_all = train.tensors[0]
            for start in range(0, len(x_all), 256):
                model(x_all[start:start + 256])
        errors = []
        for m, (mean, var) in zip(_bn_layers(model), running):
            errors.append(((var - m.running_var).abs() / m.running_var.clamp_min(1e-8)).median().item())
        acc_precise, _ = evaluate(task, model, val, spec, torch.device("cpu"))
        # Train-mode evaluation at the training batch size: the normalization the model learned with.
        for m in _bn_layers(model):
            m.train()
        correct = 0
        with torch.no_grad():
            xv, yv = val.tensors
            perm = torch.randperm(len(yv), generator=torch.Generator().manual_seed(1))
            for start in range(0, len(yv) - b + 1, b):
                idx = perm[start:start + b]
                correct += (model(xv[idx]).argmax(1) == yv[idx]).sum().item()
            train_mode = correct / (len(yv) // b * b)
        print(f"  {b:>5} | {acc_running:>24.4f} | {acc_precise:>24.4f} | {acc_precise - acc_running:+.4f} | "
              f"{statistics.mean(errors):>22.1%} | {train_mode:.4f}", flush=True)


def part3(trials, epochs):
    from batchtune.api import search

    print(f"\nPart 3: batchtune search {TASK} --batch-sizes 2,4 --norms batch,group --trials {trials} --epochs {epochs:g}")
    with tempfile.TemporaryDirectory() as tmp:
        result = search(
            TASK, trials=trials, batch_sizes=(2, 4), norms=("batch", "group"), epochs=epochs, lr_min=0.003,
            lr_max=0.05, threads=1, seed=0, storage=f"sqlite:///{Path(tmp) / 'bn.db'}", output_dir=tmp,
            plots=False, study="bn_collapse", device="cpu",
        )
        frame = result.trials[result.trials["status"] == "ok"]
        for norm, group in frame.groupby("norm"):
            print(f"  {norm:<6} trials {len(group)}  best accuracy {group['metric'].max():.4f}  "
                  f"median {group['metric'].median():.4f}")
        rec = result.recommendation
        if rec is None:
            print("  no recommendation")
        else:
            p = rec.params
            print(f"  recommended: batch {p['batch_size']}, lr {p['lr']:.3g}, {p['norm']} norm (accuracy {rec.metric:.4f})")
            print(f"  {rec.reason}")
        doctor = result.summary.get("doctor") or {}
        for f in doctor.get("findings", []):
            if f["check"].startswith("batchnorm"):
                print(f"  batch doctor ({f['severity']}): {f['message']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    task = load_task(TASK)
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    table = part1(task, train, val, args.seeds, args.epochs)
    part2(task, train, val, table, args.epochs)
    part3(args.trials, 1.0)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
