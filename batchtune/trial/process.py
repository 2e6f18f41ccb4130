"""The one way batchtune runs the user's code apart from the caller: a spawned worker process.

A crash, a kernel OOM kill or a hang then costs one trial (or one measurement), not the study, and
the torch thread settings of the child never leak into the caller. :class:`TrialRunner` keeps its
process from trial to trial (torch is imported and the datasets are built once) and replaces it
when it dies; :func:`call_in_child` runs one library function in a runner of its own and closes it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from batchtune.trial.train import TrialResult, TrialSpec

log = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")


def _worker_main(conn: Any, task_path: str | None, env: dict[str, str]) -> None:
    import os

    # Ctrl-C goes to the whole process group; the coordinator decides what happens to the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A task's DataLoader workers (DATALOADER num_workers) are children of this worker, and
    # multiprocessing refuses children to a daemonic process. The flag only guards that here: the
    # parent still kills this process when it exits, and the DataLoader stops its own workers.
    mp.current_process()._config["daemon"] = False  # type: ignore[attr-defined]
    os.environ.update(env)
    if env.get("PYTHONPATH"):
        # A spawned child starts with its parent's sys.path; a PYTHONPATH given for this worker must
        # decide what the task file imports (bench --against-env measures another checkout this way).
        import sys

        sys.path[:0] = [os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p]
    from batchtune.errors import TaskError
    from batchtune.task.contract import load_task, make_dataset
    from batchtune.trial.train import run_trial

    # Import, task file and datasets once, before the first trial's clock starts.
    task, datasets = None, None
    try:
        if task_path is not None:
            task = load_task(task_path)
            datasets = (make_dataset(task, "train"), make_dataset(task, "val"))
        conn.send(("ready", None))
    except TaskError as exc:
        conn.send(("ready", str(exc)))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] == "call":
            context = WorkerContext(task_path, task, datasets)
            conn.send(_call(message[1], message[2], context))
            continue
        assert task is not None and datasets is not None, "a trial needs a runner with a task file"
        spec = TrialSpec(**message[1])

        def report(step: int, value: float) -> bool:
            conn.send(("report", step, value))
            return bool(conn.recv())

        def progress(step: int, total: int) -> None:
            conn.send(("progress", step, total))

        result = run_trial(task, spec, datasets[0], datasets[1], report=report, progress=progress)
        conn.send(("done", result.to_dict()))


class WorkerContext:
    """What a function run by :meth:`TrialRunner.call` gets: the task and its datasets, loaded once per worker."""

    def __init__(self, task_path: str | None, task: Any, datasets: tuple[Any, Any] | None) -> None:
        self.task_path = task_path
        self._task = task
        self._datasets = datasets

    @property
    def task(self) -> Any:
        if self._task is None:
            from batchtune.task.contract import load_task

            assert self.task_path is not None, "this runner has no task file"
            self._task = load_task(self.task_path)
        return self._task

    @property
    def datasets(self) -> tuple[Any, Any]:
        if self._datasets is None:
            from batchtune.task.contract import make_dataset

            self._datasets = (make_dataset(self.task, "train"), make_dataset(self.task, "val"))
        return self._datasets


def _call(target: str, kwargs: dict[str, Any], context: WorkerContext) -> tuple[str, Any, str | None]:
    """Run ``module:function(context, **kwargs)`` in the worker; its exceptions come back as one line,
    with the class name of a :class:`BatchtuneError` (None for any other exception)."""
    import importlib

    from batchtune.errors import BatchtuneError

    module, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
        return ("result", fn(context, **kwargs), None)
    except BatchtuneError as exc:
        return ("error", str(exc), type(exc).__name__)
    except Exception as exc:  # reported to the coordinator, which decides what it means
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return ("error", f"{type(exc).__name__}: {first}", None)


def _plain_call(context: WorkerContext, *, function: str, kwargs: dict[str, Any]) -> Any:
    """Adapter for :func:`call_in_child`: ``module:function(**kwargs)``, no task."""
    import importlib

    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def _task_call(context: WorkerContext, *, function: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Adapter for :meth:`TrialRunner.call_task`: ``module:function(task, train_set, val_set, **kwargs)``."""
    import importlib

    module, _, name = function.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return dict(fn(context.task, context.datasets[0], context.datasets[1], **kwargs))


@dataclass(frozen=True)
class CallResult:
    """The outcome of :meth:`TrialRunner.call`: ``ok`` with a value, or ``error``/``failed``/``timeout`` with a reason."""

    status: str
    value: Any = None
    reason: str | None = None
    error_class: str | None = None  # the BatchtuneError subclass the function raised, by name

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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
        task_path: the task file; the child imports it once. None for a runner that only runs
            library functions (:meth:`call`) that load what they need themselves.
        env: extra environment variables for the child (thread counts, a pinned GPU).
    """

    def __init__(self, task_path: str | None, *, env: dict[str, str] | None = None, startup_timeout: float = 600.0) -> None:
        self.task_path = task_path
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.interrupted = False
        self.device = "cpu"  # the device string trials use inside the child
        self.label = "cpu"  # the device as the user knows it (cuda:3 for a child pinned to GPU 3)
        self._proc: Any = None
        self._conn: Any = None
        self.pid: int | None = None

    def _start(self) -> str | None:
        """Start the child and wait until it is ready; returns why it could not start, or None."""
        parent, child = _SPAWN.Pipe()
        proc = _SPAWN.Process(target=_worker_main, args=(child, self.task_path, self.env), daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn, self.pid = proc, parent, proc.pid
        try:
            if not parent.poll(self.startup_timeout):
                self.kill()
                return f"the worker process did not start within {self.startup_timeout:g} s"
            _, error = parent.recv()
        except (EOFError, OSError):
            proc.join(timeout=5)
            code = proc.exitcode
            self.kill()
            return f"the worker process {_signal_name(code)} while starting"
        if error is not None:
            self.kill()
            return error
        return None

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
        on_progress: Callable[[int, int], None] | None = None,
    ) -> TrialResult:
        """Run one trial; a dead or hung worker becomes a failed result and is replaced next time.

        ``on_report(step, value)`` at each evaluation (True stops the trial); ``on_progress(step, total
        steps)`` about once a second while it trains.
        """
        if self.interrupted:
            return TrialResult(status="interrupted", reason="interrupted (Ctrl-C) before the trial started")
        if not self.alive():
            error = self._start()
            if error is not None:
                return TrialResult(status="failed", reason=error)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            self._conn.send(("run", asdict(spec)))
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
                if message[0] == "progress":
                    if on_progress is not None:
                        on_progress(message[1], message[2])
                    continue
                if message[0] == "report":
                    stop = on_report(message[1], message[2]) if on_report else False
                    self._conn.send(bool(stop))
                    continue
                return TrialResult(**message[1])
        except (EOFError, OSError, BrokenPipeError):
            code = self._reap()
            return TrialResult(
                status="failed",
                reason=f"the worker process {_signal_name(code)} during the trial",
                wall_time=time.monotonic() - start,
            )
        except BaseException:
            # KeyboardInterrupt or the like: the trial cannot finish, take its process with it.
            self.kill()
            raise

    def _reap(self) -> int | None:
        """After the pipe broke: wait for the dead child, clean up, and return its exit code."""
        proc = self._proc
        code = None
        if proc is not None:
            proc.join(timeout=5)
            code = proc.exitcode
        self.kill()
        return code

    def interrupt(self) -> None:
        """Kill the child from another thread; the thread waiting in :meth:`run` sees it die and cleans up.

        An interrupted runner starts no new process: later calls return an ``interrupted`` failure.
        """
        self.interrupted = True
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.kill()

    def call_task(self, target: str, kwargs: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Run ``module:function(task, train_set, val_set, **kwargs)`` in the child; its dict, or
        ``{"error": reason}`` for a failure, a dead worker or a timeout (``batchtune bench`` measures so)."""
        outcome = self.call("batchtune.trial.process:_task_call", timeout=timeout, function=target, kwargs=kwargs)
        return outcome.value if outcome.ok else {"error": outcome.reason}

    def call(self, target: str, *, timeout: float | None = None, **kwargs: Any) -> CallResult:
        """Run ``target`` (``"module:function"``) in the worker as ``function(context, **kwargs)``.

        The function gets a :class:`WorkerContext`; its return value must pickle. A dead or hung
        worker becomes a ``failed`` or ``timeout`` result and is replaced next time, as with trials.
        """
        if not self.alive():
            error = self._start()
            if error is not None:
                return CallResult("failed", reason=error)
        start = time.monotonic()
        try:
            self._conn.send(("call", target, kwargs))
            if not self._conn.poll(timeout):
                self.kill()
                return CallResult("timeout", reason=f"no result within {timeout:g} s; the worker was killed")
            kind, value, error_class = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = self._reap()
            return CallResult(
                "failed", reason=f"the worker process {_signal_name(code)} after {time.monotonic() - start:.1f} s"
            )
        except BaseException:
            self.kill()
            raise
        if kind == "error":
            return CallResult("error", reason=str(value), error_class=error_class)
        return CallResult("ok", value=value)

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


def call_in_child(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    what: str = "the measurement",
) -> Any:
    """Call ``fn(**kwargs)`` in a fresh worker process and return its (picklable) result.

    ``fn`` must be a module-level function. Raises the child's :class:`BatchtuneError` again here
    (same class, same message), or a :class:`BatchtuneError` when the child dies or runs past
    ``timeout`` seconds.
    """
    from batchtune import errors
    from batchtune.errors import BatchtuneError

    with TrialRunner(None, env=env) as runner:
        outcome = runner.call(
            "batchtune.trial.process:_plain_call", timeout=timeout, function=f"{fn.__module__}:{fn.__qualname__}",
            kwargs=kwargs,
        )
    if outcome.ok:
        return outcome.value
    if outcome.status == "timeout":
        raise BatchtuneError(
            f"{what} gave no result within {timeout:g} s and was stopped; pass fewer --steps or a larger --timeout"
        )
    if outcome.status == "failed":
        raise BatchtuneError(
            f"the process running {what} died: {outcome.reason}; if the kernel's out-of-memory killer sent the "
            "signal, use smaller batch sizes"
        )
    cls = getattr(errors, outcome.error_class or "", BatchtuneError)
    if not (isinstance(cls, type) and issubclass(cls, BatchtuneError)):
        cls = BatchtuneError
    raise cls(str(outcome.reason))
