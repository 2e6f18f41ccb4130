"""BatchNorm against GroupNorm at small batches on the digits MLP (Wu and He 2018), and what a search says.

Part 1: validation accuracy by batch size (2, 3, 4, 8, 32) for both norms and several seeds, each
(batch, norm) at the best learning rate of a small sweep on seed 0 (the sweep is centred on a base LR
scaled linearly with the batch, Goyal et al. 2017), a fixed budget of epochs.
Part 2: the mechanism, on seed 0. In training, BatchNorm1d normalizes each feature over the B samples
of the batch: at B = 2 every normalized activation is exactly -1 or +1 (x - mean = +-(a - b)/2 and the
standard deviation is |a - b|/2), so the next layer learns on signs, and at evaluation the running
averages give it continuous values it never saw. We print the share of normalized activations within
0.05 of +-1 in training, the accuracy with the running statistics, with statistics recomputed over the
whole training set (PreciseBN, Wu and Johnson 2021), and in train mode at the training batch size.
Part 3: `batchtune search examples/digits_mlp.py --batch-sizes 2,3 --norms batch,group` (the sizes
below 4, where part 1 shows BatchNorm losing) and the norm it recommends.

Run:  PYTHONPATH=. python benchmarks/bn_collapse.py [--seeds 3] [--epochs 3] [--trials 12]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from batchtune.task.contract import (
    build_model,
    build_optimizer,
    load_task,
    make_dataset,
)
from batchtune.trial.train import (
    TrialSpec,
    evaluate,
    run_trial,
    seed_everything,
    train_batches,
)

TASK = "examples/digits_mlp.py"
SIZES = (2, 3, 4, 8, 32)
NORMS = ("batch", "group")
BASE_LR = 0.05  # at batch 32, SGD with momentum 0.9 (the task's default optimizer)
LR_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0)
SEARCH_SIZES = (2, 3)


def _accuracy(task, train, val, b, lr, norm, seed, epochs):
    spec = TrialSpec(batch_size=b, lr=lr, norm=norm, seed=seed, epochs=epochs, threads=1, eval_every=epochs)
    r = run_trial(task, spec, train, val)
    return r.final_metric if r.ok and r.final_metric is not None else math.nan


def part1(task, train, val, seeds, epochs):
    print(f"Part 1: validation accuracy after {epochs:g} epochs, mean +- sd over {seeds} seeds "
          f"(LR: best of {len(LR_FACTORS)} on seed 0)", flush=True)
    table = {}
    for b in SIZES:
        for norm in NORMS:
            scores = {}
            for f in LR_FACTORS:
                lr = BASE_LR * b / 32 * f
                scores[lr] = _accuracy(task, train, val, b, lr, norm, 0, epochs)
            lr = max(scores, key=lambda k: -1.0 if math.isnan(scores[k]) else scores[k])
            accs = [scores[lr]] + [_accuracy(task, train, val, b, lr, norm, s, epochs) for s in range(1, seeds)]
            table[(b, norm)] = (accs, lr)
    print("\n| batch | BatchNorm | (lr) | GroupNorm | (lr) | BatchNorm - GroupNorm |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in SIZES:
        cells, means = [], []
        for norm in NORMS:
            accs, lr = table[(b, norm)]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            means.append(statistics.mean(accs))
            cells += [f"{means[-1]:.3f} +- {sd:.3f}", f"{lr:.3g}"]
        print(f"| {b} | " + " | ".join(cells) + f" | {(means[0] - means[1]) * 100:+.1f} pp |")
    print("\nper seed:")
    for (b, norm), (accs, _) in table.items():
        print(f"  batch {b:>2} {norm:<5}: " + ", ".join(f"{a:.3f}" for a in accs))
    return table


def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def part2(task, train, val, table, epochs):
    print("\nPart 2: the mechanism, BatchNorm models of seed 0 at the LR of part 1")
    print("\n| batch | normalized activations at +-1 (train) | accuracy, running stats | precise stats | train mode at that batch |")
    print("|---:|---:|---:|---:|---:|")
    for b in SIZES:
        lr = table[(b, "batch")][1]
        seed_everything(0)
        model = build_model(task, "batch")
        opt = build_optimizer(task, model, lr)
        first = _bn_layers(model)[0]
        seen = []

        def hook(module, inputs, _output, seen=seen):
            # The normalization BatchNorm applies in training: biased batch variance (Ioffe and Szegedy 2015).
            x = inputs[0].detach()
            xhat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + module.eps)
            seen.append(((xhat.abs() - 1).abs() < 0.05).float().mean().item())

        handle = first.register_forward_hook(hook)
        steps = round(epochs * (len(train) // b))
        model.train()
        for _, (x, y) in zip(range(steps), train_batches(train, b, torch.Generator().manual_seed(0), pin=False)):
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(x), y).backward()
            opt.step()
        handle.remove()
        spec = TrialSpec(batch_size=256, lr=lr, norm="batch")
        acc_running, _ = evaluate(task, model, val, spec, torch.device("cpu"))
        # Train mode at the training batch size: the normalization the model learned with.
        model.train()
        correct = 0
        with torch.no_grad():
            xv, yv = val.tensors
            perm = torch.randperm(len(yv), generator=torch.Generator().manual_seed(1))
            for start in range(0, len(yv) - b + 1, b):
                idx = perm[start:start + b]
                correct += (model(xv[idx]).argmax(1) == yv[idx]).sum().item()
        train_mode = correct / (len(yv) // b * b)
        # Precise statistics: cumulative averages over the whole training set (momentum=None).
        for m in _bn_layers(model):
            m.reset_running_stats()
            m.momentum = None
        with torch.no_grad():
            x_all = train.tensors[0]
            for start in range(0, len(x_all), 256):
                model(x_all[start:start + 256])
        acc_precise, _ = evaluate(task, model, val, spec, torch.device("cpu"))
        print(f"| {b} | {statistics.mean(seen):.1%} | {acc_running:.3f} | {acc_precise:.3f} | {train_mode:.3f} |",
              flush=True)


def part3(trials, epochs):
    from batchtune.api import search

    sizes = ",".join(map(str, SEARCH_SIZES))
    print(f"\nPart 3: batchtune search {TASK} --batch-sizes {sizes} --norms batch,group --trials {trials} "
          f"--epochs {epochs:g} --lr-min 1e-4 --lr-max 0.01 --threads 1", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = search(
            TASK, trials=trials, batch_sizes=SEARCH_SIZES, norms=("batch", "group"), epochs=epochs, lr_min=1e-4,
            lr_max=0.01, threads=1, seed=0, storage=f"sqlite:///{Path(tmp) / 'bn.db'}", output_dir=tmp,
            plots=False, study="bn_collapse", device="cpu",
        )
        frame = result.trials[result.trials["status"] == "ok"]
        print("\n| norm | batch | trials | best accuracy | median accuracy |")
        print("|---|---:|---:|---:|---:|")
        for (norm, b), group in frame.groupby(["norm", "batch_size"]):
            print(f"| {norm} | {b} | {len(group)} | {group['metric'].max():.3f} | {group['metric'].median():.3f} |")
        rec = result.recommendation
        if rec is None:
            print("\n  no recommendation")
        else:
            p = rec.params
            print(f"\n  recommended: batch {p['batch_size']}, lr {p['lr']:.3g}, {p['norm']} norm (accuracy {rec.metric:.4f})")
            print(f"  {rec.reason}")
        doctor = result.summary.get("doctor") or {}
        for f in doctor.get("findings", []):
            if f["check"].startswith("batchnorm"):
                print(f"  batch doctor ({f['severity']}): {f['message']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    task = load_task(TASK)
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    table = part1(task, train, val, args.seeds, args.epochs)
    part2(task, train, val, table, args.epochs)
    part3(args.trials, 2.0)
    print(f"\n({time.perf_counter() - start:.0f} s, CPU, 1 thread)")


if __name__ == "__main__":
    main()
