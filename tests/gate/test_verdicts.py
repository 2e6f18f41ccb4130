"""Issue 15: three speed verdicts, the repeats that would decide, the stale rule, exit codes, and the
note when wall time and CPU time disagree. Synthetic timings only: no measuring, no processes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from batchtune.gate.decision import (
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
    EXIT_REGRESSION,
    INCONCLUSIVE,
    PASS,
    REGRESSION,
    STALE,
    decide,
    repeats_to_decide,
    speed_change,
    speed_verdict,
)
from batchtune.gate.measure import _allowed, _by_clock, resolve_clock
from batchtune.gate.render import render_markdown
from tests.gate.test_decision import CONFIG, repeats, run

WALL = dict(CONFIG, clock="wall")


@pytest.mark.parametrize(
    "ratio, low, high, verdict",
    [
        (1.17, 1.12, 1.22, REGRESSION),  # significant and beyond +5%
        (1.06, 1.01, 1.11, REGRESSION),  # significant, estimate beyond the threshold
        (1.03, 1.01, 1.08, INCONCLUSIVE),  # significant but the interval still reaches past +5%
        (1.10, 0.97, 1.25, INCONCLUSIVE),  # beyond the threshold, not significant
        (1.00, 0.90, 1.10, INCONCLUSIVE),  # no change measured, but +10% is not ruled out
        (1.00, 0.97, 1.04, PASS),  # a slowdown beyond +5% is ruled out
        (0.90, 0.80, 1.04, PASS),  # faster, not significantly: pass, never stale
        (0.85, 0.82, 0.93, STALE),  # significantly faster beyond the threshold
        (0.97, 0.95, 0.99, PASS),  # significantly faster, but within the threshold: not stale
        (0.85, 0.70, 1.10, INCONCLUSIVE),  # the interval reaches a slowdown past the threshold
    ],
)
def test_three_verdicts_and_stale(ratio, low, high, verdict):
    assert speed_verdict(ratio, low, high, max_slowdown=0.05) == verdict


def test_stale_is_the_mirror_of_a_regression():
    # r and 1/r with mirrored intervals get mirrored verdicts.
    for ratio, low, high in ((1.17, 1.12, 1.22), (1.10, 0.97, 1.25), (1.06, 1.01, 1.11)):
        up = speed_verdict(ratio, low, high, max_slowdown=0.05)
        down = speed_verdict(1 / ratio, 1 / high, 1 / low, max_slowdown=0.05)
        assert (up == REGRESSION) == (down == STALE)


def test_repeats_to_decide_follows_one_over_square_root():
    # Paired: a half-width of log(1.10) must shrink to log(1.05): (0.0953/0.0488)^2 = 3.8x the repeats.
    more = repeats_to_decide(1.0, 1 / 1.10, 1.10, max_slowdown=0.05, repeats=10)
    assert more is not None and 10 * 3.8 <= 10 + more <= 10 * 3.8 * 1.25 + 1
    # A regression in reach: the lower end must rise above 1.
    assert repeats_to_decide(1.12, 0.98, 1.26, max_slowdown=0.05, repeats=10) >= 1
    # Unpaired, when the baseline's spread alone is wider than the margin, more current repeats cannot help.
    assert repeats_to_decide(1.0, 0.90, 1.10, max_slowdown=0.05, repeats=10, current_share=0.2) is None
    # Just under the threshold: the upper end would have to shrink onto the estimate itself.
    assert repeats_to_decide(1.0499, 1.0, 1.10, max_slowdown=0.05, repeats=10) is None
    # Just over it, a regression is in reach: the lower end only has to clear 1.
    assert repeats_to_decide(1.0501, 1.0, 1.10, max_slowdown=0.05, repeats=10) is not None


def test_the_estimated_repeats_do_decide():
    # A/A on a noisy machine, paired: 6 repeats are inconclusive; the estimate's count, drawn from the
    # same machine, decides (pass). The noise is per repeat, shared by both sides' steps.
    rng = np.random.default_rng(3)

    def pair(n):
        base, cur = [], []
        for _ in range(n):
            level = 0.010 * (1 + 0.2 * rng.random())
            base.append(list(level * (1 + 0.04 * rng.standard_normal() + 0.01 * rng.random(40))))
            cur.append(list(level * (1 + 0.04 * rng.standard_normal() + 0.01 * rng.random(40))))
        return base, cur

    first = speed_change(*pair(6), max_slowdown=0.05, paired=True)
    assert first.verdict == INCONCLUSIVE and first.more_repeats is not None
    second = speed_change(*pair(6 + first.more_repeats), max_slowdown=0.05, paired=True)
    assert second.verdict == PASS


def test_inconclusive_exits_4_and_says_how_many_repeats():
    base = [[lv] * 40 for lv in (0.010, 0.009, 0.011, 0.0095, 0.0105, 0.010)]
    cur = [[lv] * 40 for lv in (0.0112, 0.009, 0.0115, 0.0095, 0.011, 0.0105)]
    paired = dict(CONFIG, interleave_id="abc")  # an interleaved comparison: more repeats of both sides
    decision = decide(run(base, config=paired), run(cur, config=paired))
    assert decision.rows[0].decision == INCONCLUSIVE
    assert decision.exit_code == EXIT_INCONCLUSIVE == 4 and decision.status == "inconclusive"
    assert decision.more_repeats == decision.rows[0].values["more_repeats"] > 0
    text = render_markdown(decision)
    assert "INCONCLUSIVE" in text and "(exit 4)" in text
    note = next(n for n in decision.notes if n.startswith("inconclusive"))
    assert f"about {decision.more_repeats} more repeats on each side" in note and "--until-decided" in note
    assert decision.to_dict()["status"] == "inconclusive" and decision.to_dict()["exit_code"] == 4
    # Against a stored baseline as noisy as the run, more repeats of the run alone cannot decide.
    unpaired = decide(run(base), run(cur))
    assert unpaired.status == "inconclusive" and unpaired.more_repeats == 0
    assert any("re-save the baseline with more --repeat" in n for n in unpaired.notes)


def test_a_regression_elsewhere_outranks_inconclusive_speed():
    base = [[lv] * 40 for lv in (0.010, 0.009, 0.011, 0.0095, 0.0105, 0.010)]
    cur = [[lv] * 40 for lv in (0.0112, 0.009, 0.0115, 0.0095, 0.011, 0.0105)]
    decision = decide(run(base, memory=400 << 20), run(cur, memory=460 << 20))
    assert decision.rows[0].decision == INCONCLUSIVE
    assert decision.exit_code == EXIT_REGRESSION and decision.more_repeats == 0


def test_an_insignificant_improvement_is_not_stale():
    # 8% faster on average, but the repeats scatter 15%: no "refresh the baseline".
    base = [[lv] * 40 for lv in (0.010, 0.0085, 0.0115, 0.010, 0.009, 0.011)]
    cur = [[lv * 0.92] * 40 for lv in (0.0115, 0.0085, 0.010, 0.011, 0.010, 0.0090)]
    decision = decide(run(base), run(cur))
    assert decision.rows[0].decision != STALE and decision.status != "stale"
    assert not any("refresh" in note for note in decision.notes)


def wall_run(wall, cpu, **kw):
    r = run(wall, config=WALL, **kw)
    r.cpu_samples = cpu
    return r


def test_waiting_that_appeared_is_named():
    # The step now sleeps 1.7 ms: wall time +17%, CPU time unchanged.
    cpu = repeats(0.010, seed=50)
    base = wall_run(cpu, cpu)
    stalled = wall_run([[t + 0.0017 for t in rep] for rep in cpu], cpu)
    decision = decide(base, stalled)
    assert decision.rows[0].decision == REGRESSION and decision.exit_code == EXIT_REGRESSION
    assert decision.rows[1].figure == "throughput (samples/s, CPU time)"
    assert decision.rows[1].values["step_time_ratio"] == pytest.approx(1.0)
    assert any("more time waiting" in n and "CPU time +0.0%" in n for n in decision.notes)
    # The other way round: the waiting vanished, the baseline is stale.
    back = decide(stalled, base)
    assert back.status == "stale" and any("less time waiting" in n for n in back.notes)


def test_no_waiting_note_when_both_clocks_agree():
    cpu = repeats(0.010, seed=51)
    slower = [[t * 1.17 for t in rep] for rep in cpu]
    decision = decide(wall_run(cpu, cpu), wall_run(slower, slower))
    assert decision.exit_code == EXIT_REGRESSION
    assert not any("waiting" in n for n in decision.notes)
    same = decide(wall_run(cpu, cpu), wall_run(cpu, cpu))
    assert same.exit_code == EXIT_PASS and not any("waiting" in n for n in same.notes)


def test_wall_time_is_the_default_clock_less_the_run_queue_delay():
    assert resolve_clock("auto", "cpu", 1) == "wall" == resolve_clock("auto", "cuda", 4)
    assert resolve_clock("cpu", "cpu", 1) == "cpu"
    timings = {"wall": [0.012, 0.020], "cpu": [0.010, 0.010], "delay": [0.0, 0.009]}
    # The second step waited 9 ms for a core held by another program: that is not the step's.
    assert _by_clock(timings, "wall") == [0.012, 0.011]
    assert _by_clock(timings, "cpu") == [0.010, 0.010]


def test_until_decided_stops_at_the_time_limit_and_the_repeat_bound():
    now = time.monotonic()
    assert _allowed(10, 5, 2.0, now, None) == 10
    assert _allowed(10, 5, 2.0, now, 7.0) == 3  # 7 s left, 2 s per repeat
    assert _allowed(10, 5, 2.0, now - 100, 60.0) == 0  # out of time
    assert _allowed(10, 995, 1.0, now, None) == 5  # at most 1000 repeats
    assert _allowed(0, 5, 1.0, now, None) == 0


def test_help_documents_every_exit_code(cli):
    text = cli("bench", "--help").output
    for line in ("0  pass", "1  regression", "2  usage", "3  the baseline is not comparable", "4  inconclusive"):
        assert line in text
    assert "--until-decided" in text and "--max-time" in text
    assert "4 inconclusive" in cli("compare", "--help").output
