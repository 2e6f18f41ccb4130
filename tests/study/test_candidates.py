"""Candidates re-trained on fresh seeds, and the recommendation made from their means and the cells' speed."""

from __future__ import annotations

import pandas as pd
import pytest

from batchtune.study.candidates import Candidate, choose, rerun_seeds
from batchtune.study.cells import Cell, CellTable
from batchtune.study.config import Tolerance
from batchtune.study.recommend import recommend_measured


def trials(rows):
    cols = ["trial", "status", "feasible", "batch_size", "lr", "norm", "precision", "metric", "throughput",
            "peak_memory_bytes"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


TRIALS = trials([
    (0, "ok", True, 16, 0.01, "batch", "fp32", 0.985, 900.0, 10),
    (1, "ok", True, 128, 0.1, "batch", "fp32", 0.978, 5000.0, 20),
    (2, "ok", True, 32, 0.02, "group", "fp32", 0.980, 1500.0, 12),
    (3, "pruned", True, 64, 0.5, "none", "fp32", 0.3, None, None),
    (4, "ok", True, 16, 0.01, "batch", "fp32", 0.984, 950.0, 10),  # the same configuration as trial 0
])
SPEED = {(16, "batch", "fp32"): 1000.0, (128, "batch", "fp32"): 6000.0, (32, "group", "fp32"): 1800.0}


def test_the_best_the_faster_cells_close_to_it_and_the_runner_up():
    picked = choose(TRIALS, mode="max", close=0.01, speed=SPEED, count=3)
    assert [(c.trial, c.why) for c in picked] == [(0, "best trial"), (1, "faster cell close to the best"),
                                                  (2, "best of another cell")]
    # With four places, both faster cells close to the best, fastest first, before any slower cell.
    four = choose(TRIALS, mode="max", close=0.01, speed=SPEED, count=4)
    assert [(c.trial, c.why) for c in four] == [(0, "best trial"), (1, "faster cell close to the best"),
                                                (2, "faster cell close to the best")]
    # A cell that is not faster than the best's by more than the tie band is not "faster".
    slow = {**SPEED, (32, "group", "fp32"): 1010.0}
    assert [c.why for c in choose(TRIALS, mode="max", close=0.01, speed=slow, count=4)][2] == "best of another cell"
    assert picked[0].trial_metric == pytest.approx(0.985)
    # Without speeds, the best of other cells by metric; a configuration already picked is not picked again.
    assert [c.trial for c in choose(TRIALS, mode="max", close=0.01, speed={}, count=4)] == [0, 2, 1]
    assert choose(TRIALS[TRIALS["status"] != "ok"], mode="max", close=0.01, speed={}) == []


def test_mean_and_spread_come_from_the_fresh_seeds_only():
    c = Candidate(trial=0, batch_size=16, lr=0.01, norm="batch", precision="fp32", trial_metric=0.99, why="best",
                  metrics=(0.97, 0.98, None), seeds=(1000, 1001, 1002))
    assert c.mean == pytest.approx(0.975)
    assert c.spread == pytest.approx(0.005)
    assert Candidate.from_dict(c.to_dict()) == c
    assert rerun_seeds(5, 2) == (1005, 1006)


def candidate(trial, batch, mean, norm="batch"):
    return Candidate(trial=trial, batch_size=batch, lr=0.01, norm=norm, precision="fp32", trial_metric=mean + 0.005,
                     why="x", metrics=(mean - 0.001, mean + 0.001), seeds=(1000, 1001))


def table(*cells):
    return CellTable(cells={c.key: c for c in cells})


def speed_cell(batch, ratios):
    return Cell(batch_size=batch, norm="batch", precision="fp32", ratios=tuple(tuple(r) for r in ratios), reference=0.001)


def test_a_faster_candidate_within_the_tolerance_wins_only_beyond_the_timing_noise():
    best, fast = candidate(0, 16, 0.985), candidate(1, 128, 0.979)
    tol = Tolerance(0.01, "absolute")
    clear = table(speed_cell(16, [[1.0]] * 4), speed_cell(128, [[2.0]] * 4))  # 128 is 4x faster per sample
    rec = recommend_measured([best, fast], clear, TRIALS, mode="max", tolerance=tol)
    assert rec.trial == 1 and rec.metric == pytest.approx(0.979)  # the stated metric is the fresh seeds' mean
    assert rec.best_trial == 0 and "faster beyond the timing noise" in rec.reason
    # The stated speed is the cell's calibrated figure, and says so (the trials' own timings are printed too).
    assert rec.throughput_source == "cell" and rec.throughput_text.endswith("samples/s measured per cell")
    assert rec.throughput != 5000.0  # not trial 1's own timing
    untimed = recommend_measured([best, fast], None, TRIALS, mode="max", tolerance=tol)
    assert untimed.trial == 0 and untimed.throughput_text == "900 samples/s in its trial's own timing"
    noisy = table(speed_cell(16, [[1.0], [8.0], [1.0]]), speed_cell(128, [[8.0], [2.0], [30.0]]))
    rec = recommend_measured([best, fast], noisy, TRIALS, mode="max", tolerance=tol)
    assert rec.trial == 0 and "can't tell" in rec.reason
    far = candidate(1, 128, 0.96)
    assert recommend_measured([best, far], clear, TRIALS, mode="max", tolerance=tol).trial == 0


def test_no_finished_candidate_means_no_recommendation():
    failed = Candidate(trial=0, batch_size=16, lr=0.01, norm="batch", precision="fp32", trial_metric=0.9, why="x",
                       metrics=(None, None), seeds=(1000, 1001))
    assert recommend_measured([failed], None, TRIALS, mode="max") is None


def test_weak_answers_are_named():
    from batchtune.study.measured import weak_answer_warnings

    few = trials([(0, "ok", True, 16, 0.01, "batch", "fp32", 0.31, 900.0, 10)])
    few["lr_position"] = [0.99]
    near_chance = [candidate(0, 16, 0.31)]
    noisy = [Candidate(trial=0, batch_size=16, lr=0.01, norm="batch", precision="fp32", trial_metric=0.9, why="x",
                       metrics=(0.85, 0.95), seeds=(1000, 1001))]
    text = " ".join(weak_answer_warnings(few, near_chance, mode="max", tolerance=Tolerance(0.01, "absolute"),
                                         chance=0.3, bounds=object(), rerun_seeds_=2))
    assert "only 1 trial(s) trained to full length" in text
    assert "near chance (0.3)" in text
    assert "top of its measured window" in text
    assert "optimizer steps (fewer than" not in text  # no steps recorded: nothing said
    few["steps"] = [26]  # a small training set: the smallest size kept, though short
    text = " ".join(weak_answer_warnings(few, near_chance, mode="max", tolerance=None, chance=None, bounds=None,
                                         rerun_seeds_=2))
    assert "trials at batch 16 trained only 26 optimizer steps (fewer than 50)" in text
    text = " ".join(weak_answer_warnings(TRIALS, noisy, mode="max", tolerance=Tolerance(0.01, "absolute"),
                                         chance=0.1, bounds=None, rerun_seeds_=0))
    assert ("the only candidate varies between seeds by more than the 1 percentage points tolerance (trial 0 ±0.05): "
            "its stated mean is uncertain by more than the tolerance") in text
    assert "no re-runs" in text
    assert "--lr-min 0.00033 --lr-max 0.01" in text  # no range test: the way to search below an LR whose seeds disagree
    assert "near chance" not in text and "only 4 trial(s)" in text


def test_a_wide_seed_spread_points_below_the_lr_only_near_the_range_tests_loss_minimum():
    """Seeds that disagree at an LR just under where the range test's loss turned up suggest instability: search
    below. Far under it (a transformer trained 1 epoch at a thirtieth of it spread by ±4 points), a lower LR is
    not the fix and the warning must not send the user there. Several noisy candidates make one warning, not
    one each (a regression task's 1% tolerance is under every candidate's seed spread)."""
    from batchtune.study.lr_range import WINDOW_BELOW, LrBounds
    from batchtune.study.measured import weak_answer_warnings

    minimum = 0.0128  # the cell's loss minimum in the range test
    bounds = LrBounds(windows={"32/as-built": (minimum / WINDOW_BELOW, 2 * minimum)}, exponent=None, exponent_se=None,
                      fallback=(1e-5, 0.1))

    def noisy(trial: int, lr: float) -> Candidate:
        return Candidate(trial=trial, batch_size=32, lr=lr, norm="as-built", precision="fp32", trial_metric=0.99,
                         why="x", metrics=(0.98, 0.90), seeds=(1000, 1001))

    quiet = Candidate(trial=7, batch_size=32, lr=0.001, norm="as-built", precision="fp32", trial_metric=0.99, why="x",
                      metrics=(0.95, 0.951), seeds=(1000, 1001))
    text = weak_answer_warnings(TRIALS, [noisy(4, 0.000428), noisy(5, 0.006), quiet], mode="max",
                                tolerance=Tolerance(0.01, "absolute"), chance=0.25, bounds=bounds, rerun_seeds_=2)
    spread = [w for w in text if "vary between seeds" in w]
    assert spread == ["2 of 3 candidates vary between seeds by more than the 1 percentage points tolerance "
                      "(trial 4 ±0.04, trial 5 ±0.04): their ranking against each other is uncertain; raise "
                      "--rerun-seeds to rank them (or --epochs, if a short budget leaves some seeds still learning)"]
    below = [w for w in text if "search below" in w]
    assert below == ["trial 5's seeds disagree and its LR is within 3x of the LR where its cell's range test found "
                     "the loss turning up (0.013): training may be turning unstable there; search below its LR "
                     "(--lr-min 0.0002 --lr-max 0.006)"]  # not trial 4: 30x below the minimum
    # Without range tests nothing tells instability from slow learning: one warning names them all, with one
    # range below every one of their LRs (it was a warning each, four alike on a search with --lr-min/--lr-max).
    text = weak_answer_warnings(TRIALS, [noisy(4, 0.000428), noisy(5, 0.006), noisy(6, 0.003), quiet], mode="max",
                                tolerance=Tolerance(0.01, "absolute"), chance=0.25, bounds=None, rerun_seeds_=2)
    below = [w for w in text if "search below" in w]
    assert below == ["trials 4, 5 and 6's seeds disagree, and with no range test to tell, that can mean training "
                     "turns unstable near their LRs (search below: --lr-min 1.4e-05 --lr-max 0.006) or that a trial "
                     "is too short for the seeds to settle (raise --epochs)"]


def test_a_gap_at_the_edge_of_the_tolerance_is_not_as_good_once_the_seeds_uncertainty_is_added():
    """As good: within the tolerance of the best mean by more than the gap's standard error (at least a
    quarter of the tolerance)."""
    best = candidate(0, 32, 0.9916)
    clear = table(speed_cell(32, [[1.0]] * 4), Cell(batch_size=128, norm="layer", precision="fp32",
                                                     ratios=((3.0,),) * 4, reference=0.001))

    def layer(metrics):
        return Candidate(trial=1, batch_size=128, lr=0.01, norm="layer", precision="fp32", trial_metric=0.975,
                         why="x", metrics=metrics, seeds=(1000, 1001))

    tol = Tolerance(0.01, "absolute")
    edge = layer((0.9805, 0.9833))  # 0.9819: 0.97 points below, within 1 point by the means only
    rec = recommend_measured([best, edge], clear, TRIALS, mode="max", tolerance=tol)
    assert rec.trial == 0
    assert "Faster, but 0.97 points worse than the best mean: trial 1 (batch 128, layer norm, lr 0.01)" in rec.reason
    assert "not by more than the gap's standard error, ±0.17 points: the seeds can't tell whether it is" in rec.reason
    # A candidate like it that is slower than the pick is not named: more seeds would not change the pick.
    slow = Candidate(trial=2, batch_size=16, lr=0.01, norm="batch", precision="fp32", trial_metric=0.98, why="x",
                     metrics=(0.9810, 0.9830), seeds=(1000, 1001))
    with_slow = table(speed_cell(32, [[1.0]] * 4), speed_cell(16, [[1.0]] * 4))
    assert "Faster, but" not in recommend_measured([best, slow], with_slow, TRIALS, mode="max", tolerance=tol).reason
    inside = layer((0.9836, 0.9850))  # 0.9843: 0.73 points below, + 0.25 (the least error counted) <= 1
    assert recommend_measured([best, inside], clear, TRIALS, mode="max", tolerance=tol).trial == 1


def test_the_seed_spread_is_pooled_over_the_candidates():
    from batchtune.study.recommend import pooled_seed_sd

    def c(trial, batch, metrics, norm="batch"):
        return Candidate(trial=trial, batch_size=batch, lr=0.01, norm=norm, precision="fp32", trial_metric=0.99,
                         why="x", metrics=metrics, seeds=(1000, 1001))

    best = c(0, 32, (0.989, 0.991))  # mean 0.990
    fast = c(1, 128, (0.986, 0.986))  # 0.4 points below, its two seeds agreeing by chance
    wide = c(2, 16, (0.960, 0.980))  # a third candidate shows how far seeds really spread
    assert pooled_seed_sd([best, fast, wide]) == pytest.approx(((2 * 0.001**2 + 2 * 0.01**2) / 3) ** 0.5)
    assert pooled_seed_sd([c(3, 8, (0.9, None))]) is None
    clear = table(speed_cell(32, [[1.0]] * 4), speed_cell(128, [[2.0]] * 4))  # 128 is 2x faster per sample
    tol = Tolerance(0.01, "absolute")
    # The pair alone: the gap (0.4 points) is larger than its error from the pair's seeds (0.1 points).
    rec = recommend_measured([best, fast], clear, TRIALS, mode="max", tolerance=tol)
    assert rec.trial == 1 and "0.40 points better, ± 0.10 points (standard error)" in rec.reason
    # The third candidate shows the seeds spread wider: the gap's error is 0.82 points, 0.4 + 0.82 > 1, not
    # shown to be as good, and the reason names batch 128 as one the seeds can't tell.
    rec = recommend_measured([best, fast, wide], clear, TRIALS, mode="max", tolerance=tol)
    assert rec.trial == 0
    assert ("Faster, but 0.40 points worse than the best mean: trial 1 (batch 128, batch norm, lr 0.01); inside the "
            "tolerance by the means, not by more than the gap's standard error, ±0.82 points") in rec.reason
    # Two as good, the gap smaller than its error: said in the reason of the trade.
    near = c(1, 128, (0.9885, 0.9895))  # 0.1 points below; pooled with wide's seeds the error is 0.82 points
    rec = recommend_measured([best, near, wide], clear, TRIALS, mode="max", tolerance=Tolerance(0.02, "absolute"))
    assert rec.trial == 1
    assert "the gap is smaller than its standard error (±0.82 points): the seeds cannot tell which of the two" in rec.reason
    # One seed per candidate: no spread to tell the gap's error from, so none is stated.
    one = [Candidate(trial=k.trial, batch_size=k.batch_size, lr=k.lr, norm=k.norm, precision="fp32", trial_metric=0.99,
                     why="x", metrics=k.metrics[:1], seeds=(1000,)) for k in (best, fast)]
    rec = recommend_measured(one, clear, TRIALS, mode="max", tolerance=tol)
    assert rec.trial == 1 and "standard error" not in rec.reason


def test_equal_means_go_to_the_faster_cell_even_when_the_seeds_are_too_noisy_to_call_either_as_good():
    """A classification metric moves in steps of one validation sample, so two candidates can tie exactly.
    With seeds this noisy nothing is shown to be as good as the best mean, and the best mean wins; a tie
    must not go to the slower of the two by list order."""
    def c(trial, batch, metrics):
        return Candidate(trial=trial, batch_size=batch, lr=0.01, norm="batch", precision="fp32", trial_metric=0.99,
                         why="x", metrics=metrics, seeds=tuple(range(1000, 1000 + len(metrics))))

    # 350 of 360 validation samples right on average for both; in floating point the 2-seed mean comes out
    # 1e-16 above the 3-seed one (as a raced candidate's third seed made it in a search of the digits MLP).
    slow, fast = c(0, 16, (345 / 360, 355 / 360)), c(1, 128, (342 / 360, 350 / 360, 358 / 360))
    assert slow.mean > fast.mean
    cells = table(speed_cell(16, [[1.0]] * 4), speed_cell(128, [[2.0]] * 4))  # 128 is 4x faster per sample
    tol = Tolerance(0.01, "absolute")
    for order in ([slow, fast], [fast, slow]):
        rec = recommend_measured(order, cells, TRIALS, mode="max", tolerance=tol)
        assert rec.trial == 1 and rec.best_trial == 1
    # Without speeds to tell them apart the first listed stays the best, as before.
    assert recommend_measured([slow, fast], None, TRIALS, mode="max", tolerance=tol).trial == 0
    # A mean better by the smallest step still wins over a faster cell the seeds cannot call as good.
    better = c(0, 16, (346 / 360, 355 / 360))
    assert recommend_measured([better, fast], cells, TRIALS, mode="max", tolerance=tol).trial == 0


def test_the_reason_states_the_pooled_seed_spread_not_the_pick_s_own():
    """Two seeds of the pick that agree by chance do not make the stated metric certain: the reason gives
    the seed-to-seed deviation pooled over every candidate and the stated mean's standard error from it."""
    lucky = Candidate(trial=0, batch_size=16, lr=0.01, norm="batch", precision="fp32", trial_metric=0.99, why="x",
                      metrics=(0.99, 0.99), seeds=(1000, 1001))
    wild = Candidate(trial=1, batch_size=32, lr=0.01, norm="batch", precision="fp32", trial_metric=0.98, why="x",
                     metrics=(0.90, 0.98), seeds=(1000, 1001))
    rec = recommend_measured([lucky, wild], None, TRIALS, mode="max", tolerance=Tolerance(0.01, "absolute"))
    assert rec.trial == 0
    # Pooled: squared deviations 0 + 0 + 0.04^2 + 0.04^2 over 2 degrees of freedom -> 0.04; SE 0.04 / sqrt(2).
    assert "varies by 0.04 (standard deviation, pooled over 2 candidate(s))" in rec.reason
    assert "±0.028 (standard error)" in rec.reason
    alone = recommend_measured([candidate(0, 16, 0.985)], None, TRIALS, mode="max", tolerance=Tolerance(0.01, "absolute"))
    assert "varies by 0.0014" in alone.reason  # one candidate: its own two seeds are all there is


def test_racing_gives_one_more_seed_each_to_the_best_and_the_faster_rival_the_seeds_leave_open():
    """Two seeds put the faster batch 128 0.6 points below batch 16, inside the 1-point tolerance by the means
    but not by more than the gap's standard error: the seeds can't tell. The race trains a third seed on both,
    which decides it (batch 128 is as good, and wins on speed), and stops there with race seeds left."""
    from types import SimpleNamespace

    import optuna

    from batchtune.study import measured
    from batchtune.study.config import SearchConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = {16: {1000: 0.990, 1001: 0.980, 1002: 0.985}, 128: {1000: 0.984, 1001: 0.974, 1002: 0.985}}
    frame = trials([(0, "ok", True, 16, 0.01, "batch", "fp32", 0.99, 900.0, 10),
                    (1, "ok", True, 128, 0.1, "batch", "fp32", 0.985, 5000.0, 20)])
    cells = table(speed_cell(16, [[1.0]] * 4), speed_cell(128, [[2.0]] * 4))  # 128 is 4x faster per sample
    tol = Tolerance(0.01, "absolute")

    def search(race):
        runs = []

        class Runner:
            def run(self, spec, timeout=None):
                runs.append(spec)
                return SimpleNamespace(samples=100, status="ok", final_metric=seeds[spec[0]][spec[1]], reason=None)

        study = optuna.create_study(direction="maximize")
        out = measured.rerun_candidates(study, Runner(), SearchConfig(task_path="task.py"), trials=frame, cells=cells,
                                        mode="max", count=2, seeds=2, spec_for=lambda c, seed: (c.batch_size, seed),
                                        close=0.02, race=race, tolerance=tol)
        assert [Candidate.from_dict(c) for c in study.user_attrs["candidates"]] == out  # stored as they finish
        return runs, out, recommend_measured(out, cells, frame, mode="max", tolerance=tol)

    runs, out, rec = search(race=0)
    assert runs == [(16, 1000), (16, 1001), (128, 1000), (128, 1001)]
    assert rec.trial == 0 and "the seeds can't tell" in rec.reason
    runs, out, rec = search(race=4)
    assert runs[4:] == [(16, 1002), (128, 1002)]  # one round decided it: the second is not run
    assert [c.seeds for c in out] == [(1000, 1001, 1002)] * 2 and [c.samples for c in out] == [300, 300]
    assert rec.trial == 1 and rec.metric == pytest.approx((0.984 + 0.974 + 0.985) / 3)
    assert "over 3 fresh seed(s)" in rec.reason


def test_nothing_to_race_without_cell_speeds_or_when_the_seeds_decided():
    from dataclasses import replace

    from batchtune.study.recommend import undecided

    tol = Tolerance(0.01, "absolute")
    best = Candidate(trial=0, batch_size=16, lr=0.01, norm="batch", precision="fp32", trial_metric=0.99, why="x",
                     metrics=(0.990, 0.980), seeds=(1000, 1001))
    rival = Candidate(trial=1, batch_size=128, lr=0.1, norm="batch", precision="fp32", trial_metric=0.99, why="x",
                      metrics=(0.984, 0.974), seeds=(1000, 1001))
    cells = table(speed_cell(16, [[1.0]] * 4), speed_cell(128, [[2.0]] * 4))
    assert undecided([best, rival], cells, mode="max", tolerance=tol) == (best, rival)
    assert undecided([best, rival], None, mode="max", tolerance=tol) is None  # no speed to win by
    slow = table(speed_cell(16, [[1.0]] * 4), speed_cell(128, [[20.0]] * 4))  # 128 at 6,400/s, 16 at 16,000/s
    assert undecided([rival, best], slow, mode="max", tolerance=tol) is None  # the best mean is the pick either way
    far = replace(rival, metrics=(0.96, 0.95))
    assert undecided([best, far], cells, mode="max", tolerance=tol) is None  # outside the tolerance by its mean


def test_chance_level_reads_dict_items_by_their_target_key():
    """The near-chance warning needs the majority class's share; dict items (Hugging Face style) hold
    the label under TARGET_KEY, not at index 1."""
    import torch
    from torch.utils.data import TensorDataset

    from batchtune.study.run import majority_share

    labels = [0, 0, 0, 1] * 5
    items = [{"input_ids": torch.zeros(3, dtype=torch.long), "label": y} for y in labels]
    assert majority_share(items, target_key="label") == 0.75
    assert majority_share(TensorDataset(torch.zeros(20, 2), torch.tensor(labels))) == 0.75
    assert majority_share(TensorDataset(torch.zeros(20, 2), torch.rand(20))) is None  # regression: no chance level


def test_equal_metrics_put_the_faster_cell_first():
    """Two trials with the same metric: the faster cell's is the best trial, so with one candidate it is
    the one re-trained (sorting by metric alone kept the earlier trial, here the slower batch 16)."""
    tied = trials([
        (0, "ok", True, 16, 0.01, "batch", "fp32", 0.98, 900.0, 10),
        (1, "ok", True, 128, 0.1, "batch", "fp32", 0.98, 5000.0, 20),
        (2, "ok", True, 32, 0.02, "group", "fp32", 0.97, 1500.0, 12),
    ])
    picked = choose(tied, mode="max", close=0.0, speed=SPEED, count=1)
    assert [c.trial for c in picked] == [1]
    picked = choose(tied, mode="max", close=0.0, speed={}, count=1)  # no cell speeds: trial order
    assert [c.trial for c in picked] == [0]
