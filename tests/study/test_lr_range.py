"""The LR range test: where the loss turns, the windows it gives, and the measured scaling exponent."""

from __future__ import annotations

import math

import pytest

from batchtune.study.lr_range import (
    LrBounds,
    RangeTest,
    fit_bounds,
    range_test,
    scaling_exponent,
    sizes_to_test,
    start_design,
)
from batchtune.task.contract import load_task, make_dataset


def ramp(batch: int, norm: str, turn: float, n: int = 40) -> RangeTest:
    """A synthetic ramp from 1e-5 whose loss falls until ``turn`` and climbs after it, 4x, then stops."""
    lrs = [1e-5 * 10 ** (6 * i / (n - 1)) for i in range(n)]
    losses = [2.0 - 1.5 * min(1.0, math.log(lr / 1e-5) / math.log(turn / 1e-5)) + max(0.0, 3 * math.log10(lr / turn))
              for lr in lrs]
    stop = next((i for i, v in enumerate(losses) if v > 4 * min(losses[: i + 1])), n - 1)
    return RangeTest(batch_size=batch, norm=norm, lrs=tuple(lrs[: stop + 1]), losses=tuple(losses[: stop + 1]),
                     samples=(stop + 1) * batch)


def test_the_minimum_and_the_blowup_bound_the_window():
    t = ramp(32, "batch", turn=0.1)
    assert t.lr_at_min == pytest.approx(0.1, rel=0.5)
    assert t.lr_at_blowup > t.lr_at_min
    bounds = fit_bounds([t], [32], ["batch"], "sgd")
    low, high = bounds.window(32, "batch")
    assert low == pytest.approx(t.lr_at_min / 200)
    assert high == pytest.approx(t.lr_at_min / 2)  # below the blow-up, which a window never passes
    assert bounds.lr(32, "batch", 0.0) == pytest.approx(low)
    assert bounds.lr(32, "batch", 1.0) == pytest.approx(high)
    assert low < bounds.lr(32, "batch", 0.5) < high


def test_a_flat_ramp_gives_no_signal_and_the_fallback_window():
    flat = RangeTest(batch_size=8, norm="none", lrs=tuple(1e-5 * 2**i for i in range(20)), losses=(2.3,) * 20, samples=160)
    assert flat.lr_at_min is None
    bounds = fit_bounds([flat], [8], ["none"], "sgd")
    assert "8/none" not in bounds.windows
    assert bounds.window(8, "none") == bounds.fallback


# Two real ramps (smoothed losses, SGD from 1e-5 to 10 in 50 steps, batch 8) of a 1D CNN on noisy waveforms
# (benchmarks/tasks/heldout_waveforms.py, 4 classes: chance loss ln 4 = 1.386). With BatchNorm the loss falls
# to 1.18 before it climbs; with GroupNorm the model does not learn within the ramp and the loss wanders
# within the noise of its start: its lowest point (1.369 at lr 7e-5, 2.8% under the first step's 1.409) is no
# minimum. Read as one, it put GroupNorm's window at 7e-7 to 1.4e-4, 1000x under the LRs that train it.
LEARNS = (1.444, 1.421, 1.415, 1.399, 1.4, 1.411, 1.402, 1.398, 1.401, 1.399, 1.399, 1.403, 1.394, 1.4, 1.396, 1.402,
          1.408, 1.399, 1.4, 1.402, 1.405, 1.397, 1.394, 1.384, 1.381, 1.379, 1.372, 1.365, 1.364, 1.362, 1.343, 1.339,
          1.303, 1.296, 1.237, 1.179, 1.341, 1.327, 1.32, 1.294, 1.324, 1.494, 1.475, 1.414, 1.605, 1.755, 1.817, 1.871,
          1.921, 2.42)
WANDERS = (1.409, 1.413, 1.392, 1.381, 1.383, 1.382, 1.371, 1.369, 1.369, 1.37, 1.373, 1.378, 1.373, 1.375, 1.373,
           1.374, 1.384, 1.385, 1.388, 1.389, 1.396, 1.399, 1.411, 1.401, 1.408, 1.401, 1.402, 1.447, 1.427, 1.43, 1.435,
           1.427, 1.419, 1.402, 1.384, 1.38, 1.435, 1.626, 1.612, 1.664, 1.893, 2.001, 2.092, 2.081, 2.028, 2.008, 2.025,
           1.969, 2.006, 2.711)


def test_a_ramp_that_never_leaves_the_noise_of_its_start_has_no_minimum():
    lrs = tuple(1e-5 * 1e6 ** (i / 49) for i in range(50))
    learns = RangeTest(batch_size=8, norm="batch", lrs=lrs, losses=LEARNS, samples=400)
    wanders = RangeTest(batch_size=8, norm="group", lrs=lrs, losses=WANDERS, samples=400)
    assert learns.lr_at_min == pytest.approx(0.193, rel=0.01)
    assert wanders.lr_at_min is None
    # Its norm takes the window the other tests span (here BatchNorm's), which holds the LRs that train it.
    bounds = fit_bounds([learns, wanders], [8], ["batch", "group"], "sgd")
    assert "8/group" not in bounds.windows and bounds.window(8, "group") == pytest.approx(bounds.window(8, "batch"))
    # A wobble past the first steps, less than 2% under the plateau's level, is no minimum either; a drop of
    # 10% from a plateau that already falls (a regression loss under MSE) is one.
    late = WANDERS[:10] + tuple(min(v, 1.35) if 20 <= i < 25 else v for i, v in enumerate(WANDERS[10:], 10))
    assert RangeTest(batch_size=8, norm="group", lrs=lrs, losses=late, samples=400).lr_at_min is None
    falls = (1.14, 1.09, 1.24, 1.15, 1.08, 1.02, 0.97, 0.977, 0.979, 0.955, 0.955, 1.01, 0.985, 0.976, 0.998, 0.966,
             0.995, 0.973, 0.97, 0.976, 0.956, 0.954, 0.954, 0.927, 0.941, 0.942, 0.917, 0.928, 0.905, 0.894, 0.898,
             0.896, 0.872, 0.884, 0.953, 1.21, 1.21, 1.36, 1.31, 1.25, 1.3, 1.71, 2.92, 3.71)
    regression = RangeTest(batch_size=32, norm="none", lrs=lrs[:len(falls)], losses=falls, samples=32 * len(falls))
    assert regression.lr_at_min == pytest.approx(lrs[32])
    # A ramp the budget cut to 15 steps (0.43 decades each) has a plateau of 3 steps, not 10: its minimum at
    # step 9 (lr 0.0072) counts.
    short = tuple(1e-5 * 1e6 ** (i / 14) for i in range(15))
    curve = (1.40, 1.39, 1.40, 1.40, 1.39, 1.37, 1.30, 1.15, 0.95, 0.80, 0.95, 1.60, 3.5)
    assert RangeTest(batch_size=8, norm="batch", lrs=short[:13], losses=curve, samples=104).lr_at_min == \
        pytest.approx(short[9])


def test_untested_sizes_are_interpolated_in_log_log_and_flat_beyond():
    tests = [ramp(8, "batch", turn=0.01), ramp(128, "batch", turn=0.16)]
    bounds = fit_bounds(tests, [4, 8, 32, 128, 512], ["batch"], "sgd")
    low8, low128 = bounds.window(8, "batch")[0], bounds.window(128, "batch")[0]
    assert bounds.window(32, "batch")[0] == pytest.approx(math.sqrt(low8 * low128), rel=1e-6)  # geometric middle
    assert bounds.window(4, "batch") == bounds.window(8, "batch")
    assert bounds.window(512, "batch") == bounds.window(128, "batch")
    # The LR at the minimum grew 16x over 16x the batch: exponent 1 (linear scaling).
    assert bounds.exponent == pytest.approx(1.0, abs=0.15)


def test_the_first_trials_start_at_a_tenth_of_the_minimum_s_lr_in_each_norm():
    tests = [ramp(8, "batch", turn=0.01), ramp(128, "batch", turn=0.16), ramp(8, "group", turn=0.003)]
    bounds = fit_bounds(tests, [8, 16, 32, 64, 128], ["batch", "group", "none"], "sgd")
    design = start_design(bounds, [8, 16, 32, 64, 128], ["batch", "group", "none"])
    assert [(d["batch_size"], d["norm"]) for d in design] == [(32, "batch"), (32, "group"), (32, "none")]
    for d in design[:2]:
        low, high = bounds.window(32, d["norm"])
        lr = bounds.lr(32, d["norm"], d["lr_position"])
        # The suggestion is the loss minimum's LR / 10; the window's low end is that LR / 200.
        assert lr == pytest.approx(low * 20, rel=1e-3) and low < lr < high
    assert design[2]["lr_position"] == 0.5  # no test of its own norm: the middle of the fallback window


def test_the_bracket_adds_a_trial_per_tested_norm_half_a_decade_below_the_suggestion():
    tests = [ramp(8, "batch", turn=0.01), ramp(128, "batch", turn=0.16), ramp(8, "group", turn=0.003)]
    bounds = fit_bounds(tests, [8, 16, 32, 64, 128], ["batch", "group", "none"], "sgd")
    single = start_design(bounds, [8, 16, 32, 64, 128], ["batch", "group", "none"])
    design = start_design(bounds, [8, 16, 32, 64, 128], ["batch", "group", "none"], bracket=True)
    assert design[:3] == single  # the suggestions first, so they run first
    # Then one more per norm that has a range test of its own ("none" has none: one trial in the fallback).
    assert [(d["batch_size"], d["norm"]) for d in design[3:]] == [(32, "batch"), (32, "group")]
    for high, low in zip(design[:2], design[3:]):
        ratio = bounds.lr(32, high["norm"], high["lr_position"]) / bounds.lr(32, low["norm"], low["lr_position"])
        assert ratio == pytest.approx(3.0, rel=1e-3)


def test_scaling_exponent_recovers_a_known_slope_with_its_error():
    points = {"batch": {b: 0.01 * b**0.5 for b in (8, 32, 128)}, "group": {b: 0.03 * b**0.5 for b in (8, 32, 128)}}
    slope, se = scaling_exponent(points)
    assert slope == pytest.approx(0.5)
    assert se == pytest.approx(0.0, abs=1e-9)
    noisy = {"batch": {8: 0.01, 32: 0.05, 128: 0.08}}
    slope, se = scaling_exponent(noisy)
    assert 0.3 < slope < 1.0 and se is not None and se > 0.01
    assert scaling_exponent({"batch": {8: 0.1}}) == (None, None)


def test_tested_sizes_are_the_ends_and_the_geometric_middle():
    assert sizes_to_test([8, 16, 32, 64, 128]) == (8, 32, 128)
    assert sizes_to_test([16, 64]) == (16, 64)


def test_bounds_round_trip_through_the_study_attribute():
    bounds = fit_bounds([ramp(8, "batch", turn=0.05)], [8], ["batch"], "sgd")
    again = LrBounds.from_dict(bounds.to_dict())
    assert again.window(8, "batch") == pytest.approx(bounds.window(8, "batch"), rel=1e-3)


def test_range_test_on_a_real_model_finds_where_the_loss_turns(tasks):
    task = load_task(tasks / "tiny_mlp.py")
    out = range_test(task, make_dataset(task, "train"), None, batch_size=16, norm="batch", precision="fp32",
                     device="cpu", seed=0, family="sgd", steps=40, threads=1)
    t = RangeTest(**out)
    assert t.error is None
    assert t.samples == 16 * len(t.lrs)
    assert t.lr_at_min is not None and 1e-5 < t.lr_at_min < 10
    assert t.lrs == tuple(sorted(t.lrs))
    assert min(t.losses) < t.losses[0]


def test_the_search_brackets_only_when_the_trials_budget_holds_two_full_trials_per_norm():
    from types import SimpleNamespace

    from batchtune.study.run import _start_design

    tests = [ramp(8, "batch", turn=0.01), ramp(128, "batch", turn=0.16), ramp(8, "none", turn=0.05),
             ramp(128, "none", turn=0.5)]
    bounds = fit_bounds(tests, [8, 16, 32, 64, 128], ["batch", "none"], "sgd")
    cfg, setup = SimpleNamespace(precisions=("fp32",)), SimpleNamespace(norms=("batch", "none"))

    def plan(trials, unfit=()):
        return SimpleNamespace(lr_bounds=bounds, sizes=(8, 16, 32, 64, 128), trial_budget=trials * 1000,
                               trial_samples=1000, unfit={k: "out of memory" for k in unfit})

    assert [p["norm"] for p in _start_design(cfg, setup, plan(4))] == ["batch", "none", "batch", "none"]
    assert [p["norm"] for p in _start_design(cfg, setup, plan(3.9))] == ["batch", "none"]
    # A cell that does not fit is not started in, at either LR.
    assert [p["norm"] for p in _start_design(cfg, setup, plan(4, unfit=["32/none/fp32"]))] == ["batch", "batch"]


def test_a_minimum_at_the_ramps_end_is_left_out_of_the_scaling_fit():
    """A loss still falling at the ramp's last LR (an autoencoder, a tagger) put every cell's minimum at the
    ramp's end, and the report stated a scaling exponent of 0.00 ± 0.00 measured on nothing but the ramp."""
    still_falling = [ramp(8, "none", turn=100.0), ramp(64, "none", turn=100.0)]
    assert all(t.lrs[-1] == pytest.approx(10.0) for t in still_falling)
    bounds = fit_bounds(still_falling, [8, 64], ["none"], "sgd")
    assert bounds.at_ramp_end == ("8/none", "64/none")
    assert bounds.exponent is None  # nothing left to fit
    assert bounds.window(8, "none")[1] == pytest.approx(5.0)  # half the ramp's end, as for any minimum
    turning = [ramp(8, "batch", turn=0.01), ramp(64, "batch", turn=0.08)]
    mixed = fit_bounds(still_falling + turning, [8, 64], ["none", "batch"], "sgd")
    assert mixed.exponent == pytest.approx(1.0, abs=0.15)  # from the batch norm tests alone
    assert LrBounds.from_dict(mixed.to_dict()).at_ramp_end == ("8/none", "64/none")
