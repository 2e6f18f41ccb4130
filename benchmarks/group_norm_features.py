"""How many groups should GroupNorm have when it stands in for a BatchNorm1d on feature vectors?

batchtune swaps the BatchNorm layers of a model whose ``build_model`` takes no ``norm`` argument; for
``group`` it used GroupNorm(gcd(32, C), C) everywhere, Wu and He's (2018) default of 32 groups. In a
convolution each group pools C/G channels times every spatial position. A BatchNorm1d in an MLP sees
(batch, C): a group pools only its C/G values of one sample. At 2 values per group every normalized
value is -1 or +1 (x - mean = +-(a - b)/2, and the deviation is |a - b|/2); at 1 it is 0, so the layer
passes only its bias on. Wu and He's table 3(b) (fixed channels per group) found 16 per group as good
as any, and 1-2 per group worst, even with spatial positions to pool over.

This trains MLPs with two BatchNorm1d layers (widths 32 to 256), converted by batchtune's
``convert_norm``, on three tasks: scikit-learn's digits (accuracy), Friedman #1 regression (generated;
RMSE of the standardized target, lower is better) and a generated 4-class problem
(``make_classification``; accuracy). Each variant is trained at 4 learning rates (SGD, momentum 0.9,
batch 32, a fixed number of epochs) on 3 seeds; its row is its best LR's mean over the seeds, with the
standard error. Variants: BatchNorm as built; ``group`` with gcd(32, C) groups (the old rule), halved
until each group holds at least 4 channels, or at least 16 (the shipped rule: ``convert_norm`` makes a
``batchtune.task.norm.FeatureGroupNorm``, which groups (batch, C) inputs so and keeps gcd(32, C) groups
for (batch, C, L)); ``layer`` (one group). No timing: the load does not matter.

    PYTHONPATH=. python benchmarks/group_norm_features.py [--seeds 3] [--epochs 15]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import nn

from batchtune.task import norm as norm_module

LRS = (0.01, 0.03, 0.1, 0.3)
# Each variant and the least channels per group it converts with (None: not a GroupNorm of several groups).
VARIANTS: dict[str, int | None] = {"batch": None, "group, gcd(32, C)": 1, "group, >= 4 per group": 4,
                                   "group, >= 16 per group (shipped)": 16, "layer": None}
BATCH = 32


def digits() -> tuple[Any, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split(torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)) + (10, "max")


def friedman() -> tuple[Any, ...]:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=3000, n_features=10, noise=1.0, random_state=0)
    y = (y - y.mean()) / y.std()
    return _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)) + (1, "min")


def classes4() -> tuple[Any, ...]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=4000, n_features=20, n_informative=10, n_classes=4, random_state=0)
    return _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y)) + (4, "max")


def _split(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = len(y) // 5
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


TASKS: dict[str, tuple[Callable[[], tuple[Any, ...]], tuple[int, ...]]] = {
    "digits": (digits, (32, 64, 128)),
    "friedman": (friedman, (64, 256)),
    "classes4": (classes4, (64, 256)),
}


def mlp(inputs: int, width: int, outputs: int) -> nn.Module:
    head: nn.Module = nn.Linear(width, outputs)
    if outputs == 1:
        head = nn.Sequential(head, nn.Flatten(0))
    return nn.Sequential(nn.Linear(inputs, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), head)


def train(data: tuple[Any, ...], width: int, variant: str, lr: float, seed: int, epochs: int) -> float:
    xt, yt, xv, yv, outputs, mode = data
    torch.manual_seed(seed)
    model = mlp(xt.shape[1], width, outputs)
    least = VARIANTS[variant]
    if least is not None:
        shipped = norm_module.MIN_GROUP_CHANNELS
        norm_module.MIN_GROUP_CHANNELS = least
        try:
            norm_module.convert_norm(model, "group")
        finally:
            norm_module.MIN_GROUP_CHANNELS = shipped
    elif variant != "batch":
        norm_module.convert_norm(model, variant)
    loss_fn = nn.functional.mse_loss if outputs == 1 else nn.functional.cross_entropy
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt), generator=g)
        for i in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[i:i + BATCH]
            loss = loss_fn(model(xt[idx]), yt[idx])
            if not torch.isfinite(loss):
                return math.nan
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model(xv)
    if outputs == 1:
        value = float(((out - yv) ** 2).mean().sqrt())
    else:
        value = float((out.argmax(1) == yv).float().mean())
    return value if math.isfinite(value) else math.nan


def _groups(width: int, least: int) -> int:
    shipped = norm_module.MIN_GROUP_CHANNELS
    norm_module.MIN_GROUP_CHANNELS = least
    try:
        return norm_module.feature_group_count(width, norm_module.group_count(nn.BatchNorm1d(width)))
    finally:
        norm_module.MIN_GROUP_CHANNELS = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for task, (load, widths) in TASKS.items():
        data = load()
        mode = data[-1]
        for width in widths:
            for variant, least in VARIANTS.items():
                groups = "-" if variant == "batch" else "1" if least is None else str(_groups(width, least))
                best: tuple[float, float, float] | None = None
                per_lr = []
                for lr in LRS:
                    values = [train(data, width, variant, lr, seed, args.epochs) for seed in range(args.seeds)]
                    # A diverged seed counts as the worst value it could have: chance for accuracy, none for RMSE.
                    finite = [v if math.isfinite(v) else (0.0 if mode == "max" else math.inf) for v in values]
                    mean = statistics.fmean(finite)
                    spread = len(finite) > 1 and math.isfinite(mean)
                    se = statistics.stdev(finite) / math.sqrt(len(finite)) if spread else math.nan
                    per_lr.append(f"{mean:.3f}")
                    key = mean if mode == "max" else -mean
                    if best is None or key > best[0]:
                        best = (key, mean, se, lr)  # type: ignore[assignment]
                assert best is not None
                rows.append({"task": task, "metric": "accuracy" if mode == "max" else "RMSE (lower better)",
                             "width C": width, "variant": variant, "groups": groups,
                             "best mean": f"{best[1]:.4f} ± {best[2]:.4f}", "best lr": best[3],
                             "mean at lr " + "/".join(f"{lr:g}" for lr in LRS): " / ".join(per_lr)})
                print(rows[-1], flush=True)
    print(f"\n# GroupNorm for BatchNorm1d on feature vectors: {args.seeds} seeds x {len(LRS)} LRs, {args.epochs} "
          f"epochs, batch {BATCH}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
