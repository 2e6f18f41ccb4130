"""The Python API: keyword-only functions that mirror the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchtune.study.config import SearchConfig, Tolerance, parse_tolerance


def search(task: str | Path, **options: Any) -> Any:
    """Run ``batchtune search`` from Python and return a :class:`~batchtune.search.SearchResult`.

    Keyword options are the fields of :class:`SearchConfig` (``trials=``, ``epochs=``, ``device=``...).
    ``result.trials`` is a pandas DataFrame; ``result.recommendation`` the recommended configuration.
    """
    from batchtune.study.run import search as run_search

    on_event = options.pop("on_event", None)
    tol = options.get("tolerance")
    if isinstance(tol, str):
        options["tolerance"] = parse_tolerance(tol)
    for key in ("batch_sizes", "norms", "precisions"):
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    config = SearchConfig(task_path=str(task), **options)
    return run_search(config, on_event=on_event)


def probe(task: str | Path, *, write: bool = True, **options: Any) -> Any:
    """Run ``batchtune probe`` from Python and return a :class:`~batchtune.probing.result.ProbeResult`.

    Keyword options are the fields of :class:`~batchtune.probing.measure.ProbeConfig` (``precisions=``,
    ``memory_budget=``, ``headroom=``...). With ``write`` the report goes to ``<output_dir>/<name>/``.
    """
    from batchtune.probing.measure import ProbeConfig
    from batchtune.probing.measure import probe as run_probe
    from batchtune.probing.report import write_probe_report

    for key in ("norms", "precisions"):
        if isinstance(options.get(key), (list, str)):
            value = options[key]
            options[key] = tuple(value.split(",") if isinstance(value, str) else value)
    config = ProbeConfig(task_path=str(task), **options)
    result = run_probe(config)
    if write:
        write_probe_report(result, Path(config.output_dir) / config.report_name, plots=config.plots)
    return result


def report(
    *,
    study: str,
    storage: str | None = None,
    output_dir: str | Path = "reports",
    studies_dir: str | Path = "studies",
    tolerance: Tolerance | str | None = None,
    current_batch_size: int | None = None,
    plots: bool = True,
) -> Any:
    """Regenerate the report of a stored study; returns the :class:`SearchResult`."""
    from batchtune.study.report import write_search_report
    from batchtune.study.run import load_result, quiet_optuna
    from batchtune.study.storage import default_storage, open_study

    if isinstance(tolerance, str):
        tolerance = parse_tolerance(tolerance)
    cfg = SearchConfig(
        task_path=study,
        study=study,
        storage=storage,
        studies_dir=str(studies_dir),
        output_dir=str(output_dir),
        tolerance=tolerance,
        current_batch_size=current_batch_size,
    ).validated()
    url = storage or default_storage(study, studies_dir)
    if storage is None and not Path(url.split("sqlite:///", 1)[1]).exists():
        from batchtune.errors import StorageError

        raise StorageError(
            f"no stored study {study!r}: {url.split('sqlite:///', 1)[1]} does not exist; run `batchtune search` "
            "first, or pass --storage with the study's URL"
        )
    with quiet_optuna():
        stored = open_study(cfg, [], create=False)
        result = load_result(stored, url, cfg)
    result.paths = write_search_report(result, Path(output_dir) / study, plots=plots)
    return result
