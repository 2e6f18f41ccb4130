"""The search: an Optuna study over batch size, learning rate and normalization, and its report.

- ``config``: SearchConfig and Tolerance, validated once.
- ``run``: search(), the phases from task file to report, top to bottom.
- ``coordinator``: the worker threads that claim, run and record trials.
- ``ledger``, ``storage``: the study's trials and storage, with few round trips.
- ``plan``, ``lr_rule``, ``accumulate``, ``target``: how a sampled configuration becomes a training run.
- ``results``, ``recommend``, ``summary``: the stored study read back, the recommendation, summary.json.
- ``report``, ``plots``: report.md, trials.csv and the PNG plots.
"""

from __future__ import annotations

from batchtune._lazy import attach

__all__ = ["SearchConfig", "SearchResult", "Tolerance", "load_result", "open_study", "search"]

__getattr__, __dir__ = attach(__name__, {
    "SearchConfig": "batchtune.study.config",
    "SearchResult": "batchtune.study.run",
    "Tolerance": "batchtune.study.config",
    "load_result": "batchtune.study.run",
    "open_study": "batchtune.study.storage",
    "search": "batchtune.study.run",
})
