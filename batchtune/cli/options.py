"""What every command shares: one-line errors with their exit codes, and option parsers."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from batchtune.errors import BatchtuneError
from batchtune.units import (
    check_seed,
    parse_flops,
    parse_fraction,
    parse_size,
    redact_url,
)


class Failure(click.ClickException):
    """A library error shown as one line, exiting with the error's code (2 for bad input)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # per instance: 1 or 2


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool((click.get_current_context().find_root().obj or {}).get("debug"))
        try:
            return fn(*args, **kwargs)
        except BatchtuneError as exc:
            if debug:
                raise
            raise Failure(redact_url(str(exc)), exc.exit_code) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            text = (str(exc).strip().splitlines() or [""])[0]
            raise Failure(
                redact_url(f"internal error: {type(exc).__name__}: {text} (run `batchtune --debug ...` for the traceback)"), 1
            ) from None

    return wrapper


def int_list(ctx: Any, param: Any, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers such as 16,48,96") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"{value!r}: every batch size must be a positive integer, e.g. 16,48,96")
    return out


def str_list(ctx: Any, param: Any, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    out = tuple(v.strip() for v in value.split(",") if v.strip())
    if not out:
        raise click.BadParameter("give at least one value, comma-separated")
    return out


def size_option(ctx: Any, param: Any, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def fraction_option(ctx: Any, param: Any, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_fraction(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def flops_option(ctx: Any, param: Any, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_flops(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def tolerance_option(ctx: Any, param: Any, value: str | None) -> Any:
    if value is None:
        return None
    from batchtune.study.config import parse_tolerance

    try:
        return parse_tolerance(value)
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def seed_option(ctx: Any, param: Any, value: int | None) -> int | None:
    if value is None:
        return None
    try:
        check_seed(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def name_option(ctx: Any, param: Any, value: str | None) -> str | None:
    """A study or report name: a plain name, never a path (it becomes a file and a folder)."""
    if value is None:
        return None
    from batchtune.study.config import check_plain_name

    try:
        check_plain_name(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """While a command works towards printing JSON, whatever else writes to stdout (the task file's prints, in
    this process and in the workers it starts, which inherit file descriptor 1) goes to stderr, so stdout holds
    the JSON alone; print it after the block."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def wrap_width() -> int:
    """The columns to wrap terminal text at: the terminal's (80 when it is not one), at most 100, less one."""
    import shutil

    return min(100, shutil.get_terminal_size((80, 24)).columns) - 1


def echo_wrapped(text: str, err: bool = False) -> None:
    """A paragraph wrapped at :func:`wrap_width`, never mid-word."""
    import textwrap

    click.echo(textwrap.fill(text, width=wrap_width(), subsequent_indent="  ", break_long_words=False,
                             break_on_hyphens=False), err=err)
