"""The search's plots: near-equals picked by the tolerance, axes framed on the decision, one colour per norm."""

from __future__ import annotations

import pandas as pd

from batchtune.study import plots


def trials() -> pd.DataFrame:
    rows = [
        # trial, batch, norm, metric: two outliers far below the decision band (0.97-0.99)
        (0, 16, "batch", 0.985), (1, 16, "batch", 0.38), (2, 32, "group", 0.980), (3, 64, "group", 0.975),
        (4, 64, "layer", 0.40), (5, 32, "batch", 0.978), (6, 64, "batch", 0.982),
    ]
    return pd.DataFrame([{"trial": t, "batch_size": b, "norm": n, "metric": m, "status": "ok", "lr": 0.01,
                          "throughput": 1000.0 * b ** 0.5, "peak_memory_bytes": (400 + b) * 2**20}
                         for t, b, n, m in rows])


SUMMARY = {
    "metric_mode": "max",
    "recommendation": {"trial": 6, "params": {"batch_size": 64, "norm": "batch", "lr": 0.01}, "metric": 0.982,
                       "best_trial": 0, "best_metric": 0.985, "tolerance": {"value": 0.005, "kind": "absolute"}},
    "candidates": [
        {"trial": 0, "params": {"batch_size": 16, "norm": "batch", "lr": 0.01}, "mean": 0.985, "spread": 0.002},
        {"trial": 6, "params": {"batch_size": 64, "norm": "batch", "lr": 0.01}, "mean": 0.982, "spread": 0.001},
        {"trial": 2, "params": {"batch_size": 32, "norm": "group", "lr": 0.01}, "mean": 0.970, "spread": 0.004},
    ],
}


def test_near_equals_are_the_candidates_within_the_tolerance_of_the_best():
    near_cells, near_trials, band = plots._highlights(SUMMARY, trials())
    assert band == (0.98, 0.985)
    assert near_cells == {(16, "batch")} and near_trials == {0}  # not the recommendation, not 0.970


def test_metric_axis_frames_the_band_not_the_outliers():
    low, high = plots._focus_limits([0.985, 0.98, 0.975, 0.40], (0.98, 0.985), "max")
    assert 0.92 < low < 0.975 and 0.985 < high < 0.995  # ten tolerances at most, the 0.40 cell off the axis
    low, high = plots._focus_limits([0.985, 0.984], (0.98, 0.985), "max")
    assert high - low >= 3 * 0.005  # the band never fills the axis


def test_search_plots_are_written_with_distinct_titles_and_norm_colours(tmp_path):
    curves = pd.DataFrame([{"trial": t, "batch_size": 16, "norm": "batch", "lr": 0.01, "samples": s,
                            "val_metric": 0.9 + 0.01 * t + s / 1e5} for t in (0, 6) for s in (100, 200, 300)])
    paths = plots.search_plots(trials(), curves, tmp_path, 6, summary=SUMMARY)
    assert set(paths) == {"metric", "throughput", "memory", "curves"}
    assert all(p.stat().st_size > 10_000 for p in paths.values())
    from batchtune.probing.report import _colour

    class Curve:
        norm, precision = "group", "fp32"

    assert _colour(Curve(), 1) == (plots.norm_colour("group"), "-")  # the probe's plots use the same colours
    assert len({plots.norm_colour(n) for n in ("batch", "group", "layer", "none")}) == 4


def test_the_best_per_cell_line_breaks_at_a_cell_off_the_axis(tmp_path, monkeypatch):
    """Layer norm's only cell (0.40) is far below the band: no line segment is drawn to it."""
    import matplotlib.axes

    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        if len(args) >= 2 and len(args[0]):
            drawn.append((list(args[0]), [float(v) for v in args[1]]))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    plots._metric_plot(plots._plt(), trials(), SUMMARY, 6, set(), (0.98, 0.985), tmp_path)
    by_x = {tuple(x): y for x, y in drawn}
    assert by_x[(16, 32, 64)] == [0.985, 0.978, 0.982]  # batch norm: every cell within the axis
    layer = by_x[(64,)]
    assert len(layer) == 1 and layer[0] != layer[0]  # NaN: the 0.40 cell is off the axis, not joined


def test_a_tolerance_far_under_the_seed_noise_keeps_the_recommendation_and_candidates_on_the_axis(tmp_path, monkeypatch):
    """A regression error (lower is better) gets a 1% relative tolerance, a tenth of its seed spread: framed on
    ten tolerances alone, the axis left out the recommended star and every candidate (seen on an MSE task)."""
    import matplotlib.axes

    mse = trials().assign(metric=[0.0224, 0.9, 0.0297, 0.0249, 0.95, 0.0246, 0.031])
    summary = {
        "metric_mode": "min",
        "recommendation": {"trial": 6, "params": {"batch_size": 64, "norm": "batch", "lr": 0.01}, "metric": 0.02554,
                           "best_trial": 6, "best_metric": 0.02554, "tolerance": {"value": 0.01, "kind": "relative"}},
        "candidates": [
            {"trial": 6, "params": {"batch_size": 64, "norm": "batch", "lr": 0.01}, "mean": 0.02554, "spread": 0.0015},
            {"trial": 2, "params": {"batch_size": 32, "norm": "group", "lr": 0.01}, "mean": 0.0361, "spread": 0.0006},
        ],
    }
    limits, labels = [], []
    real_ylim, real_span = matplotlib.axes.Axes.set_ylim, matplotlib.axes.Axes.axhspan
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylim", lambda self, *a, **k: (len(a) == 2 and limits.append(a)) or real_ylim(self, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "axhspan",
                        lambda self, *a, **k: labels.append(k.get("label")) or real_span(self, *a, **k))
    near, _, band = plots._highlights(summary, mse)
    plots._metric_plot(plots._plt(), mse, summary, 6, near, band, tmp_path)
    low, high = limits[-1]
    assert low <= 0.0224 and high >= 0.0361 + 0.0006  # the best trial, the star and every candidate's bar
    assert high < 0.9  # the diverged trials stay off the axis
    assert labels == ["tolerance above the best"]  # lower is better: the band lies above the best

    curves = pd.DataFrame([{"trial": t, "batch_size": 16, "norm": "batch", "lr": 0.01, "samples": s,
                            "val_metric": final * (1 + 3 / s)} for t, final in ((6, 0.0255), (2, 0.036), (0, 0.05))
                           for s in (1, 2, 3)])
    limits.clear()
    plots._curves_plot(plots._plt(), curves, summary, 6, set(), band, tmp_path)
    low, high = limits[-1]
    assert low <= 0.0255 and high >= 0.036  # the better half's finals, as the axis label says


def test_the_learning_curves_legend_lists_only_norms_with_a_curve_on_the_axis(tmp_path, monkeypatch):
    """Layer norm's only trial stays near chance, far below the decision: its colour is not in the legend."""
    import matplotlib.axes

    labels = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: labels.append(k.get("label")) or real_plot(self, *a, **k))
    curves = pd.DataFrame([{"trial": t, "batch_size": 16, "norm": norm, "lr": 0.01, "samples": s, "val_metric": m}
                           for t, norm, m in ((0, "batch", 0.985), (6, "batch", 0.982), (2, "group", 0.98),
                                              (4, "layer", 0.40)) for s in (100, 200)])
    plots._curves_plot(plots._plt(), curves, SUMMARY, 6, set(), (0.98, 0.985), tmp_path)
    assert {"batch norm", "group norm"} <= set(labels) and "layer norm" not in labels
