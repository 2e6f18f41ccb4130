"""The climb to faster cells: which neighbour of the trials close to the best is tried next, and when it stops."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from batchtune.study.cells import Cell, CellTable
from batchtune.study.climb import next_step

COLUMNS = ["trial", "status", "feasible", "batch_size", "lr", "lr_position", "norm", "precision", "metric"]


def frame(rows):
    return pd.DataFrame([dict(zip(COLUMNS, r)) for r in rows], columns=COLUMNS)


def cell(batch, norm, seconds_per_step):
    """A measured cell: three rounds of steps at ``seconds_per_step`` (reference time 1, so ratios are seconds)."""
    steps = tuple((seconds_per_step * f,) * 3 for f in (1.0, 1.01, 0.99))
    return Cell(batch_size=batch, norm=norm, precision="fp32", ratios=steps, reference=1.0)


# Per-sample cost falls with the batch size up to 64 (128 is no faster per sample than 64); "none" is
# cheaper than "batch" at every size, "group" costlier.
CELLS = CellTable(cells={c.key: c for c in [
    cell(16, "batch", 0.016), cell(32, "batch", 0.020), cell(64, "batch", 0.030), cell(128, "batch", 0.060),
    cell(16, "none", 0.010), cell(32, "none", 0.012), cell(64, "none", 0.020), cell(128, "none", 0.040),
    cell(16, "group", 0.030), cell(32, "group", 0.040), cell(64, "group", 0.060), cell(128, "group", 0.120),
]})
SIZES, NORMS = (16, 32, 64, 128), ("batch", "none", "group")


def step(trials, cells=CELLS, close=0.02, **kw):
    return next_step(trials, cells, sizes=SIZES, norms=NORMS, precisions=("fp32",), lr_param="lr_position",
                     mode=kw.pop("mode", "max"), close=close, **kw)


def test_from_the_best_the_next_batch_size_of_its_norm_at_the_same_lr_position():
    trials = frame([(0, "ok", True, 16, 0.01, 0.4, "batch", "fp32", 0.98),
                    (1, "ok", True, 16, 0.03, 0.9, "none", "fp32", 0.90)])
    s = step(trials)
    assert s.params == {"batch_size": 32, "lr_position": 0.4, "norm": "batch"} and s.anchor == 0
    assert "trial 0" in s.why and "next batch size" in s.why


def test_a_neighbour_close_to_the_best_is_climbed_from_and_one_that_is_not_ends_the_direction():
    base = [(0, "ok", True, 16, 0.01, 0.4, "batch", "fp32", 0.98),
            (1, "ok", True, 16, 0.03, 0.9, "none", "fp32", 0.965)]  # "none" came close once, at another LR
    # Batch 32 held (0.975 is within 0.02): the climb goes on from it, the fastest close trial.
    held = frame(base + [(2, "ok", True, 32, 0.02, 0.4, "batch", "fp32", 0.975)])
    assert step(held).params == {"batch_size": 64, "lr_position": 0.4, "norm": "batch"}
    # It did not (0.90): from trial 1 (the fastest close trial), batch 32 of "none" at its own position.
    lost = frame(base + [(2, "ok", True, 32, 0.02, 0.4, "batch", "fp32", 0.90)])
    assert step(lost).params == {"batch_size": 32, "lr_position": 0.9, "norm": "none"}
    # That lost too: back at trial 0, "none" at batch 16 at trial 0's position ("group" is slower).
    both = frame(base + [(2, "ok", True, 32, 0.02, 0.4, "batch", "fp32", 0.90),
                         (3, "pruned", True, 32, 0.05, 0.9, "none", "fp32", None)])
    assert step(both).params == {"batch_size": 16, "lr_position": 0.4, "norm": "none"}


def test_a_larger_batch_is_tried_at_the_anchors_own_lr_then_at_its_window_position():
    """The range tests' minima need not scale like the best LR (on the tiny transformer they move the other
    way): a larger batch is tried first at the anchor's own LR, converted to a position in the larger cell's
    window, and at the carried position only when that lost. Another norm keeps the window position."""
    from batchtune.study.lr_range import LrBounds

    # Windows that grow 4x per doubling of the batch; trial 0 ran batch 16 at lr 0.01, position 0.4.
    bounds = LrBounds(windows={"16/batch": (0.001, 0.1), "32/batch": (0.004, 0.4), "64/batch": (0.016, 1.6),
                               "16/none": (0.001, 0.1), "32/none": (0.004, 0.4)},
                      exponent=2.0, exponent_se=None, fallback=(0.001, 1.6))
    base = [(0, "ok", True, 16, 0.01, 0.5, "batch", "fp32", 0.98)]
    first = step(frame(base), bounds=bounds)
    own = round(math.log(0.01 / 0.004) / math.log(100), 4)  # lr 0.01 in batch 32's window
    assert first.params == {"batch_size": 32, "lr_position": own, "norm": "batch"}
    assert "its own LR 0.01" in first.why
    # It lost: the same cell again, at the position the range tests carry (lr 0.04).
    lost = frame(base + [(1, "ok", True, 32, 0.01, own, "batch", "fp32", 0.90)])
    assert step(lost, bounds=bounds).params == {"batch_size": 32, "lr_position": 0.5, "norm": "batch"}
    # It held: no second LR in that cell; the climb goes on from it, to batch 64 at its own LR (below that
    # cell's window: its low end).
    held = frame(base + [(1, "ok", True, 32, 0.01, own, "batch", "fp32", 0.975)])
    nxt = step(held, bounds=bounds)
    assert nxt.anchor == 1 and nxt.params == {"batch_size": 64, "lr_position": 0.0, "norm": "batch"}
    # Another norm at the same batch size keeps the window position (the range tests measured how its LR
    # differs): with batch 32 lost at both LRs, from trial 0 "none" at batch 16 at position 0.5, not at lr 0.01.
    other = frame(base + [(1, "ok", True, 32, 0.01, own, "batch", "fp32", 0.90),
                          (2, "ok", True, 32, 0.04, 0.5, "batch", "fp32", 0.90),
                          (3, "ok", True, 16, 0.03, 0.74, "none", "fp32", 0.975),
                          (4, "ok", True, 32, 0.03, 0.4375, "none", "fp32", 0.90),
                          (5, "ok", True, 32, 0.12, 0.74, "none", "fp32", 0.90)])
    last = step(other, bounds=bounds)
    assert last.anchor == 0 and last.params == {"batch_size": 16, "lr_position": 0.5, "norm": "none"}
    assert last.why.endswith("at the same LR position")


def test_a_norm_with_no_trial_close_to_the_best_is_not_climbed_to():
    trials = frame([(0, "ok", True, 16, 0.01, 0.4, "batch", "fp32", 0.98),
                    (1, "ok", True, 16, 0.03, 0.9, "none", "fp32", 0.90),
                    (2, "ok", True, 32, 0.02, 0.4, "batch", "fp32", 0.90)])
    # Batch 32 lost, and "none" (faster) never came within 0.02 of the best: nothing left to try.
    assert step(trials) is None


def test_stops_when_no_faster_untried_neighbour_is_left():
    trials = frame([(0, "ok", True, 64, 0.01, 0.4, "batch", "fp32", 0.98),
                    (1, "ok", True, 64, 0.01, 0.4, "none", "fp32", 0.97)])
    # From trial 1 (64/none, the fastest): 128/none is slower per sample. From trial 0: 128/batch is slower,
    # 64/group slower, 64/none tried at this position.
    assert step(trials) is None
    # Another LR position in a tried cell is a new configuration.
    moved = frame([(0, "ok", True, 64, 0.01, 0.4, "batch", "fp32", 0.98),
                   (1, "ok", True, 64, 0.01, 0.7, "none", "fp32", 0.97)])
    assert step(moved).params == {"batch_size": 64, "lr_position": 0.4, "norm": "none"}


def test_cells_that_do_not_fit_are_skipped_and_nothing_to_climb_without_a_finished_trial():
    trials = frame([(0, "ok", True, 16, 0.01, 0.4, "batch", "fp32", 0.98),
                    (1, "ok", True, 16, 0.01, 0.8, "none", "fp32", 0.97)])
    # 32/none does not fit, so from trial 1 nothing; from trial 0, 32/batch.
    assert step(trials, unfit=frozenset({"32/none/fp32"})).params == {"batch_size": 32, "lr_position": 0.4,
                                                                       "norm": "batch"}
    assert step(frame([(0, "pruned", True, 16, 0.01, 0.4, "batch", "fp32", None)])) is None


def test_lower_is_better_and_no_cell_measurement():
    trials = frame([(0, "ok", True, 16, 0.01, 0.4, "batch", "fp32", 0.10),
                    (1, "ok", True, 64, 0.01, 0.4, "batch", "fp32", 0.50)])
    # Without cells only a larger batch is taken as faster (no norm is known to be cheaper). Trial 1 is far
    # from the best loss, so it is not climbed from; from trial 0, batch 32.
    assert step(trials, cells=None, close=0.05, mode="min").params == {"batch_size": 32, "lr_position": 0.4,
                                                                        "norm": "batch"}
    # Once batch 32 ran and lost, nothing is left to climb to.
    lost = frame([(0, "ok", True, 16, 0.01, 0.4, "batch", "fp32", 0.10),
                  (1, "ok", True, 32, 0.01, 0.4, "batch", "fp32", 0.50)])
    assert step(lost, cells=None, close=0.05, mode="min") is None


class _Phase:
    """A real (in-memory) study, plan and config for the climb phase in run.py, with one finished trial at
    batch 8 (lr position 0.3); batch 16 holds at that position, batch 32 does not."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        import optuna

        from batchtune.study.config import SearchConfig, Tolerance
        from batchtune.study.coordinator import trial_space
        from batchtune.study.plan import TrialPlan

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.full = full = 1000
        self.plan = TrialPlan(splits={8: None, 16: None, 32: None, 64: None}, rule="none", reference=None,
                              warmup_epochs=0, objective="metric", target=None, mode="max", lr_bounds=SimpleNamespace(),
                              trial_budget=None, trial_samples=full, climb_samples=2 * full)
        self.cfg = SearchConfig(task_path="task.py", trials=50, tolerance=Tolerance(0.01, "absolute"))

        @dataclass(frozen=True)
        class Setup:  # the parts of run._Setup the phase reads
            norms: tuple
            task: Any
            workers: int = 2

        self.setup = Setup(norms=("batch",), task=SimpleNamespace(metric_mode="max"))
        self.study = optuna.create_study(direction="maximize")
        self.space = trial_space(self.cfg, self.plan, self.setup.norms)
        self.metric = {8: 0.95, 16: 0.948, 32: 0.90, 64: 0.96}
        first = self.study.ask(self.space)
        self.study.tell(first, state=optuna.trial.TrialState.FAIL)  # not counted; the real first trial is enqueued
        self.study.enqueue_trial({"batch_size": 8, "lr_position": 0.3, "norm": "batch"})
        self.tell(self.study.ask(self.space))

    def tell(self, trial: Any) -> None:
        b = trial.params["batch_size"]
        trial.set_user_attr("result", {"status": "ok", "final_metric": self.metric[b], "samples": self.full,
                                       "effective_batch_size": b, "throughput": 1.0, "peak_memory_bytes": 1})
        self.study.tell(trial, self.metric[b])

    def climb(self, monkeypatch: Any) -> list[dict]:
        """The climb phase, each of its one-trial runs taken and told here; the parameters it ran, in order."""
        from batchtune.study import run

        ran = []

        def fake_run_trials(study_, cfg_, setup_, plan_, on_event, on_update=None, pool=None):
            trial = study_.ask(self.space)
            ran.append(dict(trial.params))
            self.tell(trial)
            return False

        monkeypatch.setattr(run, "_run_trials", fake_run_trials)
        assert run._climb(self.study, self.cfg, self.setup, self.plan, None, lambda line: None) is False
        return ran


def test_the_climb_phase_queues_one_neighbour_at_a_time_within_its_share(monkeypatch):
    """The phase in run.py on a real (in-memory) study: each step is queued with its origin, runs, and the
    next step sees its result; it stops at its share of the budget."""
    import optuna

    from batchtune.study import run
    from batchtune.study.plan import TrialPlan

    phase = _Phase()
    study, space, cfg, setup, plan, metric, full = (phase.study, phase.space, phase.cfg, phase.setup, phase.plan,
                                                    phase.metric, phase.full)

    def tell(trial, samples):
        phase.tell(trial)

    ran = []

    def fake_run_trials(study_, cfg_, setup_, plan_, on_event, on_update=None, pool=None):
        assert setup_.workers == 1  # one thread takes the one queued trial
        trial = study_.ask(space)
        ran.append(dict(trial.params))
        tell(trial, full)
        return False

    monkeypatch.setattr(run, "_run_trials", fake_run_trials)
    assert run._climb(study, cfg, setup, plan, None, lambda line: None) is False
    # Batch 16 (held, so climbed from), then 32 (lost): two full trials, the climb's whole share.
    assert ran == [{"batch_size": 16, "lr_position": 0.3, "norm": "batch"},
                   {"batch_size": 32, "lr_position": 0.3, "norm": "batch"}]
    climbed = [t for t in study.trials if t.user_attrs.get("origin") == "climb"]
    assert [t.user_attrs["climb"] for t in climbed] == [
        "faster than trial 1: the next batch size of batch norm, at the same LR position",
        "faster than trial 2: the next batch size of batch norm, at the same LR position"]
    # A climb whose queued trial does not run (the time limit passed) ends instead of queueing it again.
    monkeypatch.setattr(run, "_run_trials", lambda *args, **kwargs: False)
    plan_more = TrialPlan(**{**plan.__dict__, "climb_samples": 10 * full})
    metric[32] = 0.95
    study.enqueue_trial({"batch_size": 32, "lr_position": 0.5, "norm": "batch"})
    tell(study.ask(space), full)  # batch 32 held at another LR: batch 64 at its position is next
    before = len(study.trials)
    assert run._climb(study, cfg, setup, plan_more, None, lambda line: None) is False
    assert len(study.trials) == before + 1  # one queued (waiting for a resume), not one per loop
    waiting = study.trials[-1]
    assert waiting.state == optuna.trial.TrialState.WAITING and waiting.user_attrs["origin"] == "climb"
    assert waiting.system_attrs["fixed_params"] == {"batch_size": 64, "lr_position": 0.5, "norm": "batch"}


def test_a_neighbour_another_coordinator_runs_is_waited_for_not_run_twice(monkeypatch):
    """Two coordinators of one study read the same trials and reach the same climb step: the second does
    not queue it again (nor run it); it waits for the first's result and climbs on from there."""
    import time

    import optuna


    phase = _Phase()
    # The other coordinator queued batch 16 and its worker is training it.
    phase.study.enqueue_trial({"batch_size": 16, "lr_position": 0.3, "norm": "batch"})
    theirs = phase.study.ask(phase.space)
    waits = []

    def sleep(seconds):  # the other coordinator's trial finishes while this one waits
        waits.append(seconds)
        phase.tell(theirs)

    monkeypatch.setattr(time, "sleep", sleep)
    ran = phase.climb(monkeypatch)
    assert waits == [1.0]
    assert ran == [{"batch_size": 32, "lr_position": 0.3, "norm": "batch"}]  # from batch 16's result on
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    at_16 = [t for t in phase.study.get_trials(states=states) if t.params.get("batch_size") == 16
             or t.system_attrs.get("fixed_params", {}).get("batch_size") == 16]
    assert len(at_16) == 1 and at_16[0].state == optuna.trial.TrialState.COMPLETE


def test_a_climb_step_whose_earlier_copy_failed_is_queued_and_run_again(monkeypatch):
    """A copy of the step that was interrupted (failed, not counted) does not block it: the climb queues it
    again and runs it, without waiting and without looping."""
    import time

    import optuna


    phase = _Phase()
    phase.study.enqueue_trial({"batch_size": 16, "lr_position": 0.3, "norm": "batch"})
    cut = phase.study.ask(phase.space)
    cut.set_user_attr("result", {"status": "interrupted", "reason": "Ctrl-C", "samples": 100,
                                 "effective_batch_size": 16})
    phase.study.tell(cut, state=optuna.trial.TrialState.FAIL)

    def sleep(seconds):
        raise AssertionError("nothing runs elsewhere: no wait")

    monkeypatch.setattr(time, "sleep", sleep)
    assert phase.climb(monkeypatch) == [{"batch_size": 16, "lr_position": 0.3, "norm": "batch"},
                                        {"batch_size": 32, "lr_position": 0.3, "norm": "batch"}]
