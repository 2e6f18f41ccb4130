"""What ``batchtune search`` shows while it runs: a live display on a terminal, plain lines elsewhere.

On a terminal, rich's progress display shows the running phase with a spinner and its elapsed time;
during the trials, a bar over the trials (or over the compute budget) with elapsed time and ETA, and
one bar per running trial over its training samples, moved about once a second and at each
evaluation. Finished phases and trials print above the bars as one line each, and the batch
doctor's findings print as findings.

When stderr is not a terminal (CI logs, pipes, tests) every event is one plain line, with the time
since the search started in front of each phase. Every line fits 80 columns. A trial is called by
Optuna's number everywhere ("trial 3", as in the report and optuna-dashboard); the counter beside it
counts the trials done.

rich is imported only when a live display starts, so ``batchtune --help`` stays light.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import threading
import time
from typing import Any, TextIO

import click

WIDTH = 80  # the narrowest terminal the output is laid out for
_MARK = {"error": "ERROR", "warning": "WARN", "info": "info"}


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


def trial_text(ev: Any, room: int = 15) -> str:
    """A finished trial: ``trial 3   b64   lr 1.23e-02 batch 0.9712  1,234/s``, 34 characters and then
    at most ``room`` for the outcome (the full reason is in the report)."""
    p = ev.params
    what = f"trial {ev.number:<3} b{p['batch_size']:<4} lr {p['lr']:.2e} {p['norm']:<5}"
    if p.get("accumulate", 1) > 1:
        what += f" ({p['micro_batch']}x{p['accumulate']})"
    if ev.status == "ok":
        return f"{what} {ev.metric:.4f} {_rate(ev.throughput):>6}/s"
    if ev.status == "pruned" and ev.metric is not None:
        return f"{what} pruned at {ev.metric:.4f}"
    return f"{what} {_short(f'{ev.status.upper()}: {ev.reason or chr(45)}', room)}"


def _rate(samples_per_s: float) -> str:
    """At most 6 characters: 12,345 or 1,235k."""
    x = float(samples_per_s or 0)
    return f"{x:,.0f}" if x < 99_999.5 else f"{x / 1e3:,.0f}k" if x < 9_999_500 else f"{x / 1e6:,.0f}M"


def _count(ev: Any) -> str:
    return f"{min(ev.budget_used, 9.99):>4.0%}" if ev.budget_used is not None else f"{ev.done}/{ev.total}"


def _share(ev: Any) -> float:
    return ev.budget_used if ev.budget_used is not None else min(ev.done, ev.total) / max(1, ev.total)


def pareto_lines(front: Any) -> list[str]:
    """The Pareto front (a trials table) for the terminal: one trial a line, at most 66 characters."""
    from batchtune.units import format_bytes

    lines = []
    for _, r in front.iterrows():
        memory = format_bytes(int(r["peak_memory_bytes"])) if r["peak_memory_bytes"] == r["peak_memory_bytes"] else "-"
        lines.append(f"  trial {int(r['trial']):<3} b{int(r['batch_size']):<5} lr {float(r['lr']):<9.3g} "
                     f"{str(r['norm']):<5} {float(r['metric']):.4f} {_rate(r['throughput']):>6}/s {memory:>10}")
    return lines


def finding_lines(doctor: dict[str, Any]) -> list[str]:
    """The batch doctor's findings (study user attribute ``doctor``), worst first, for the terminal."""
    counts = doctor.get("counts") or {}
    head = f"batch doctor: {counts.get('error', 0)} error(s), {counts.get('warning', 0)} warning(s)"
    findings = [f for f in doctor.get("findings") or [] if f.get("severity") in ("error", "warning")]
    lines = [head + ("" if findings else "; nothing to fix")]
    for f in findings:
        lines.append(f"{_MARK[f['severity']]} [{f['check']}] {f['message']}")
        if f.get("fix") and f["fix"] != "none needed":
            lines.append(f"fix: {f['fix']}")
    return lines


class PlainDisplay:
    """One line per event, for output that is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def _echo(self, text: str, indent: str = "  ") -> None:
        width = min(100, shutil.get_terminal_size((WIDTH, 24)).columns) - 1
        with self.lock:
            # Never inside a word or a flag (--lr-min stays whole, so it can be copied).
            click.echo(textwrap.fill(text, width=width, subsequent_indent=indent, break_long_words=False,
                                     break_on_hyphens=False),
                       err=True, file=self.stream)

    def phase(self, line: str) -> None:
        self._echo(f"== {_clock(time.monotonic() - self.started)} {line}", indent="   ")

    def note(self, text: str) -> None:
        self._echo(text)

    def findings(self, doctor: dict[str, Any]) -> None:
        lines = finding_lines(doctor)
        self._echo(lines[0])
        for line in lines[1:]:
            self._echo(("    " if line.startswith("fix:") else "  ") + line, indent="        ")

    def trial_update(self, update: Any) -> None:
        """Nothing: a plain log gets one line per finished trial."""

    def trial_finished(self, ev: Any) -> None:
        filled = int(8 * min(1.0, _share(ev)))
        best = f"best {ev.best_metric:.4f}" if ev.best_metric is not None else "best -"
        with self.lock:
            click.echo(f"[{'#' * filled}{'-' * (8 - filled)}] {_count(ev)} {trial_text(ev)} | {best}",
                       err=True, file=self.stream)

    def close(self) -> None:
        """Nothing to stop."""


class LiveDisplay:
    """rich's progress display on a terminal: the phase, the trials' bar and the running trials' bars."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True, width=min(100, shutil.get_terminal_size((WIDTH, 24)).columns))
        # Description 34, bar 16, count 7, elapsed 7, ETA 7, spaces: 77 columns.
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", table_column=_column(34)),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(compact=True),
            console=self.console,
            transient=True,
            refresh_per_second=4,
        )
        self.lock = threading.Lock()
        self.phase_task: Any = None
        self.phase_text = ""
        self.phase_start = 0.0
        self.trials_task: Any = None
        self.running: dict[int, Any] = {}
        self.progress.start()

    def _end_phase(self) -> None:
        if self.trials_task is not None:  # the trials' bar belongs to the phase that ran them
            self.progress.remove_task(self.trials_task)
            self.trials_task = None
        if self.phase_task is None:
            return
        took = _clock(time.monotonic() - self.phase_start)
        self.progress.remove_task(self.phase_task)
        self.console.print(f"[green]done[/] {_escape(self.phase_text)} [dim]({took})[/]", highlight=False)
        self.phase_task = None

    def phase(self, line: str) -> None:
        with self.lock:
            self._end_phase()
            self.phase_text, self.phase_start = line, time.monotonic()
            self.phase_task = self.progress.add_task(_short(line, 34), total=None)

    def note(self, text: str) -> None:
        with self.lock:
            self.console.print(_escape(text), highlight=False)

    def findings(self, doctor: dict[str, Any]) -> None:
        style = {"ERROR": "bold red", "WARN": "yellow", "fix:": "dim"}
        with self.lock:
            self._end_phase()  # the findings close the doctor's phase
            lines = finding_lines(doctor)
            self.console.print(f"[bold]{_escape(lines[0])}[/]", highlight=False)
            for line in lines[1:]:
                key = line.split(" ", 1)[0]
                pad = "      " if key == "fix:" else "  "
                self.console.print(f"{pad}[{style.get(key, 'none')}]{_escape(line)}[/]", highlight=False)

    def _trials(self, total: float, budget: bool) -> Any:
        if self.trials_task is None:
            self.trials_task = self.progress.add_task("trials (% of budget)" if budget else "trials done",
                                                      total=total)
        return self.trials_task

    def trial_update(self, update: Any) -> None:
        with self.lock:
            p = update.params
            task = self.running.get(update.number)
            if task is None:
                label = f"  trial {update.number} b{p['batch_size']} {p['norm']}"
                task = self.progress.add_task(_short(label, 34), total=update.total_samples or None)
                self.running[update.number] = task
            if update.metric is not None:
                label = f"  trial {update.number} b{p['batch_size']} {p['norm']} {update.metric:.4f}"
                self.progress.update(task, description=_short(label, 34))
            if update.total_samples:
                self.progress.update(task, total=update.total_samples)
            self.progress.update(task, completed=update.samples)

    def trial_finished(self, ev: Any) -> None:
        with self.lock:
            budget = ev.budget_used is not None
            task = self._trials(100 if budget else ev.total, budget)
            self.progress.update(task, completed=round(min(100.0, 100 * ev.budget_used)) if budget else ev.done)
            if ev.number in self.running:
                self.progress.remove_task(self.running.pop(ev.number))
            best = f"best {ev.best_metric:.4f}" if ev.best_metric is not None else "best -"
            colour = {"ok": "none", "pruned": "dim"}.get(ev.status, "red")
            self.console.print(f"[{colour}]{_escape(trial_text(ev, room=31))}[/] [dim]| {best}[/]", highlight=False)

    def close(self) -> None:
        with self.lock:
            self._end_phase()
            self.progress.stop()


def _column(width: int) -> Any:
    from rich.table import Column

    return Column(width=width, no_wrap=True, overflow="ellipsis")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def make_display(stream: TextIO | None = None) -> PlainDisplay | LiveDisplay:
    """A live display when stderr is a terminal (and TERM is not "dumb"), else plain lines."""
    import os

    target = stream or sys.stderr
    if target.isatty() and os.environ.get("TERM", "") != "dumb":
        return LiveDisplay()
    return PlainDisplay(stream)
