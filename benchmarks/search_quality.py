"""The judge of the search: does ``batchtune search`` find a near-best, fast configuration on a budget?

For each example with a cached grid (``search_grid.py``), it runs ``batchtune search --budget B``
with B = 10% of the grid's runs (in full-trial equivalents), re-trains the recommendation on two
fresh seeds, and checks: (a) the re-trained mean is within 1 point of the grid's best mean cell;
(b) the recommended (batch size, norm) runs at >= 90% of the throughput of the fastest cell within
1 point, both measured side by side in this run; (c) the stated metric is within 1 point of the
re-trained mean. A plain Optuna TPE script with the same budget is the baseline batchtune must match.
Throughput per (batch size, norm) is the median over 5 interleaved, shuffled rounds of at least 20
timed steps and 0.2 s (after 3 warm-up steps), so load from other processes hits every cell alike.
When ``search_grid.py --recheck`` has cached the grid's top cells re-trained on 6 further seeds, a
second verdict judges (a) and (b) against those fresh means too; issue 12's verdict stays the first.
Beside the verdicts, three diagnostics: the recommendation, the grid's best cell and the fastest
near-best cell re-trained on 6 fresh seeds (mean ± standard error). The grid's best is the maximum
of many 2-seed means, so it is biased up like any best-of-many; the diagnostics show by how much,
and, as the share of the 15 two-seed draws of those 6 seeds that reach the grid's best minus 1 point,
how often (a) passes by luck.

On 2 shared CPU cores, one thread, with --search-seeds 0,1: digits_mlp ~3 min, digits_cnn ~11 min,
tiny_transformer ~3 min (measured 2026-12-01 at a load average of 1.0: each search, the baseline, the
re-training on 6 seeds and the timing rounds).

A held-out task, ``benchmarks/tasks/heldout_waveforms.py`` (a 1D CNN on noisy generated waveforms,
written after the search's constants were last set and never tuned on), runs with
``--examples heldout_waveforms`` (~10 min with --search-seeds 0,1); its table goes to
``search_quality_heldout_last.md``.

    python benchmarks/search_quality.py [--examples digits_mlp] [--skip-tpe] [--skip-batchtune] [--timeout 3600] [--search-seeds 0,1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tabulate import tabulate

from batchtune.task.contract import Task, load_task, make_dataset
from batchtune.trial.timing import summarize
from batchtune.trial.train import TrialSpec, run_trial
from search_grid import task_path  # benchmarks/ is on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
EXAMPLES = ("digits_mlp", "digits_cnn", "tiny_transformer")
# Held-out tasks (benchmarks/tasks/): written after the search's constants were last set and never tuned
# on; run them with --examples (their table goes to search_quality_heldout_last.md).
HELD_OUT = ("heldout_waveforms",)
TOLERANCE = 0.01  # 1 percentage point of accuracy: "near-best" in issue 12
THROUGHPUT_RATIO = 0.90  # the recommendation may be at most 10% slower than the fastest near-best cell
BUDGET_FRACTION = 0.10  # the search gets 10% of the grid's compute
RETRAIN_SEEDS = (2000, 2001)  # fresh: the grid used 1000 and 1001, the searches 0
# Diagnostic only (the verdict uses RETRAIN_SEEDS, as issue 12 asks): the pick and the grid's best cell
# re-trained on these too, so the reader sees their means over 6 seeds and how far one 2-seed draw moves.
EXTRA_SEEDS = (2002, 2003, 2004, 2005)
RECHECK_SEEDS = 6  # seeds per re-checked cell (search_grid.py --recheck)
ROUNDS, WARMUP_STEPS, TIMED_STEPS = 5, 3, 20
MIN_WINDOW_S, MAX_TIMED_STEPS = 0.2, 1000


def load_grid(example: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    csv_path, json_path = DATA / f"grid_{example}.csv", DATA / f"grid_{example}.json"
    if not csv_path.exists() or not json_path.exists():
        return None
    grid = pd.read_csv(csv_path).drop_duplicates(["batch_size", "lr", "norm", "seed"], keep="last")
    return grid, json.loads(json_path.read_text())


def load_recheck(example: str) -> pd.DataFrame | None:
    """The grid's top cells re-trained on 6 fresh seeds (``search_grid.py --recheck``): mean per cell over
    those seeds only (the grid's own 2 seeds chose the cells, so they are left out), complete cells only."""
    path = DATA / f"recheck_{example}.csv"
    if not path.exists():
        return None
    runs = pd.read_csv(path).drop_duplicates(["batch_size", "lr", "norm", "seed"], keep="last")
    cells = runs.groupby(["batch_size", "lr", "norm"], as_index=False)["metric"].agg(["mean", "count", "std"])
    cells = cells[cells["count"] >= RECHECK_SEEDS]
    return cells if len(cells) else None


def ground_truth(grid: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Mean metric per (batch, lr, norm) cell over the seeds, and the cells within 1 point of the best."""
    cells = grid.groupby(["batch_size", "lr", "norm"], as_index=False)["metric"].agg(["mean", "count"])
    best = cells.loc[cells["mean"].idxmax()]
    near = cells[cells["mean"] >= best["mean"] - TOLERANCE]
    return near, best


def grid_mean(grid: pd.DataFrame, cell: pd.Series) -> float:
    """The grid's own 2-seed mean of ``cell``."""
    rows = grid[(grid["batch_size"] == cell["batch_size"]) & (grid["norm"] == cell["norm"])
                & ((grid["lr"] - cell["lr"]).abs() <= 1e-9 * cell["lr"])]
    return float(rows["metric"].mean())


def describe_near(near: pd.DataFrame) -> str:
    parts = []
    for norm, rows in near.groupby("norm"):
        sizes = ",".join(str(b) for b in sorted(rows["batch_size"].unique()))
        parts.append(f"{norm}: b {sizes}, lr {rows['lr'].min():g}-{rows['lr'].max():g} ({len(rows)} cells)")
    return "; ".join(parts)


def retrain(task: Task, params: dict[str, Any], epochs: float, chance: float, sets: tuple[Any, Any],
            seeds: tuple[int, ...] = RETRAIN_SEEDS) -> list[float]:
    values = []
    for seed in seeds:
        spec = TrialSpec(batch_size=int(params["batch_size"]), lr=float(params["lr"]), norm=params["norm"],
                         epochs=epochs, seed=seed, threads=1)
        r = run_trial(task, spec, *sets)
        ok = r.status == "ok" and r.final_metric is not None and math.isfinite(r.final_metric)
        values.append(r.final_metric if ok else chance)
    return values


def _time_cell(task: Task, b: int, norm: str, lr: float, steps: int, seed: int, sets: tuple[Any, Any]) -> float | None:
    spec = TrialSpec(batch_size=b, lr=lr, norm=norm, seed=seed, threads=1, epochs=None,
                     budget_samples=(WARMUP_STEPS + steps) * b, max_steps=WARMUP_STEPS + steps,
                     warmup_steps=WARMUP_STEPS, evaluate=False)
    return run_trial(task, spec, *sets).throughput_mean


def measure_throughput(task: Task, cells: list[tuple[int, str]], lr: float, train_set: Any, val_set: Any) -> dict:
    """Median samples/s per (batch, norm) over interleaved rounds; every round visits every cell once."""
    sets = (train_set, val_set)
    print(f"  timing {len(cells)} cells x {ROUNDS} rounds; load average before {os.getloadavg()[0]:.2f}", flush=True)
    # A calibration pass of 20 steps per cell sets each cell's step count: at least 20 steps and at
    # least MIN_WINDOW_S, since 20 steps of the MLP last 2-30 ms, below the scheduler noise of a shared machine.
    steps = {}
    for b, norm in cells:
        rate = _time_cell(task, b, norm, lr, TIMED_STEPS, 0, sets) or 0.0
        steps[(b, norm)] = min(MAX_TIMED_STEPS, max(TIMED_STEPS, math.ceil(MIN_WINDOW_S * rate / b)))
    samples: dict[tuple[int, str], list[float]] = {c: [] for c in cells}
    order = list(cells)
    shuffler = random.Random(0)
    for r in range(ROUNDS):
        shuffler.shuffle(order)
        for b, norm in order:
            rate = _time_cell(task, b, norm, lr, steps[(b, norm)], r + 1, sets)
            if rate:
                samples[(b, norm)].append(rate)
    print(f"  load average after {os.getloadavg()[0]:.2f}", flush=True)
    return {c: summarize(v) for c, v in samples.items()}


def run_search(example: str, epochs: float, budget: int, timeout: float,
               keep: Path | None = None, seed: int = 0) -> tuple[dict[str, Any] | None, str]:
    """Run the CLI in a scratch folder; the summary.json recommendation, or None and the reason.

    With ``keep``, the study's report folder and storage are copied there (to read its trials afterwards).
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    study = f"sq_{example}_{stamp}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "batchtune", "search", str(task_path(example)),
               "--epochs", f"{epochs:g}", "--budget", str(budget), "--study", study,
               "--output", f"{tmp}/reports", "--storage", f"sqlite:///{tmp}/s.db", "--seed", str(seed),
               # Default flags: only the task, the trial length and the budget (plots are not judged).
               "--no-plots"]
        print(f"  $ batchtune {' '.join(cmd[3:])}", flush=True)
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"search timed out after {timeout:g} s"
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(Path(tmp) / "reports", keep / "reports", dirs_exist_ok=True)
            shutil.copy2(Path(tmp) / "s.db", keep / f"{study}.db")
            (keep / f"{study}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            lines = [x for x in proc.stderr.splitlines() if x.strip()] or ["(no stderr)"]
            return None, f"search exited {proc.returncode}: {lines[-1].strip()[:200]}"
        path = Path(tmp) / "reports" / study / "summary.json"
        if not path.exists():
            return None, f"search wrote no {path.name}"
        summary = json.loads(path.read_text())
        rec = summary.get("recommendation")
        if not rec:
            return None, "search made no recommendation"
        return {**rec, "candidates": summary.get("candidates") or []}, ""


def run_tpe(task: Task, meta: dict[str, Any], budget: int, sets: tuple[Any, Any]) -> dict[str, Any]:
    """What a user writes without batchtune: TPE over the same space, one full trial per sample."""
    import optuna
    from optuna.samplers import TPESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=TPESampler(seed=0))
    lrs = meta["lr_grid"]

    def objective(trial: optuna.Trial) -> float:
        b = trial.suggest_categorical("batch_size", meta["batch_sizes"])
        lr = trial.suggest_float("lr", min(lrs), max(lrs), log=True)
        norm = trial.suggest_categorical("norm", meta["norms"])
        r = run_trial(task, TrialSpec(batch_size=b, lr=lr, norm=norm, epochs=meta["epochs"], seed=0, threads=1), *sets)
        ok = r.status == "ok" and r.final_metric is not None and math.isfinite(r.final_metric)
        return r.final_metric if ok else meta["chance"]

    study.optimize(objective, n_trials=budget)
    return {"params": dict(study.best_params), "metric": study.best_value}


def _pair_pass_rate(values: list[float], floor: float) -> float:
    """The share of the 2-seed draws (pairs of ``values``) whose mean reaches ``floor``: how often a
    configuration with these seeds passes criterion (a), judged as the verdict judges it, on 2 seeds."""
    pairs = list(itertools.combinations(values, 2))
    return sum((x + y) / 2 >= floor for x, y in pairs) / len(pairs)


def _mean_se(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd / math.sqrt(len(values))


def judge(example: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per search seed: the verdict of issue 12, with the 6-seed diagnostics beside it."""
    loaded = load_grid(example)
    if loaded is None:
        print(f"{example}: no cached grid; run benchmarks/search_grid.py --examples {example} first", flush=True)
        return []
    grid, meta = loaded
    start = time.perf_counter()
    runs = int(meta["total_trials"])
    if len(grid) < runs:
        print(f"{example}: the grid holds {len(grid)} of {runs} runs; judging against the partial grid", flush=True)
    budget = math.floor(BUDGET_FRACTION * runs)
    near, best = ground_truth(grid)
    print(f"{example}: grid best mean {best['mean']:.4f} at batch {best['batch_size']} lr {best['lr']:g} "
          f"{best['norm']}; {len(near)} cells within {TOLERANCE:g}: {describe_near(near)}", flush=True)
    task = load_task(task_path(example))
    sets = (make_dataset(task, "train"), make_dataset(task, "val"))
    base: dict[str, Any] = {"example": example, "budget": budget,
                            "grid best": f"{best['mean']:.4f} (b{best['batch_size']} lr{best['lr']:g} {best['norm']})"}
    all_seeds = RETRAIN_SEEDS + EXTRA_SEEDS
    # The grid's best cell is the maximum of many 2-seed means, so it over-states its cell too: the same
    # fresh seeds as the picks show by how much (a diagnostic; the verdict keeps the grid's own figure).
    best_params = {"batch_size": int(best["batch_size"]), "lr": float(best["lr"]), "norm": best["norm"]}
    best_values = retrain(task, best_params, meta["epochs"], meta["chance"], sets, all_seeds)
    best_m, best_se = _mean_se(best_values)
    floor = best["mean"] - TOLERANCE
    base["grid best, 6 fresh seeds"] = f"{best_m:.4f} ± {best_se:.4f}, (a) {_pair_pass_rate(best_values, floor):.0%}"
    print(f"  grid best cell re-trained on seeds {all_seeds}: {best_m:.4f} ± {best_se:.4f} (standard error; "
          f"{', '.join(f'{v:.4f}' for v in best_values)}); its 2-seed pairs pass (a) "
          f"{_pair_pass_rate(best_values, floor):.0%} of the time", flush=True)

    tpe_mean, tpe_params = None, None
    if not args.skip_tpe:
        tpe = run_tpe(task, meta, budget, sets)
        tpe_params = tpe["params"]
        values = retrain(task, tpe["params"], meta["epochs"], meta["chance"], sets)
        tpe_mean = sum(values) / len(values)
        p = tpe["params"]
        base["TPE rec"] = f"b{p['batch_size']} lr{p['lr']:.3g} {p['norm']}"
        base["TPE re-trained"] = f"{tpe_mean:.4f} ({', '.join(f'{v:.4f}' for v in values)})"
        print(f"  TPE: {base['TPE rec']} best trial {tpe['metric']:.4f}, re-trained {base['TPE re-trained']}", flush=True)

    picks: list[tuple[int, dict[str, Any] | None, str, float | None, dict[str, Any]]] = []
    for seed in args.search_seeds:
        row = dict(base, **{"search seed": seed})
        rec, bt_mean, why = None, None, ""
        if args.skip_batchtune:
            why = "skipped"
        else:
            rec, why = run_search(example, meta["epochs"], budget, args.timeout, args.keep, seed)
        if rec is not None:
            values = retrain(task, rec["params"], meta["epochs"], meta["chance"], sets, all_seeds)
            bt_mean = sum(values[:len(RETRAIN_SEEDS)]) / len(RETRAIN_SEEDS)
            m6, se6 = _mean_se(values)
            p = rec["params"]
            row["batchtune rec"] = f"b{p['batch_size']} lr{p['lr']:.3g} {p['norm']}"
            row["re-trained (seeds)"] = f"{bt_mean:.4f} ({', '.join(f'{v:.4f}' for v in values[:len(RETRAIN_SEEDS)])})"
            row["rec, 6 fresh seeds"] = f"{m6:.4f} ± {se6:.4f}, (a) {_pair_pass_rate(values, best['mean'] - TOLERANCE):.0%}"
            row["stated"] = f"{rec['metric']:.4f}"
            # The candidates with more fresh seeds than the others were raced (batchtune.study.measured.RACE).
            counts = [len(c.get("seeds") or []) for c in rec["candidates"]]
            raced = [c for c, n in zip(rec["candidates"], counts) if counts and n > min(counts)]
            row["raced"] = ", ".join(f"trial {c['trial']}" for c in raced) or "no"
            print(f"  batchtune (search seed {seed}): {row['batchtune rec']} stated {rec['metric']:.4f}, re-trained "
                  f"{row['re-trained (seeds)']}; over 6 seeds {m6:.4f} ± {se6:.4f} ({', '.join(f'{v:.4f}' for v in values)})",
                  flush=True)
            for c, n in zip(rec["candidates"], counts):
                q = c["params"]
                print(f"    candidate trial {c['trial']} b{q['batch_size']} lr{q['lr']:.3g} {q['norm']} ({c['why']}): "
                      f"{c['mean'] if c['mean'] is None else round(c['mean'], 4)} over {n} fresh seed(s)"
                      f"{' (raced)' if c in raced else ''}", flush=True)
        else:
            print(f"  batchtune (search seed {seed}): {why}", flush=True)
            row["batchtune rec"] = f"FAIL: {why}" if why != "skipped" else "skipped"
        picks.append((seed, rec, why, bt_mean, row))

    # Timing last, so a recommended batch size outside the grid joins the same side-by-side rounds.
    cells = [(b, n) for n in meta["norms"] for b in meta["batch_sizes"]]
    for params in [rec["params"] for _, rec, _, _, _ in picks if rec is not None] + ([tpe_params] if tpe_params else []):
        if (int(params["batch_size"]), params["norm"]) not in cells:
            cells.append((int(params["batch_size"]), params["norm"]))
    mid_lr = 10 ** (sum(meta["lr_exponents"]) / len(meta["lr_exponents"]))  # the grid's median, in log space
    speed = measure_throughput(task, cells, mid_lr, *sets)
    for (b, n), s in sorted(speed.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        noisy = "  (noisy: IQR/median >= 10%)" if s.noisy else ""
        print(f"    b{b:<5} {n:<8} {s.median:>10,.0f} samples/s  IQR {s.iqr:>8,.0f}{noisy}", flush=True)
    near_speed = near.assign(speed=[speed[(int(b), n)].median for b, n in zip(near["batch_size"], near["norm"])])
    fastest = near_speed.loc[near_speed["speed"].idxmax()]
    # Is the speed target real? The fastest near-best cell (at its best grid LR) on the same 6 fresh seeds.
    in_cell = near[(near["batch_size"] == fastest["batch_size"]) & (near["norm"] == fastest["norm"])]
    target = in_cell.loc[in_cell["mean"].idxmax()]
    target_values = retrain(task, {"batch_size": int(target["batch_size"]), "lr": float(target["lr"]),
                                   "norm": target["norm"]}, meta["epochs"], meta["chance"], sets, all_seeds)
    target_m, target_se = _mean_se(target_values)
    print(f"  fastest near-best cell b{target['batch_size']} {target['norm']} at lr {target['lr']:g} (grid "
          f"{target['mean']:.4f}) re-trained on seeds {all_seeds}: {target_m:.4f} ± {target_se:.4f} "
          f"({', '.join(f'{v:.4f}' for v in target_values)}); its 2-seed pairs pass (a) "
          f"{_pair_pass_rate(target_values, best['mean'] - TOLERANCE):.0%} of the time", flush=True)

    # The second, de-biased ground truth: the re-checked cells' fresh means (when they are cached).
    recheck = load_recheck(example)
    best2 = fastest2 = None
    if recheck is not None:
        best2 = recheck.loc[recheck["mean"].idxmax()]
        near2 = recheck[recheck["mean"] >= best2["mean"] - TOLERANCE]
        near2 = near2.assign(speed=[speed[(int(b), n)].median for b, n in zip(near2["batch_size"], near2["norm"])])
        fastest2 = near2.loc[near2["speed"].idxmax()]
        print(f"  re-checked on {RECHECK_SEEDS} fresh seeds ({len(recheck)} cells): best b{best2['batch_size']} "
              f"lr {best2['lr']:g} {best2['norm']} {best2['mean']:.4f} (the grid said "
              f"{grid_mean(grid, best2):.4f}); within {TOLERANCE:g}: {describe_near(near2)}; fastest of those "
              f"b{fastest2['batch_size']} {fastest2['norm']}", flush=True)

    # The baseline judged by the same criteria: does plain TPE's pick pass (a) and (b) itself?
    tpe_judged = "-"
    if tpe_params is not None and tpe_mean is not None:
        tpe_ratio = speed[(int(tpe_params["batch_size"]), tpe_params["norm"])].median / fastest["speed"]
        marks = [tpe_mean >= best["mean"] - TOLERANCE, tpe_ratio >= THROUGHPUT_RATIO]
        tpe_judged = f"{'/'.join('y' if x else 'n' for x in marks)} (speed {tpe_ratio:.2f})"
        if best2 is not None and fastest2 is not None:
            again = [tpe_mean >= best2["mean"] - TOLERANCE,
                     speed[(int(tpe_params["batch_size"]), tpe_params["norm"])].median / fastest2["speed"] >= THROUGHPUT_RATIO]
            tpe_judged += f"; vs re-checked {'/'.join('y' if x else 'n' for x in again)}"

    rows = []
    for _, rec, why, bt_mean, row in picks:
        row["TPE a/b"] = tpe_judged
        row["fastest near-best"] = f"b{fastest['batch_size']} {fastest['norm']} {fastest['speed']:,.0f}/s"
        row["fastest near-best, 6 fresh seeds"] = (f"lr {target['lr']:g}: {target_m:.4f} ± {target_se:.4f}, (a) "
                                                   f"{_pair_pass_rate(target_values, best['mean'] - TOLERANCE):.0%}")
        verdict = "-"
        if rec is not None and bt_mean is not None:
            rec_speed = speed[(int(rec["params"]["batch_size"]), rec["params"]["norm"])].median
            ratio = rec_speed / fastest["speed"]
            a = bt_mean >= best["mean"] - TOLERANCE
            b_ok = ratio >= THROUGHPUT_RATIO
            c = abs(rec["metric"] - bt_mean) <= TOLERANCE
            beats = None if tpe_mean is None else bt_mean >= tpe_mean
            row["throughput ratio"] = f"{ratio:.3f}"  # 3 places: 0.897 must not print as a passing 0.90
            row["a/b/c/beats-TPE"] = "/".join("-" if x is None else ("y" if x else "n") for x in (a, b_ok, c, beats))
            verdict = "PASS" if a and b_ok and c and beats is not False else "FAIL"
            if best2 is not None and fastest2 is not None:
                a2 = bt_mean >= best2["mean"] - TOLERANCE
                b2 = rec_speed / fastest2["speed"] >= THROUGHPUT_RATIO
                row["re-checked best"] = f"{best2['mean']:.4f} (b{best2['batch_size']} lr{best2['lr']:g} {best2['norm']})"
                row["a/b vs re-checked"] = "/".join("y" if x else "n" for x in (a2, b2))
                row["verdict vs re-checked"] = "PASS" if a2 and b2 and c and beats is not False else "FAIL"
        elif why != "skipped":
            verdict = "FAIL"
        row["verdict"] = verdict
        row["seconds"] = f"{time.perf_counter() - start:.0f}"
        row["_speed"] = {f"{b}/{n}": round(s.median) for (b, n), s in speed.items()}
        row["_near"] = describe_near(near)
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], header: str) -> str:
    columns = ["example", "search seed", "budget", "grid best", "batchtune rec", "re-trained (seeds)", "stated", "raced",
               "fastest near-best", "throughput ratio", "TPE rec", "TPE re-trained", "TPE a/b", "a/b/c/beats-TPE", "verdict",
               "seconds", "re-checked best", "a/b vs re-checked", "verdict vs re-checked", "rec, 6 fresh seeds",
               "grid best, 6 fresh seeds", "fastest near-best, 6 fresh seeds"]
    table = tabulate([[r.get(c, "-") for c in columns] for r in rows], headers=columns, tablefmt="github")
    lines = [header, "", table, ""]
    lines.append("'TPE a/b' judges the plain TPE script's pick by criteria (a) and (b) itself (a diagnostic).")
    lines.append("")
    lines.append("'re-checked best' and the two columns after it judge (a) and (b) again against the grid's cells "
                 f"within 2 points (held-out waveforms: 5) of its best re-trained on {RECHECK_SEEDS} further seeds "
                 "(search_grid.py --recheck): the grid's best is a maximum of many 2-seed means, biased up. The "
                 "verdict of issue 12 is the 'verdict' column.")
    lines.append("")
    lines.append(f"The last three columns are diagnostics, not part of the verdict: the recommendation, the grid's best "
                 f"cell and the fastest near-best cell (at its best grid LR) re-trained on seeds {RETRAIN_SEEDS + EXTRA_SEEDS}, mean ± standard error, and the share of "
                 "their 15 two-seed draws whose mean passes (a).")
    lines.append("")
    for r in {r["example"]: r for r in rows}.values():
        lines.append(f"- {r['example']} within {TOLERANCE:g} of the best: {r['_near']}")
        lines.append(f"  - samples/s (batch/norm): {', '.join(f'{k} {v:,}' for k, v in r['_speed'].items())}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES), help="comma-separated example names")
    parser.add_argument("--skip-tpe", action="store_true", help="leave out the Optuna TPE baseline")
    parser.add_argument("--skip-batchtune", action="store_true", help="leave out batchtune search (checks the rest)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the search may take per example")
    parser.add_argument("--search-seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                        help="comma-separated --seed values: one search (and one verdict row) per seed")
    parser.add_argument("--keep", type=Path, default=None, help="copy each search's reports and storage into this folder")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the grid: one process, one thread on a shared 2-core machine
    rows = []
    for example in args.examples.split(","):
        if example not in EXAMPLES + HELD_OUT:
            raise SystemExit(f"unknown example {example!r}; choose from {', '.join(EXAMPLES + HELD_OUT)}")
        rows += judge(example, args)
    if not rows:
        raise SystemExit("no example has a cached grid; run benchmarks/search_grid.py first")
    header = (f"# search quality, {datetime.datetime.now().isoformat(timespec='seconds')}, torch {torch.__version__}\n\n"
              f"PASS needs (a) re-trained mean >= grid best - {TOLERANCE:g}, (b) throughput ratio >= {THROUGHPUT_RATIO:g}, "
              f"(c) |stated - re-trained| <= {TOLERANCE:g}, and batchtune's re-trained mean >= TPE's; budget = "
              f"{BUDGET_FRACTION:.0%} of the grid's runs in full trials; re-trained on seeds {RETRAIN_SEEDS}.")
    text = render(rows, header)
    print("\n" + text)
    held_out = all(e in HELD_OUT for e in args.examples.split(","))
    (DATA / f"search_quality{'_heldout' if held_out else ''}_last.md").write_text(text)


if __name__ == "__main__":
    main()
