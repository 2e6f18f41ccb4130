"""The gate's decision rule on synthetic samples: no measuring, no processes."""

from __future__ import annotations

import numpy as np
import pytest

from batchtune.gate.baseline import BenchRun
from batchtune.gate.decision import (
    EXIT_MISMATCH,
    EXIT_PASS,
    EXIT_REGRESSION,
    INCONCLUSIVE,
    PASS,
    REGRESSION,
    STALE,
    Thresholds,
    decide,
    memory_verdict,
    metric_verdict,
    speed_change,
)
from batchtune.gate.render import render_markdown
from batchtune.study.config import Tolerance

FINGERPRINT = {
    "device_name": "cpu-model", "device_memory_bytes": 8 << 30, "cpu": "cpu-model", "threads": 1,
    "torch": "2.13.0", "cuda": None, "batchtune": "0.1.0", "precision": "fp32", "task_sha256": "ab" * 32,
    "optuna": "5.0.0", "python": "3.11.7", "cudnn": None,
}
CONFIG = {
    "batch_size": 32, "lr": 0.05, "norm": "batch", "precision": "fp32", "device": "cpu", "clock": "cpu",
    "epochs": None, "seed": 0, "repeat": 8, "steps": 40, "warmup": 10, "processes": 2, "calibration": None,
}
CALIBRATED = dict(CONFIG, calibration="reference/v1")


def repeats(level: float, *, seed: int, n_repeats: int = 8, steps: int = 40, between: float = 0.02,
            within: float = 0.05) -> list[list[float]]:
    """Step times (s) of ``n_repeats`` repeats: each repeat has its own level, steps scatter around it."""
    rng = np.random.default_rng(seed)
    levels = level * (1 + between * rng.standard_normal(n_repeats))
    return [list(lv * (1 + within * np.abs(rng.standard_normal(steps)))) for lv in levels]


def machine(samples: list[list[float]], speed: float | list[list[float]], *, seed: int,
            reference: float = 0.003, jitter: float = 0.01) -> tuple[list[list[float]], list[list[float]]]:
    """Steps and their reference runs on a machine whose slowness factor is ``speed``.

    ``speed`` (one factor, or one per step) multiplies both a step and the reference run before it,
    as a busy SMT sibling or a neighbouring VM does; each reference run also has its own jitter.
    """
    rng = np.random.default_rng(seed)
    factors = [[speed] * len(rep) for rep in samples] if isinstance(speed, float) else speed
    steps = [[t * f for t, f in zip(rep, fs)] for rep, fs in zip(samples, factors)]
    refs = [[reference * f * (1 + jitter * abs(rng.standard_normal())) for f in fs] for fs in factors]
    return steps, refs


def run(samples: list[list[float]], *, memory: int = 300 << 20, metric: float | None = None,
        fingerprint: dict | None = None, config: dict | None = None,
        calibration: list[list[float]] | None = None) -> BenchRun:
    return BenchRun(
        task="task.py", created="2025-01-01T00:00:00+00:00",
        config=dict(config or (CALIBRATED if calibration is not None else CONFIG)),
        fingerprint=dict(fingerprint or FINGERPRINT), samples=samples, wall_samples=samples, calibration=calibration,
        repeat_process=[i % 2 for i in range(len(samples))], peak_memory_bytes=[memory] * len(samples),
        memory_kind="cpu-rss", flops_per_sample=1e6, metric=metric,
    )


def test_clear_regression_fails():
    change = speed_change(repeats(0.010, seed=1), repeats(0.0115, seed=2), max_slowdown=0.05)
    assert change.verdict == REGRESSION
    assert 0.10 < change.slowdown < 0.20 and change.low > 1.0


def test_noise_only_passes():
    for seed in range(5):
        change = speed_change(repeats(0.010, seed=seed), repeats(0.010, seed=100 + seed), max_slowdown=0.05)
        assert change.verdict == PASS
        assert change.low < 1.0 < change.high


def test_change_beyond_threshold_but_within_repeat_spread_is_inconclusive():
    # Each repeat is very steady inside, but repeats differ by up to 20%: the medians differ by
    # more than 5% only because of which repeats landed where. Pooled steps would look decisive.
    base = [[lv] * 40 for lv in (1.0, 0.9, 1.1, 0.95, 1.05, 1.0)]
    cur = [[lv] * 40 for lv in (1.2, 0.9, 1.15, 0.95, 1.1, 1.05)]
    change = speed_change(base, cur, max_slowdown=0.05)
    assert change.ratio > 1.05
    assert change.verdict == INCONCLUSIVE and change.low <= 1.0


def test_large_improvement_is_stale_not_failure():
    base, cur = run(repeats(0.010, seed=3)), run(repeats(0.008, seed=4))
    decision = decide(base, cur)
    assert decision.rows[0].values["decision"] == STALE
    assert decision.exit_code == EXIT_PASS and decision.status == "stale"
    assert "refresh" in render_markdown(decision)


def test_bootstrap_is_deterministic():
    a, b = repeats(0.010, seed=5), repeats(0.0104, seed=6)
    assert speed_change(a, b, max_slowdown=0.05) == speed_change(a, b, max_slowdown=0.05)


def test_unequal_repeat_lengths():
    base = repeats(0.010, seed=7, steps=40)
    cur = repeats(0.013, seed=8, steps=25) + repeats(0.013, seed=9, n_repeats=2, steps=7)
    assert speed_change(base, cur, max_slowdown=0.05).verdict == REGRESSION


def test_memory_growth_fails_and_shrink_is_stale():
    assert memory_verdict(1000, 1020, max_increase=0.03) == (pytest.approx(0.02), PASS)
    assert memory_verdict(1000, 1100, max_increase=0.03)[1] == REGRESSION
    assert memory_verdict(1000, 800, max_increase=0.03)[1] == STALE
    samples = repeats(0.010, seed=10)
    decision = decide(run(samples, memory=400 << 20), run(samples, memory=440 << 20))
    memory_row = decision.rows[2]
    assert memory_row.decision == REGRESSION and decision.exit_code == EXIT_REGRESSION
    assert decision.rows[0].decision == PASS  # the speed is unchanged: only memory fails


def test_metric_drop():
    rel = Tolerance(0.005, "relative")
    assert metric_verdict(0.95, 0.948, mode="max", tolerance=rel)[1] == PASS
    assert metric_verdict(0.95, 0.93, mode="max", tolerance=rel)[1] == REGRESSION
    assert metric_verdict(0.95, 0.97, mode="max", tolerance=rel)[1] == STALE
    # min mode: a loss that grows is worse.
    assert metric_verdict(0.20, 0.25, mode="min", tolerance=rel)[1] == REGRESSION
    absolute = Tolerance(0.01, "absolute")  # 1 percentage point
    assert metric_verdict(0.95, 0.945, mode="max", tolerance=absolute)[1] == PASS
    assert metric_verdict(0.95, 0.935, mode="max", tolerance=absolute)[1] == REGRESSION
    samples = repeats(0.010, seed=11)
    config = dict(CONFIG, epochs=2.0)
    decision = decide(run(samples, metric=0.95, config=config), run(samples, metric=0.90, config=config))
    assert decision.rows[-1].decision == REGRESSION and decision.exit_code == EXIT_REGRESSION


def test_fingerprint_mismatch_is_refused_unless_allowed():
    samples = repeats(0.010, seed=12)
    other = dict(FINGERPRINT, torch="2.0.0", cpu="another-cpu")
    refused = decide(run(samples), run(samples, fingerprint=other))
    assert refused.exit_code == EXIT_MISMATCH and refused.rows == ()
    assert {m.field for m in refused.mismatches} == {"torch", "cpu"}
    text = render_markdown(refused)
    assert "torch" in text and "--allow-mismatch" in text
    allowed = decide(run(samples), run(samples, fingerprint=other), allow_mismatch=True)
    assert allowed.exit_code == EXIT_PASS and any("torch differs" in n for n in allowed.notes)


def test_noted_fields_never_refuse():
    samples = repeats(0.010, seed=13)
    decision = decide(run(samples), run(samples, fingerprint=dict(FINGERPRINT, optuna="4.2.0")))
    assert decision.exit_code == EXIT_PASS and any("optuna differs" in n for n in decision.notes)


def test_configuration_mismatch_is_refused_but_effort_may_differ():
    samples = repeats(0.010, seed=14)
    assert decide(run(samples), run(samples, config=dict(CONFIG, batch_size=64))).exit_code == EXIT_MISMATCH
    more = dict(CONFIG, repeat=20, steps=80)
    assert decide(run(samples), run(samples, config=more)).exit_code == EXIT_PASS


def test_markdown_table_has_every_figure():
    samples = repeats(0.010, seed=15)
    text = render_markdown(decide(run(samples), run(repeats(0.013, seed=16)), Thresholds(max_slowdown=0.05)))
    assert "REGRESSION (exit 1)" in text
    header = next(line for line in text.splitlines() if line.startswith("| figure"))
    for column in ("baseline", "current", "change", "threshold", "verdict"):
        assert column in header
    for figure in ("throughput", "peak memory", "FLOPs per sample"):
        assert figure in text


def test_contention_difference_is_noted():
    samples = repeats(0.010, seed=17)
    busy = run(samples)
    busy.wall_samples = [[4 * t for t in rep] for rep in samples]  # the steps got a quarter of a core
    decision = decide(run(samples), busy)
    assert busy.cpu_share == pytest.approx(0.25)
    assert any("much busier" in note for note in decision.notes)
    assert decision.exit_code == EXIT_PASS


def test_quantile_choice_trades_tail_regressions_for_noise_resistance():
    # Three steps in five got 50% slower (a periodic extra cost): the fast end of the distribution
    # is untouched, so the default 10th percentile passes it and the median catches it.
    base = repeats(0.010, seed=18)
    cur = [[t * (1.5 if i % 5 < 3 else 1.0) for i, t in enumerate(rep)] for rep in repeats(0.010, seed=19)]
    assert speed_change(base, cur, max_slowdown=0.05, quantile=0.10).verdict == PASS
    assert speed_change(base, cur, max_slowdown=0.05, quantile=0.5).verdict == REGRESSION


def test_drift_that_hits_steps_and_reference_alike_cancels():
    # The whole machine is 20% slower during the current run: raw step times call it a regression,
    # the calibrated figure (step time / the reference run before it) sees no change.
    base_steps, base_ref = machine(repeats(0.010, seed=20), 1.0, seed=21)
    cur_steps, cur_ref = machine(repeats(0.010, seed=22), 1.20, seed=23)
    assert speed_change(base_steps, cur_steps, max_slowdown=0.05).verdict == REGRESSION
    calibrated = speed_change(base_steps, cur_steps, max_slowdown=0.05,
                              baseline_calibration=base_ref, current_calibration=cur_ref)
    assert calibrated.verdict == PASS and abs(calibrated.slowdown) < 0.03 and calibrated.low < 1.0 < calibrated.high


def test_slowdown_is_found_under_drift_that_hides_it_from_raw_times():
    # The code got 15% slower but the machine is 13% faster now: raw times barely move.
    base_steps, base_ref = machine(repeats(0.010, seed=24), 1.0, seed=25)
    cur_steps, cur_ref = machine(repeats(0.0115, seed=26), 0.87, seed=27)
    assert speed_change(base_steps, cur_steps, max_slowdown=0.05).verdict == PASS
    calibrated = speed_change(base_steps, cur_steps, max_slowdown=0.05,
                              baseline_calibration=base_ref, current_calibration=cur_ref)
    assert calibrated.verdict == REGRESSION and 0.10 < calibrated.slowdown < 0.20 and calibrated.low > 1.05


def test_short_bursts_cancel_step_by_step():
    # Bursts slow random single steps by 30-60% in both runs, each step together with its reference run.
    rng = np.random.default_rng(28)

    def bursts(n_repeats: int = 8, steps: int = 40) -> list[list[float]]:
        return [list(1 + (rng.random(steps) < 0.3) * rng.uniform(0.3, 0.6, steps)) for _ in range(n_repeats)]

    base_steps, base_ref = machine(repeats(0.010, seed=29), bursts(), seed=30)
    cur_steps, cur_ref = machine(repeats(0.010, seed=31), bursts(), seed=32)
    same = speed_change(base_steps, cur_steps, max_slowdown=0.05, baseline_calibration=base_ref, current_calibration=cur_ref)
    assert same.verdict == PASS and abs(same.slowdown) < 0.02
    slow_steps, slow_ref = machine(repeats(0.0115, seed=33), bursts(), seed=34)
    slowed = speed_change(base_steps, slow_steps, max_slowdown=0.05, baseline_calibration=base_ref, current_calibration=slow_ref)
    assert slowed.verdict == REGRESSION


def test_calibration_on_one_side_only_or_misshapen_is_refused():
    steps, refs = machine(repeats(0.010, seed=35), 1.0, seed=36)
    with pytest.raises(ValueError, match="both sides or neither"):
        speed_change(steps, steps, max_slowdown=0.05, baseline_calibration=refs)
    with pytest.raises(ValueError, match="one calibration sample per step"):
        speed_change(steps, steps, max_slowdown=0.05, baseline_calibration=refs, current_calibration=[r[:-1] for r in refs])


def test_decision_uses_the_calibration_of_calibrated_runs():
    base_steps, base_ref = machine(repeats(0.010, seed=37), 1.0, seed=38)
    cur_steps, cur_ref = machine(repeats(0.010, seed=39), 1.25, seed=40)
    decision = decide(run(base_steps, calibration=base_ref), run(cur_steps, calibration=cur_ref))
    speed = decision.rows[0]
    assert speed.values["calibrated"] and speed.decision == PASS and decision.exit_code == EXIT_PASS
    assert "median step time / reference" in render_markdown(decision)
    # A run without calibration (an old file compared anyway) is refused: config.calibration differs.
    refused = decide(run(base_steps, calibration=base_ref), run(cur_steps))
    assert refused.exit_code == EXIT_MISMATCH and [m.field for m in refused.mismatches] == ["calibration"]


def test_calibrated_improvement_is_stale():
    base_steps, base_ref = machine(repeats(0.010, seed=41), 1.0, seed=42)
    cur_steps, cur_ref = machine(repeats(0.008, seed=43), 1.1, seed=44)
    change = speed_change(base_steps, cur_steps, max_slowdown=0.05, baseline_calibration=base_ref, current_calibration=cur_ref)
    assert change.verdict == STALE and change.high < 1.0


def test_interleaved_runs_are_compared_repeat_for_repeat():
    # Load bursts hit repeat r of both sides alike: levels swing 30% between repeats, the current
    # side is 10% slower in every pair. Unpaired, the swings hide it; paired, they cancel.
    rng = np.random.default_rng(22)
    levels = 0.010 * (1 + 0.3 * rng.random(10))
    base = [list(lv * (1 + 0.01 * rng.random(40))) for lv in levels]
    cur = [list(1.10 * lv * (1 + 0.01 * rng.random(40))) for lv in levels]
    assert speed_change(base, cur, max_slowdown=0.05, confidence=0.99).verdict == INCONCLUSIVE
    assert speed_change(base, cur, max_slowdown=0.05, confidence=0.99, paired=True).verdict == REGRESSION
    config = dict(CONFIG, interleave_id="abc123")
    decision = decide(run(base, config=config), run(cur, config=config))
    assert decision.rows[0].values["paired"] and decision.exit_code == EXIT_REGRESSION


def test_a_large_machine_speed_change_is_noted():
    base_steps, base_ref = machine(repeats(0.010, seed=45), 1.0, seed=46)
    cur_steps, cur_ref = machine(repeats(0.010, seed=47), 0.7, seed=48)
    decision = decide(run(base_steps, calibration=base_ref), run(cur_steps, calibration=cur_ref))
    assert decision.exit_code == EXIT_PASS
    assert any("very different speed" in note for note in decision.notes)
    steady = decide(run(base_steps, calibration=base_ref), run(base_steps, calibration=base_ref))
    assert not any("very different speed" in note for note in steady.notes)


def test_a_model_without_batchnorm_runs_as_built_and_old_batch_labels_still_compare(tasks):
    """bench labelled a model with no BatchNorm and no `norm` argument "batch norm" and accepted --norm group,
    which changed nothing but the label (and the comparability fingerprint)."""
    from batchtune.errors import UsageError
    from batchtune.gate.decision import mismatches
    from batchtune.gate.measure import BenchConfig, prepare

    path = str(tasks / "lstm_varlen.py")  # an LSTM: no BatchNorm, build_model() takes no norm
    config, fingerprint = prepare(BenchConfig(task_path=path, batch_size=8))
    assert config["norm"] == "as-built"
    with pytest.raises(UsageError, match=r"--norm 'group': .* has no BatchNorm layer to convert .*drop --norm"):
        prepare(BenchConfig(task_path=path, batch_size=8, norm="group"))
    # A baseline saved before, labelled "batch", compares with the same task file; another file does not.
    samples = repeats(0.01, seed=0)
    old = run(samples, config={**CONFIG, "norm": "batch"}, fingerprint={**FINGERPRINT, "task_sha256": "a"})
    new = run(samples, config={**CONFIG, "norm": "as-built"}, fingerprint={**FINGERPRINT, "task_sha256": "a"})
    assert mismatches(old, new) == []
    edited = run(samples, config={**CONFIG, "norm": "as-built"}, fingerprint={**FINGERPRINT, "task_sha256": "b"})
    assert {m.field for m in mismatches(old, edited)} == {"norm", "task_sha256"}


def test_the_metric_change_reads_as_the_values_moved():
    """A perplexity (minimised) rising 22-fold showed as -2118% beside a REGRESSION verdict."""
    samples = repeats(0.01, seed=0)
    from dataclasses import replace

    base = replace(run(samples, metric=2.9332, config={**CONFIG, "epochs": 1}), metric_mode="min")
    worse = replace(run(samples, metric=65.071, config={**CONFIG, "epochs": 1}), metric_mode="min")
    row = next(r for r in decide(base, worse).rows if r.figure.startswith("validation metric"))
    assert row.change == "+2118.43% (worse)" and row.threshold.startswith("rise <= ") and row.decision == REGRESSION
    acc = run(samples, metric=0.95, config={**CONFIG, "epochs": 1})
    lower = run(samples, metric=0.90, config={**CONFIG, "epochs": 1})
    row = next(r for r in decide(acc, lower).rows if r.figure.startswith("validation metric"))
    assert row.change == "-5.26% (worse)" and row.threshold.startswith("drop <= ")
