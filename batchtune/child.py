"""Running one library function in a spawned child process (the noise measurement uses it).

A crash, a kernel OOM kill or a hang in the user's model then ends the child, not the CLI, and the
torch thread settings of the child never leak into the caller. Unlike :class:`batchtune.worker.TrialRunner`
the child lives for one call only. Errors raised on purpose (:class:`BatchtuneError`) come back as the
same class with the same message.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from typing import Any

from batchtune import errors
from batchtune.errors import BatchtuneError

_SPAWN = mp.get_context("spawn")


def _child_main(conn: Any, fn: Callable[..., Any], kwargs: dict[str, Any], env: dict[str, str]) -> None:
    import os

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    try:
        result = fn(**kwargs)
    except BatchtuneError as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    except Exception as exc:  # anything else is an internal error; one line is enough for the caller
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        conn.send(("error", "BatchtuneError", f"{type(exc).__name__}: {first}"))
        return
    conn.send(("ok", result))


def call_in_child(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    what: str = "the measurement",
) -> Any:
    """Call ``fn(**kwargs)`` in a fresh spawned process and return its (picklable) result.

    ``fn`` must be a module-level function. Raises the child's :class:`BatchtuneError` again here,
    or a :class:`BatchtuneError` when the child dies or runs past ``timeout`` seconds.
    """
    parent, child = _SPAWN.Pipe()
    proc = _SPAWN.Process(target=_child_main, args=(child, fn, kwargs, dict(env or {})), daemon=True)
    proc.start()
    child.close()
    start = time.monotonic()
    try:
        if not parent.poll(timeout):
            raise BatchtuneError(
                f"{what} gave no result within {timeout:g} s and was stopped; pass fewer --steps or a larger --timeout"
            )
        try:
            message = parent.recv()
        except (EOFError, OSError):
            proc.join(timeout=5)
            raise BatchtuneError(
                f"the process running {what} died (exit code {proc.exitcode}) after {time.monotonic() - start:.0f} s; "
                "a negative code is a signal (-9: the kernel's out-of-memory killer); use smaller batch sizes"
            ) from None
    except BaseException:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        parent.close()
        raise
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)
    parent.close()
    if message[0] == "ok":
        return message[1]
    cls = getattr(errors, message[1], BatchtuneError)
    if not (isinstance(cls, type) and issubclass(cls, BatchtuneError)):
        cls = BatchtuneError
    raise cls(message[2])
