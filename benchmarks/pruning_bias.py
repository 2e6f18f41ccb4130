"""Does successive halving prune the learning rate that would have ended best?

The default search prunes a trial at 1/9 and at 1/3 of its length when its validation metric is not in
the best half (before this benchmark: the best third) of the trials of its batch size that reached the
same point (``batchtune.study.pruning.BatchStratifiedHalving``; the replay mirrors its rule). Early in
training a higher LR is usually ahead, while
a lower one may end better: the short-horizon bias of greedy hyperparameter choices (Wu et al. 2018,
"Understanding Short-Horizon Bias in Stochastic Meta-Optimization"). This measures how much that costs.

For each example it trains whole learning curves at the search's own evaluation points: per batch size
(16 and 64) and norm, the grid LRs from 1.5 decades below that cell's best grid LR to 1 decade above it
(where the LR windows and start trials of a search put its trials), on 2 seeds (the transformer 3).
The curves are cached under ``benchmarks/data/curves_<example>.csv``. Then it replays a search's
trials on them many times: per batch size, configurations (norm, LR, seed) drawn at random arrive one by
one until a budget of 4 full trials is spent, pruned by each rule below; the pick is the completed trial
with the best final metric. Reported per rule, over the draws: how far the pick's configuration (its mean
over the seeds trained here) lies below the best configuration of the pool, how often that is within
1 point, how many trials the budget held, and the share of draws in which a configuration that would
have ended best of all the drawn ones was pruned.

- ``1/9+1/3, best third``: rungs at 1/9 and 1/3 of a trial, the best third goes on (Hyperband's
  reduction factor 3; the default before);
- ``1/9+1/3, best half`` (shipped): the same rungs, the best half goes on, judged from the second trial of
  a batch size at the rung (one peer);
- ``1/9+1/3, best half, 2 peers``: the same, but nothing is pruned until two other trials of the batch size
  have reached the rung (as the best third does);
- ``1/3, best third`` and ``1/3, best half``: one rung, at 1/3;
- ``none``: every trial trains in full.

With ``--bracket`` the first two trials of a batch size are a start bracket, as the search's start trials
are on a task with one norm: for a norm drawn at random, the higher at that cell's best grid LR or half a
decade above it (the range test's minimum / 10 lands there in the grids), the lower half a decade below
the higher; the second is judged against the first alone at the first rung, where a lower LR is usually
behind. Two more rules apply only then: the start trials judged from the second rung (1/3) on, and never
(they train in full; for them that is the same as waiting for two peers).

Measured 2026-12-01 (no timing: the load does not matter; training the curves took about 12 minutes on
one thread, a replay 10 s): at budgets of 2.5 and 4 trials per batch size, keeping the best half picked
a configuration closer to the best than keeping the best third in 8 of 8 and 7 of 8 (task, batch size)
pairs, at 8 trials in 5 of 8. Waiting for two peers instead of one is worse in 8 of 8 pairs at 2.5
trials and in 7 of 8 at 4: pruning from the second trial saves the compute of more trials than it
loses. The exception at 4 and 8 trials is the tiny transformer at batch 16, where waiting was 0.16 to
0.22 points closer to the best (the short-horizon bias is strongest there; at 8 also the CNN's batch 64,
by 0.003). With ``--bracket`` no rule wins everywhere: training the start trials in full was closer to
the best in 3 of 8 pairs at 2.5 trials and 4 of 8 at 4 (the transformer's batch 16 by 1.3 points, 1.30
against 0.00-0.01 below the best; the held-out task's batch 16 lost 0.5-0.65), 0.05 and 0.12 points
closer on average over the pairs.

    python benchmarks/pruning_bias.py [--examples digits_mlp,...] [--draws 4000] [--budget 4] [--bracket] [--retrain]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_grid import task_path  # noqa: E402  (benchmarks/ holds the helper)
from search_quality import load_grid  # noqa: E402

from batchtune.task.contract import load_task, make_dataset  # noqa: E402
from batchtune.trial.train import TrialSpec, run_trial  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
EXAMPLES = ("digits_mlp", "digits_cnn", "tiny_transformer", "heldout_waveforms")
BATCHES = (16, 64)
BELOW, ABOVE = 1.5, 1.0  # decades around a cell's best grid LR
BUDGET = 4.0  # full trials per batch size (--budget)
TOL = 0.01
# (the rungs as fractions 1/d of a trial, the reduction factor: a trial goes on when in the best 1/factor, the
# fewest trials of its batch size at the rung that it is judged against)
# and, with --bracket, when the start trials are judged: at every rung, from the second rung (1/3) on, never)
RULES = {"1/9+1/3, best third": ((9, 3), 3, 2, "judged"), "1/9+1/3, best half": ((9, 3), 2, 1, "judged"),
         "1/9+1/3, best half, 2 peers": ((9, 3), 2, 2, "judged"),
         "1/9+1/3, best half, start from 1/3": ((9, 3), 2, 1, "from 1/3"),
         "1/9+1/3, best half, start in full": ((9, 3), 2, 1, "never"), "1/3, best third": ((3,), 3, 2, "judged"),
         "1/3, best half": ((3,), 2, 1, "judged"), "none": ((), 3, 2, "judged")}


def eval_every(epochs: float) -> float:
    """The search's evaluation interval in epochs (``batchtune.study.config``): about 9 points per trial."""
    return max(0.25, min(1.0, epochs / 9))


def train_curves(example: str) -> pd.DataFrame:
    """Learning curves at the search's evaluation points, one row per (batch, norm, lr, seed, samples)."""
    loaded = load_grid(example)
    if loaded is None:
        raise SystemExit(f"{example}: no cached grid; run benchmarks/search_grid.py --examples {example} first")
    grid, meta = loaded
    task = load_task(task_path(example))
    sets = (make_dataset(task, "train"), make_dataset(task, "val"))
    seeds = (0, 1, 2) if len(meta["norms"]) == 1 else (0, 1)
    cells = grid[grid["status"] == "ok"].groupby(["batch_size", "norm", "lr"])["metric"].mean().reset_index()
    rows = []
    for (b, norm), g in cells[cells["batch_size"].isin(BATCHES)].groupby(["batch_size", "norm"]):
        best = float(g.loc[g["metric"].idxmax(), "lr"])
        lrs = [lr for lr in g["lr"] if -BELOW - 1e-6 <= math.log10(lr / best) <= ABOVE + 1e-6]
        for lr in lrs:
            for seed in seeds:
                spec = TrialSpec(batch_size=int(b), lr=float(lr), norm=str(norm), epochs=float(meta["epochs"]),
                                 eval_every=eval_every(float(meta["epochs"])), seed=seed, threads=1)
                r = run_trial(task, spec, *sets)
                points = list(r.curve)
                if r.status != "ok":  # diverged or failed: it stopped there and counts as chance
                    points.append({"samples": (points[-1]["samples"] if points else 0) + 1, "val_metric": meta["chance"]})
                for p in points:
                    metric = float(p["val_metric"])
                    rows.append({"batch_size": int(b), "norm": norm, "lr": float(lr), "seed": seed,
                                 "samples": int(p["samples"]),
                                 "metric": metric if math.isfinite(metric) else float(meta["chance"]),
                                 "status": r.status, "full": int(round(float(meta["epochs"]) * len(sets[0])))})
                print(f"  {example} b{b} {norm} lr {lr:g} seed {seed}: {r.status} {r.final_metric}", flush=True)
    return pd.DataFrame(rows)


def value_at(curve: list[tuple[int, float]], boundary: int) -> tuple[int, float] | None:
    """The first (samples, metric) point at or past ``boundary``."""
    for samples, metric in curve:
        if samples >= boundary:
            return samples, metric
    return None


def replay(pool: dict[tuple[str, float], dict[int, list[tuple[int, float]]]], full: int, rungs: tuple[int, ...],
           factor: int, rng: random.Random, budget: float = BUDGET, min_peers: int = 2,
           bracket: bool = False, start: str = "judged") -> dict[str, float]:
    """One search's trials at one batch size under one rule; see the module docstring."""
    configs = list(pool)
    truth = {c: sum(curve[-1][1] for curve in pool[c].values()) / len(pool[c]) for c in configs}
    boundaries = sorted(full // d for d in rungs)
    order = rng.sample(configs, len(configs))
    pair: list[tuple[str, float]] = []
    if bracket:  # the start trials: the higher at or half a decade above a norm's best LR, the lower just below
        norm = rng.choice(sorted({c[0] for c in configs}))
        lrs = sorted(c[1] for c in configs if c[0] == norm)
        best = lrs.index(max(lrs, key=lambda lr: truth[(norm, lr)]))
        high = min(best + rng.choice((0, 1)), len(lrs) - 1)
        pair = [(norm, lrs[high])] + ([(norm, lrs[high - 1])] if high > 0 else [])
        order = pair + [c for c in order if c not in pair]
    arrivals = [(c, rng.choice(sorted(pool[c]))) for c in order]
    seen: list[dict[int, float]] = []  # per earlier trial: its value at each boundary it reached
    completed: list[tuple[float, tuple[str, float]]] = []
    pruned: list[tuple[str, float]] = []
    spent, trials = 0, 0
    for config, seed in arrivals:
        if spent >= budget * full:
            break
        curve = pool[config][seed]
        trials += 1
        reached: dict[int, float] = {}
        stop = None
        for boundary in boundaries:
            point = value_at(curve, boundary)
            if point is None:
                break
            reached[boundary] = point[1]
            peers = [s[boundary] for s in seen if boundary in s]
            exempt = trials <= len(pair) and (start == "never" or (start == "from 1/3" and boundary == boundaries[0]))
            if len(peers) >= min_peers and not exempt:
                ranked = sorted(peers + [point[1]], reverse=True)
                if point[1] < ranked[max(1, len(ranked) // factor) - 1]:
                    stop = point[0]
                    break
        seen.append(reached)
        if stop is None:
            spent += curve[-1][0]
            completed.append((curve[-1][1], config))
        else:
            spent += stop
            pruned.append(config)
    trained = max(truth[c] for c, _ in arrivals[:trials])
    pruned_best = any(truth[c] >= trained - 1e-12 for c in pruned)
    top = max(truth.values())
    pick = max(completed)[1] if completed else None
    gap = top - truth[pick] if pick is not None else top
    return {"gap": gap, "within": gap <= TOL + 1e-12, "trials": trials, "pruned_best": pruned_best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES))
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--retrain", action="store_true", help="train the curves again instead of reading the cache")
    parser.add_argument("--budget", type=float, default=BUDGET, help="full trials per batch size")
    parser.add_argument("--bracket", action="store_true",
                        help="the first two trials of a batch size are neighbouring LRs of one norm, the higher first "
                             "(the search's start trials on a task with one norm)")
    args = parser.parse_args()
    rows = []
    for example in args.examples.split(","):
        path = DATA / f"curves_{example}.csv"
        if args.retrain or not path.exists():
            train_curves(example).to_csv(path, index=False)
        curves = pd.read_csv(path)
        for b, g in curves.groupby("batch_size"):
            full = int(g["full"].iloc[0])
            pool: dict[tuple[str, float], dict[int, list[tuple[int, float]]]] = {}
            for (norm, lr, seed), run in g.groupby(["norm", "lr", "seed"]):
                pool.setdefault((str(norm), float(lr)), {})[int(seed)] = sorted(zip(run["samples"], run["metric"]))
            for name, (rungs, factor, min_peers, start) in RULES.items():
                if start != "judged" and not args.bracket:
                    continue  # without a bracket there are no start trials to exempt
                rng = random.Random(0)  # the same arrivals for every rule: paired draws
                out = [replay(pool, full, rungs, factor, rng, args.budget, min_peers, args.bracket, start)
                       for _ in range(args.draws)]
                rows.append({"example": example, "batch": int(b), "configs": len(pool), "rule": name,
                             "points below the best": 100 * sum(o["gap"] for o in out) / len(out),
                             "within 1 point": sum(o["within"] for o in out) / len(out),
                             "trials": sum(o["trials"] for o in out) / len(out),
                             "best pruned": sum(o["pruned_best"] for o in out) / len(out)})
    print(f"# successive halving replayed on learning curves: {args.draws} draws per batch size, a budget of "
          f"{args.budget:g} full trials each" + (", the first two a start bracket" if args.bracket else "") + "\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
