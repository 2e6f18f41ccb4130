"""The search's terminal output: plain lines and the live display both fit 80 columns and say the same things.

benchmarks/terminal_check.py runs a real search under tmux at 80 columns and checks the screen.
"""

from __future__ import annotations

import io

from batchtune.cli.live import LiveDisplay, PlainDisplay, finding_lines, trial_text
from batchtune.study.coordinator import TrialEvent, TrialUpdate

PARAMS = {"batch_size": 1024, "lr": 0.000123456, "norm": "group", "precision": "fp32", "micro_batch": 1024,
          "accumulate": 1}


def events() -> list[TrialEvent]:
    """One trial of each outcome, with the widest figures a line can get."""
    common = dict(params=PARAMS, peak_memory_bytes=2**30, total=20, best_metric=0.98765)
    return [
        TrialEvent(number=7, status="ok", metric=0.987654, throughput=123_456.7, reason=None, done=8, **common),
        TrialEvent(number=123, status="pruned", metric=0.5, throughput=None, reason="pruned by successive halving",
                   done=19, budget_used=0.57, **common),
        TrialEvent(number=999, status="timeout", metric=None, throughput=None,
                   reason="no result within the trial timeout of 1800 s; the worker was killed", done=20,
                   budget_used=1.2, **common),
        TrialEvent(number=3, status="oom", metric=None, throughput=None, reason="out of memory " * 20, done=3,
                   **{**common, "best_metric": None}),
    ]


DOCTOR = {
    "counts": {"error": 1, "warning": 1, "info": 2},
    "findings": [
        {"severity": "error", "check": "sorted_labels", "message": "the training set is sorted by label " * 3,
         "fix": "shuffle the data before the split"},
        {"severity": "warning", "check": "bn_small_batch", "message": "BatchNorm at batch 8", "fix": "none needed"},
        {"severity": "info", "check": "steps", "message": "100 steps per epoch", "fix": "none needed"},
    ],
}


def test_plain_lines_fit_80_columns_and_number_trials_as_optuna_does(capsys):
    display = PlainDisplay()
    display.phase("speed and memory: 8 cells x 3 interleaved rounds of 12 timed steps, on the widest device name")
    for ev in events():
        display.trial_finished(ev)
    display.findings(DOCTOR)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert lines[0].startswith("== 0:00 speed and memory")
    assert "] 8/20 trial 7   b1024 lr 1.23e-04 group 0.9877   123k/s | best 0.9877" in err
    assert " 57% trial 123 " in err and " 57% trial 123 " in err and "TIMEOUT: no re…" in err
    assert "batch doctor: 1 error(s), 1 warning(s)" in err and "  ERROR [sorted_labels] the training set" in err
    assert "\n    fix: shuffle the data" in err and "[steps]" not in err  # info findings stay in the report


def test_live_display_shows_phases_trials_and_findings_within_80_columns():
    from rich.console import Console

    # What is printed above the bars (a console that is not a terminal shows no live bars) ...
    console = Console(file=io.StringIO(), width=80, force_terminal=False, record=True)
    display = LiveDisplay(console=console)
    display.phase("loading and dry-running examples/digits_cnn.py")
    display.phase("running the batch doctor")
    display.findings(DOCTOR)
    display.phase("running the trials")
    display.trial_update(TrialUpdate(7, PARAMS, 0, 4096))
    display.trial_update(TrialUpdate(7, PARAMS, 2048, 4096, metric=0.9))
    assert len(display.running) == 1
    # ... and the bars themselves: the phase, the trials and the running trial.
    display.trial_finished(events()[1])
    bars = Console(file=io.StringIO(), width=80, record=True)
    bars.print(display.progress.get_renderable())
    shown = bars.export_text().splitlines()
    assert len(shown) == 3 and all(len(line) <= 80 for line in shown), shown
    running = next(line for line in shown if "trial 7 b1024 group 0.9000" in line)
    assert "2048/4096" in running and any("trials (% of budget)" in line and "57/100" in line for line in shown)
    for ev in events():
        display.trial_finished(ev)
    assert not display.running and display.trials_task is not None
    display.phase("re-training 4 candidate(s) on 2 fresh seed(s) each")
    assert display.trials_task is None  # the trials' bar ended with its phase
    display.close()
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "done loading and dry-running examples/digits_cnn.py" in text
    assert "done running the trials" in text and "done re-training 4 candidate(s)" in text
    assert "trial 999 b1024 lr 1.23e-04 group TIMEOUT: no result within the" in text
    assert "ERROR [sorted_labels]" in text and "fix: shuffle the data" in text


def test_trial_text_stays_within_its_room():
    for ev in events():
        assert len(trial_text(ev)) <= 34 + 16
        assert len(trial_text(ev, room=31)) <= 34 + 32
    assert finding_lines({"counts": {}, "findings": []}) == ["batch doctor: 0 error(s), 0 warning(s); nothing to fix"]


def test_pareto_front_prints_one_trial_a_line_within_80_columns():
    import pandas as pd

    from batchtune.cli.live import pareto_lines

    front = pd.DataFrame([{"trial": 12, "batch_size": 1024, "lr": 0.000123456, "norm": "group", "metric": 0.98765,
                           "throughput": 123_456.0, "peak_memory_bytes": 5 * 2**30},
                          {"trial": 3, "batch_size": 8, "lr": 0.05, "norm": "none", "metric": 0.5,
                           "throughput": 900.0, "peak_memory_bytes": float("nan")}])
    lines = pareto_lines(front)
    assert lines[0] == "  trial 12  b1024  lr 0.000123  group 0.9877   123k/s    5.0 GiB"
    assert lines[1].endswith("900/s          -") and all(len(line) <= 80 for line in lines)


def test_wrapped_lines_never_split_a_flag(capsys):
    """A warning that names flags wraps between words only: ``--lr-min`` stays whole, so it can be copied."""
    from batchtune.cli.options import echo_wrapped

    for pad in range(40):  # every position of the flags against the 80-column edge
        echo_wrapped("warning: " + "x" * pad + " raise --rerun-seeds, or search below its LR (--lr-min 0.0024 --lr-max 0.073)")
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert not [line for line in lines if line.rstrip().endswith("-")], lines
