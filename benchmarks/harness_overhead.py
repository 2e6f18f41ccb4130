"""Throughput measured by a batchtune trial vs a minimal hand-written training loop (target >= 0.97x).

Both train the same model at the same batch size on the same device for the same number of steps,
interleaved A/B several times (the machine is shared and noisy); the figure is the median ratio.
Two references: a loop over a plain DataLoader (what most users write) and a loop that indexes
preloaded tensors (the strictest reference: no data-loading cost at all).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from batchtune.task.contract import (
    build_model,
    build_optimizer,
    forward,
    load_task,
    make_dataset,
)
from batchtune.trial.train import TrialSpec, run_trial, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def minimal_loop(task, train, batch_size, lr, norm, steps, warmup, preloaded):
    seed_everything(0)
    model = build_model(task, norm)
    opt = build_optimizer(task, model, lr)
    model.train()
    if preloaded:
        xs, ys = train.tensors
        def batches():
            while True:
                perm = torch.randperm(len(ys))
                for i in range(0, len(ys) - batch_size + 1, batch_size):
                    idx = perm[i : i + batch_size]
                    yield xs[idx], ys[idx]
    else:
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True)
        def batches():
            while True:
                yield from loader
    it = batches()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(it)
        out = forward(model, x)
        loss = task.loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def harness(task, train, val, batch_size, lr, norm, steps, warmup):
    spec = TrialSpec(batch_size=batch_size, lr=lr, norm=norm, max_steps=steps + warmup, warmup_steps=warmup,
                     evaluate=False, epochs=1000, threads=torch.get_num_threads())
    result = run_trial(task, spec, train, val)
    assert result.ok, result.reason
    return result.throughput_mean


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default=str(ROOT / "examples" / "digits_cnn.py"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--norm", default="batch")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    task = load_task(args.task)
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    warmup = 5
    ratios_loader, ratios_pre = [], []
    for _ in range(args.rounds):
        h = harness(task, train, val, args.batch_size, 0.01, args.norm, args.steps, warmup)
        m_loader = minimal_loop(task, train, args.batch_size, 0.01, args.norm, args.steps, warmup, preloaded=False)
        ratios_loader.append(h / m_loader)
        if isinstance(train, torch.utils.data.TensorDataset):
            m_pre = minimal_loop(task, train, args.batch_size, 0.01, args.norm, args.steps, warmup, preloaded=True)
            ratios_pre.append(h / m_pre)
    print(f"task {Path(args.task).name}, batch {args.batch_size}, {args.steps} timed steps, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"batchtune / minimal DataLoader loop:       median ratio {statistics.median(ratios_loader):.3f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios_loader)})")
    if ratios_pre:
        med = statistics.median(ratios_pre)
        print(f"batchtune / minimal preloaded-tensor loop: median ratio {med:.3f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios_pre)}); target >= 0.97: {'PASS' if med >= 0.97 else 'FAIL'}")


if __name__ == "__main__":
    main()
