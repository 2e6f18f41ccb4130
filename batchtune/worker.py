"""Trials run in a worker process apart from the study coordinator.

A crash, a kernel OOM kill or a hang then costs one trial, not the study. The process is reused
from trial to trial (torch is imported and the datasets are built once) and replaced when it dies.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from batchtune.train import TrialResult, TrialSpec

log = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")


def _worker_main(conn: Any, task_path: str, env: dict[str, str]) -> None:
    import os

    # Ctrl-C goes to the whole process group; the coordinator decides what happens to the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    if env.get("PYTHONPATH"):
        # A spawned child starts with its parent's sys.path; a PYTHONPATH given for this worker must
        # decide what the task file imports (bench --against-env measures another checkout this way).
        import sys

        sys.path[:0] = [os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p]
    from batchtune.errors import TaskError
    from batchtune.task import load_task, make_dataset
    from batchtune.train import run_trial

    task = None
    datasets: tuple[Any, Any] | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        try:
            if task is None:
                task = load_task(task_path)
            if datasets is None:
                datasets = (make_dataset(task, "train"), make_dataset(task, "val"))
        except TaskError as exc:
            failed = {"error": str(exc)} if message[0] == "call" else TrialResult(status="failed", reason=str(exc)).to_dict()
            conn.send(("done", failed))
            continue
        if message[0] == "call":
            conn.send(("done", _call(message[1], message[2], task, datasets)))
            continue
        spec = TrialSpec(**message[1])

        def report(step: int, value: float) -> bool:
            conn.send(("report", step, value))
            return bool(conn.recv())

        result = run_trial(task, spec, datasets[0], datasets[1], report=report)
        conn.send(("done", result.to_dict()))


def _call(target: str, kwargs: dict[str, Any], task: Any, datasets: tuple[Any, Any]) -> dict[str, Any]:
    """Run ``module:function(task, train_set, val_set, **kwargs)``; its dict, or ``{"error": reason}``."""
    import importlib

    from batchtune.errors import TaskError

    module, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
        return dict(fn(task, datasets[0], datasets[1], **kwargs))
    except TaskError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # the measurement function failed: one line back to the coordinator
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"error": f"{type(exc).__name__}: {first}"}


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's out-of-memory killer sends this)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


class TrialRunner:
    """Runs trials of one task file in a reusable child process.

    Args:
        task_path: the task file; the child imports it once.
        env: extra environment variables for the child (thread counts, a pinned GPU).
    """

    def __init__(self, task_path: str, *, env: dict[str, str] | None = None) -> None:
        self.task_path = task_path
        self.env = dict(env or {})
        self._proc: Any = None
        self._conn: Any = None
        self.pid: int | None = None

    def _start(self) -> None:
        parent, child = _SPAWN.Pipe()
        proc = _SPAWN.Process(target=_worker_main, args=(child, self.task_path, self.env), daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn, self.pid = proc, parent, proc.pid

    def start(self) -> None:
        """Start the child now (it imports torch), so that several runners can start side by side."""
        if not self.alive():
            self._start()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def run(
        self,
        spec: TrialSpec,
        *,
        timeout: float | None = None,
        on_report: Callable[[int, float], bool] | None = None,
    ) -> TrialResult:
        """Run one trial; a dead or hung worker becomes a failed result and is replaced next time."""
        outcome = self._exchange(("run", asdict(spec)), timeout, on_report)
        return outcome if isinstance(outcome, TrialResult) else TrialResult(**outcome)

    def call(self, target: str, kwargs: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Run ``module:function(task, train_set, val_set, **kwargs)`` in the child.

        The function returns a picklable dict (``batchtune bench`` measures this way). A failure, a
        dead worker or a timeout comes back as ``{"error": reason}``.
        """
        outcome = self._exchange(("call", target, kwargs), timeout, None)
        return {"error": outcome.reason} if isinstance(outcome, TrialResult) else outcome

    def _exchange(
        self, request: tuple[Any, ...], timeout: float | None, on_report: Callable[[int, float], bool] | None
    ) -> Any:
        """Send one request; the child's answer, or a failed/timeout TrialResult when it never comes."""
        if not self.alive():
            self._start()
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            self._conn.send(request)
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._conn.poll(remaining):
                    self.kill()
                    return TrialResult(
                        status="timeout",
                        reason=f"no result within the trial timeout of {timeout:g} s; the worker was killed",
                        wall_time=time.monotonic() - start,
                    )
                message = self._conn.recv()
                if message[0] == "report":
                    stop = on_report(message[1], message[2]) if on_report else False
                    self._conn.send(bool(stop))
                    continue
                return message[1]
        except (EOFError, OSError, BrokenPipeError):
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            self.kill()
            return TrialResult(
                status="failed",
                reason=f"the worker process {_signal_name(code)} during the trial",
                wall_time=time.monotonic() - start,
            )
        except BaseException:
            # KeyboardInterrupt or the like: the trial cannot finish, take its process with it.
            self.kill()
            raise

    def kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        if self.alive():
            try:
                self._conn.send(("stop",))
                self._proc.join(timeout=5)
            except (OSError, BrokenPipeError):
                pass
        self.kill()

    def __enter__(self) -> TrialRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
