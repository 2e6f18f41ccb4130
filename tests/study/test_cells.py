"""Speed and memory per cell: interleaved, calibrated, with an interval that says when it can't tell."""

from __future__ import annotations

import pytest

from batchtune.study.cells import Cell, CellTable, compare, describe, measure_cells
from batchtune.trial.process import TrialRunner


def cell(batch: int, ratios: list[list[float]], norm: str = "batch") -> Cell:
    return Cell(batch_size=batch, norm=norm, precision="fp32", ratios=tuple(tuple(r) for r in ratios), reference=0.003)


def test_a_cell_faster_in_every_round_is_faster_beyond_noise():
    slow = cell(32, [[1.0, 1.02, 0.98]] * 4)
    fast = cell(32, [[0.5, 0.51, 0.49]] * 4)
    cmp = compare(fast, slow)
    assert cmp.ratio == pytest.approx(2.0, rel=0.02)
    assert cmp.faster and cmp.tells and cmp.low > 1.9
    assert "2.00x" in describe(cmp)


def test_overlapping_rounds_cannot_be_told_apart():
    a = cell(32, [[1.0], [0.9], [1.1], [1.0]])
    b = cell(32, [[1.05], [0.95], [1.0], [0.97]])
    cmp = compare(a, b)
    assert not cmp.faster and not cmp.tells
    assert describe(cmp).startswith("can't tell")


def test_throughput_counts_the_batch_and_uses_one_reference():
    small = cell(16, [[1.0, 1.0]])
    big = cell(64, [[2.0, 2.0]])
    assert small.throughput == pytest.approx(16 / 0.003)
    assert big.throughput == pytest.approx(64 / (2 * 0.003))
    assert compare(big, small).ratio == pytest.approx(2.0)


def fake_call(visits: list[tuple[int, str]], oom_above: int, slow_norm: str):
    """A stand-in for the worker: step time grows with the batch, 'slow_norm' costs twice, OOM above a size."""

    def call(plan):
        b, norm = plan["batch_size"], plan["norm"]
        visits.append((b, norm))
        if b > oom_above:
            return {"error": f"out of memory at batch size {b}"}
        step = 0.001 * b * (2 if norm == slow_norm else 1)
        steps = plan["steps"]
        return {"wall": [step] * steps, "cpu": [step] * steps,
                "calibration": {"wall": [0.002] * steps, "cpu": [0.002] * steps},
                "peak_memory_bytes": 1000 * b, "memory_kind": "rss"}

    return call


def test_cells_are_visited_in_interleaved_rounds_and_failures_are_dropped():
    visits: list[tuple[int, str]] = []
    cells = [(b, n, "fp32") for b in (8, 16, 32) for n in ("batch", "group")]
    table = measure_cells(fake_call(visits, oom_above=16, slow_norm="group"), cells, device="cpu", threads=1, seed=0,
                          limit_bytes=None, headroom=0.1, rounds=3, steps=4, warmup=1)
    # Each round visits every cell once (a failed cell only once in all), in a new order.
    assert len(visits) == 3 * 4 + 2
    assert visits[:6] != visits[6:12]
    assert {c.batch_size for c in table.fitting()} == {8, 16}
    assert "out of memory" in table.get(32, "batch").error
    assert table.get(8, "group").throughput == pytest.approx(table.get(8, "batch").throughput / 2)
    assert table.samples == sum((1 + 4) * b for b, _, _ in cells if b <= 16) * 3
    assert table.clock == "cpu"


def test_a_cell_over_the_memory_limit_with_headroom_is_not_searched():
    cells = [(8, "batch", "fp32"), (16, "batch", "fp32")]
    table = measure_cells(fake_call([], oom_above=10**6, slow_norm=""), cells, device="cpu", threads=1, seed=0,
                          limit_bytes=16_000, headroom=0.1, rounds=1, steps=3, warmup=0)
    assert table.get(8, "batch").fits
    assert "headroom" in table.get(16, "batch").over_limit  # 16,000 bytes is above 90% of the limit
    again = CellTable.from_dict(table.to_dict())
    assert [c.fits for c in again.cells.values()] == [True, False]


def test_cells_measured_in_a_worker_rank_a_larger_batch_faster_per_sample(tasks):
    with TrialRunner(str(tasks / "tiny_mlp.py")) as runner:
        table = measure_cells(
            lambda plan: runner.call_task("batchtune.gate.measure:measure_repeat", {"plan": plan}, timeout=120),
            [(4, "batch", "fp32"), (64, "batch", "fp32")], device="cpu", threads=1, seed=0, limit_bytes=None,
            headroom=0.1, rounds=2, steps=5, warmup=2,
        )
    small, big = table.get(4, "batch"), table.get(64, "batch")
    assert small.fits and big.fits and len(big.ratios) == 2
    assert big.throughput > small.throughput
    assert big.peak_memory_bytes > 0
