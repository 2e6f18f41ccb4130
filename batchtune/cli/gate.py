"""``batchtune bench`` and ``batchtune compare``: the CI regression gate."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from batchtune.cli.options import (
    fraction_option,
    handle_errors,
    seed_option,
)
from batchtune.errors import BatchtuneError


def _metric_drop(ctx: Any, param: Any, value: str | None) -> Any:
    if value is None:
        return None
    from batchtune.study.config import parse_tolerance

    try:
        return parse_tolerance(value)
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc).replace("--tolerance", "--max-metric-drop")) from None


def _gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--max-slowdown", callback=fraction_option, default="5%", show_default=True,
                     help="Fail when a training step takes this much longer and the change is significant."),
        click.option("--max-memory-increase", callback=fraction_option, default="3%", show_default=True,
                     help="Fail when peak memory grows by more than this."),
        click.option("--max-metric-drop", callback=_metric_drop, default="0.5%", show_default=True,
                     help="Fail when the metric after --epochs gets worse by more than this: 0.5% (relative), 0.5pp or 0.01."),
        click.option("--quantile", type=click.FloatRange(0.01, 0.99), default=0.5, show_default=True,
                     help="Quantile of the step times (on a CPU: step time / reference time) the speed decision compares."),
        click.option("--allow-mismatch", is_flag=True, help="Compare even when hardware, versions, task file or configuration differ (else exit 3)."),
        click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON instead of the markdown table."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _thresholds(max_slowdown: float, max_memory_increase: float, max_metric_drop: Any, quantile: float) -> Any:
    from batchtune.gate.decision import Thresholds

    return Thresholds(max_slowdown=max_slowdown, max_memory_increase=max_memory_increase,
                      max_metric_drop=max_metric_drop, quantile=quantile)


def _emit_decision(decision: Any, as_json: bool) -> None:
    """Print the decision, append it to $GITHUB_STEP_SUMMARY when set, and exit with its code."""
    import os

    from batchtune.gate.render import render_markdown

    markdown = render_markdown(decision)
    click.echo(json.dumps(decision.to_dict(), indent=2) if as_json else markdown)
    _step_summary(markdown, os.environ.get("GITHUB_STEP_SUMMARY"))
    sys.exit(decision.exit_code)


def _step_summary(markdown: str, path: str | None) -> None:
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")
    except OSError as exc:
        click.echo(f"warning: cannot append to $GITHUB_STEP_SUMMARY ({path}): {exc.strerror}", err=True)


@click.command("bench")
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@click.option("--batch-size", type=int, default=None, help="Batch size to measure (required unless --compare gives it).")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 0.05].")
@click.option("--norm", default=None, help="Normalization: batch, group, layer or none [default: the task's first NORMS, else batch; as built for a model with no BatchNorm and no `norm` argument].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="[default: fp32]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--threads", type=int, default=None, help="CPU threads, pinned and recorded [default: 1].")
@click.option("--clock", type=click.Choice(["auto", "cpu", "wall"]), default=None,
              help="Step timer the decision uses: auto and wall are synchronised wall time; cpu is process CPU time, "
                   "blind to waiting (recorded either way) [default: auto].")
@click.option("--repeat", type=int, default=None, help="Repeats, each a fresh model in one of the worker processes [default: 10].")
@click.option("--steps", type=int, default=None, help="Timed steps per repeat [default: 40].")
@click.option("--warmup", type=int, default=None, help="Untimed burn-in steps per repeat [default: 10].")
@click.option("--processes", type=int, default=None, help="Worker processes the repeats alternate between [default: 2].")
@click.option("--epochs", type=float, default=None, help="Also train this many epochs from a fixed seed and record the validation metric.")
@click.option("--seed", type=int, callback=seed_option, default=None, help="Seed of the model and data order [default: 0].")
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds before a hung measurement is killed.")
@click.option("--save", "save_path", default=None, type=click.Path(dir_okay=False, path_type=str), help="Write the measurement to this JSON file (the baseline).")
@click.option("--compare", "compare_path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Compare with this baseline file and exit 0 pass, 1 regression, 3 mismatch, 4 inconclusive.")
@click.option("--against-task", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Measure this task file as the baseline, interleaved with TASK (default with --against-env: TASK).")
@click.option("--against-env", multiple=True, metavar="KEY=VALUE",
              help="Environment of the baseline's workers, e.g. PYTHONPATH=../main/src (repeatable); measures interleaved.")
@click.option("--until-decided", is_flag=True,
              help="While the speed verdict is inconclusive, measure the repeats it estimates would decide, up to --max-time.")
@click.option("--max-time", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds --until-decided may spend in all; no repeat starts that would end past it.")
@_gate_options
@handle_errors
def bench_command(task: str, save_path: str | None, compare_path: str | None, against_task: str | None,
          against_env: tuple[str, ...], until_decided: bool, max_time: float, max_slowdown: float,
          max_memory_increase: float, max_metric_drop: Any, quantile: float, allow_mismatch: bool, as_json: bool,
          **opts: Any) -> None:
    """Measure TASK at one fixed configuration; save it as a baseline or gate it against one.

    With --compare FILE the baseline is a saved run. With --against-task or --against-env the
    baseline version is measured now, its repeats interleaved with TASK's, so both see the same
    noise from the rest of the machine. Speed is decided on synchronised wall time per step, less
    the time other programs held the core, calibrated by a reference workload run before every step.

    \b
    Exit codes:
      0  pass (also when the baseline is stale: significantly faster)
      1  regression: a figure is worse beyond its threshold (speed: and significant)
      2  usage or task error, unreadable baseline
      3  the baseline is not comparable (hardware, versions, task file, configuration)
      4  inconclusive: no regression, but the machine was too noisy to decide the speed;
         the output says how many more repeats would likely decide (or use --until-decided)
    """
    from dataclasses import replace

    from batchtune.gate.baseline import load_run, save_run
    from batchtune.gate.decision import config_mismatches, decide, refuse
    from batchtune.gate.measure import BenchConfig, prepare, run_bench, run_interleaved
    from batchtune.gate.render import render_run

    interleaved = against_task is not None or bool(against_env)
    wanted = _Wanted(until_decided)
    if interleaved and compare_path:
        raise click.UsageError("give either --compare FILE or --against-task/--against-env, not both")
    if until_decided and not (interleaved or compare_path):
        raise click.UsageError("--until-decided needs a comparison: add --compare FILE or --against-env KEY=VALUE")
    env_pairs = []
    for item in against_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE, e.g. PYTHONPATH=../main/src", param_hint="--against-env")
        env_pairs.append((key, value))
    baseline = load_run(compare_path) if compare_path else None
    if baseline is not None:
        # The comparison measures the baseline's configuration; flags given here override it (and a
        # difference in what is measured then refuses the comparison, exit 3).
        cfg, fp = baseline.config, baseline.fingerprint
        for key in ("batch_size", "lr", "norm", "precision", "clock", "epochs", "seed", "repeat", "steps", "warmup", "processes"):
            if opts[key] is None:
                opts[key] = cfg.get(key)
        if opts["threads"] is None:
            opts["threads"] = fp.get("threads")
    if opts["batch_size"] is None:
        raise click.UsageError("--batch-size is required (or --compare a baseline, which gives it)")
    defaults: dict[str, Any] = {"lr": 0.05, "precision": "fp32", "threads": 1, "clock": "auto", "repeat": 10, "steps": 40,
                "warmup": 10, "processes": 2, "seed": 0}
    for key, value in defaults.items():
        if opts[key] is None:
            opts[key] = value
    config = BenchConfig(task_path=task, **opts).validated()

    if interleaved:
        other = replace(config, task_path=against_task or task, env=tuple(env_pairs)).validated()

        def on_side(side: str, done: int, total: int, median: float) -> None:
            click.echo(f"repeat {done}/{total} {side}: {median * 1e3:.3f} ms per step", err=True)

        thresholds = _thresholds(max_slowdown, max_memory_increase, max_metric_drop, quantile)

        def more_pair(base: Any, cur: Any) -> int:
            return wanted.ask(decide(base, cur, thresholds, allow_mismatch=True, ignore=("task_sha256",)))

        base_run, current = run_interleaved(config, other, on_repeat=on_side, more=more_pair if until_decided else None,
                                            time_limit=max_time if until_decided else None)
        if save_path:
            save_run(current, save_path)
            click.echo(f"wrote {save_path}", err=True)
        decision = decide(base_run, current, thresholds, allow_mismatch=allow_mismatch, ignore=("task_sha256",),
                          baseline_name=f"{against_task or task} (interleaved)", current_name=task)
        wanted.report(decision, max_time)
        _emit_decision(decision, as_json)

    if baseline is not None:
        run_config, fingerprint = prepare(config)
        found = config_mismatches(baseline, run_config, fingerprint)
        if found and not allow_mismatch:
            _emit_decision(refuse(found, baseline_name=str(compare_path), current_name=task), as_json)

    def on_repeat(done: int, total: int, median: float) -> None:
        click.echo(f"repeat {done}/{total}: {median * 1e3:.3f} ms per step", err=True)

    thresholds = _thresholds(max_slowdown, max_memory_increase, max_metric_drop, quantile)

    def more_one(run: Any) -> int:
        assert baseline is not None  # --until-decided was refused above without a comparison
        return wanted.ask(decide(baseline, run, thresholds, allow_mismatch=True))

    current = run_bench(config, on_repeat=on_repeat, more=more_one if until_decided else None,
                        time_limit=max_time if until_decided else None)
    if save_path:
        save_run(current, save_path)
        click.echo(f"wrote {save_path}", err=True)
    if baseline is None:
        click.echo(json.dumps(current.to_dict(), indent=2) if as_json else render_run(current))
        return
    decision = decide(baseline, current, thresholds, allow_mismatch=allow_mismatch,
                      baseline_name=str(compare_path), current_name=task)
    wanted.report(decision, max_time)
    _emit_decision(decision, as_json)


class _Wanted:
    """--until-decided's exchange with the measurement: the repeats each interim decision asks for."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.last = 0

    def ask(self, decision: Any) -> int:
        self.last = int(decision.more_repeats)
        if self.last:
            click.echo(f"inconclusive so far ({decision.rows[0].change}): about {self.last} more repeats would "
                       "likely decide; measuring those that fit in --max-time", err=True)
        return self.last

    def report(self, decision: Any, max_time: float) -> None:
        if self.active and decision.status == "inconclusive":
            why = (f"--max-time {max_time:g} s left no room for the {self.last} more repeats it wanted" if self.last
                   else "more repeats of this run cannot decide (see the notes)")
            click.echo(f"--until-decided stopped undecided: {why}", err=True)


@click.command("compare")
@click.argument("baseline_file", metavar="BASELINE", type=click.Path(dir_okay=False, path_type=str))
@click.argument("current_file", metavar="CURRENT", type=click.Path(dir_okay=False, path_type=str))
@_gate_options
@handle_errors
def compare_command(baseline_file: str, current_file: str, max_slowdown: float, max_memory_increase: float,
            max_metric_drop: Any, quantile: float, allow_mismatch: bool, as_json: bool) -> None:
    """Compare two saved bench runs without measuring (the same decision as bench --compare).

    Exit codes: 0 pass, 1 regression, 2 usage error or unreadable file, 3 not comparable,
    4 inconclusive (too noisy to decide the speed).
    """
    from batchtune.gate.baseline import load_run
    from batchtune.gate.decision import decide

    baseline, current = load_run(baseline_file), load_run(current_file)
    thresholds = _thresholds(max_slowdown, max_memory_increase, max_metric_drop, quantile)
    decision = decide(baseline, current, thresholds, allow_mismatch=allow_mismatch,
                      baseline_name=baseline_file, current_name=current_file)
    _emit_decision(decision, as_json)


