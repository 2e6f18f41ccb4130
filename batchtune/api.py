"""The Python API: keyword-only functions that mirror the CLI commands."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchtune.errors import UsageError
from batchtune.study.config import SearchConfig, Tolerance, parse_tolerance

# The CLI options whose Python spelling differs from the config field: option -> (field, value map).
_SEARCH_CLI: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "output": ("output_dir", str),
    "no_plots": ("plots", lambda v: not v),
    "no_probe": ("probe", lambda v: not v),
    "no_doctor": ("doctor", lambda v: not v),
}
_PROBE_CLI: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "output": ("output_dir", str),
    "no_plots": ("plots", lambda v: not v),
    "precision": ("precisions", lambda v: v),
}


def search(task: str | Path, **options: Any) -> Any:
    """Run ``batchtune search`` from Python and return a :class:`~batchtune.search.SearchResult`.

    Keyword options are the CLI options with underscores (``trials=``, ``epochs=``, ``output=``,
    ``no_plots=``...) or the fields of :class:`SearchConfig` they set (``output_dir=``, ``plots=``).
    ``result.trials`` is a pandas DataFrame; ``result.recommendation`` the recommended configuration.
    """
    _check_main_guard("search")
    on_event = options.pop("on_event", None)
    options = _keywords("search", SearchConfig, _SEARCH_CLI, _cli_strings("search", options))
    from batchtune.study.run import search as run_search

    tol = options.get("tolerance")
    if isinstance(tol, str):
        options["tolerance"] = parse_tolerance(tol)
    for key in ("batch_sizes", "norms", "precisions"):
        value = options.get(key)
        if isinstance(value, str):  # the CLI's comma-separated spelling
            value = [int(v) if key == "batch_sizes" else v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            options[key] = tuple(value)
    config = SearchConfig(task_path=str(task), **options)
    return run_search(config, on_event=on_event)


def probe(task: str | Path, *, write: bool = True, **options: Any) -> Any:
    """Run ``batchtune probe`` from Python and return a :class:`~batchtune.probing.result.ProbeResult`.

    Keyword options are the CLI options with underscores (``precision=``, ``memory_budget=``,
    ``output=``, ``no_plots=``...) or the fields of :class:`~batchtune.probing.measure.ProbeConfig`
    they set (``precisions=``, ``output_dir=``, ``plots=``). With ``write`` the report goes to
    ``<output_dir>/<name>/``.
    """
    _check_main_guard("probe")
    from batchtune.probing.measure import ProbeConfig
    from batchtune.probing.measure import probe as run_probe
    from batchtune.probing.report import write_probe_report

    options = _keywords("probe", ProbeConfig, _PROBE_CLI, _cli_strings("probe", options))

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


def _cli_strings(command: str, options: dict[str, Any]) -> dict[str, Any]:
    """Values given as the command line spells them (``memory_budget="6GiB"``, ``headroom="10%"``,
    ``batch_sizes="8,16"``, ``epochs="1"``), parsed by that CLI option's own type and callback, so a bad one is
    the CLI's one-line :class:`UsageError` before anything runs. Other values pass as they are."""
    import click

    from batchtune.cli import cli

    command_obj = cli.commands[command]
    params = {p.name: p for p in command_obj.params if isinstance(p, click.Option) and not p.is_flag}
    ctx = click.Context(command_obj)
    out = dict(options)
    for key, value in options.items():
        param = params.get(key)
        if param is None or not isinstance(value, str):
            continue
        try:
            parsed = param.type.convert(value, param, ctx)
            out[key] = param.callback(ctx, param, parsed) if param.callback is not None else parsed
        except click.BadParameter as exc:
            raise UsageError(f"batchtune.{command}({key}={value!r}): {exc.format_message()}") from None
    return out


def _keywords(
    command: str, config: type, cli: dict[str, tuple[str, Callable[[Any], Any]]], options: dict[str, Any]
) -> dict[str, Any]:
    """Map CLI spellings to config fields; an unknown keyword is a :class:`UsageError` listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(config)} - {"task_path"}
    valid = sorted(fields | set(cli))
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = key
        if key in cli:
            name, convert = cli[key]
            value = convert(value)
        if key in ("json", "as_json"):
            raise UsageError(f"batchtune.{command}(json=...) is a CLI option; the returned result's .summary holds what --json prints")
        if name not in fields:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise UsageError(
                f"batchtune.{command}() got an unknown keyword {key}={value!r}{hint} Valid keywords (the CLI options "
                f"with underscores, or the config fields they set): {', '.join(valid)}"
            )
        if name in out:
            raise UsageError(f"batchtune.{command}() got {name} twice (as {key}= and as its other spelling); pass one")
        out[name] = value
    return out


def _check_main_guard(command: str) -> None:
    """Refuse a call that runs while the script is imported, outside ``if __name__ == "__main__":``.

    batchtune runs trials in processes started with ``spawn``, which import the main script again;
    unguarded, the script would start the search again in every worker, and each worker dies
    while starting (the search then fails much later, blaming memory).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        return  # an interactive session, python -c, a notebook: spawn imports nothing again
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return
    line = frame.f_lineno
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.lineno <= line <= (node.end_lineno or line):
            return
    raise UsageError(
        f"{path}:{line}: batchtune.{command}() runs while the script is imported; batchtune starts workers with "
        "spawn, which import the script again and would run it again: put the call under "
        "`if __name__ == \"__main__\":`"
    )


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1
