"""Loading the user's task file and checking it against the contract (see README, "The task file")."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchtune.errors import TaskError
from batchtune.task.choices import AS_BUILT, NORM_CHOICES

log = logging.getLogger(__name__)

_module_counter = itertools.count()

IMPORT_TIMEOUT = 120.0  # seconds a task file's import may take; BATCHTUNE_IMPORT_TIMEOUT overrides
IMPORT_NOTICE = 10.0  # seconds of importing after which a warning says what is being loaded


@dataclass(frozen=True)
class Task:
    """The callables and settings a task file provides. Built once by :func:`load_task`."""

    path: Path
    build_model: Callable[..., nn.Module]
    train_dataset: Callable[[], Any]
    val_dataset: Callable[[], Any]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    metric: Callable[[Any, Any], float]
    build_optimizer: Callable[..., torch.optim.Optimizer]
    metric_mode: str
    file_norms: tuple[str, ...] | None
    takes_norm: bool
    custom_loss: bool
    custom_metric: bool
    custom_optimizer: bool

    @property
    def name(self) -> str:
        return self.path.stem

    def where(self, function: str) -> str:
        return f"{self.path}: {function}"


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, the default loss."""
    return nn.functional.cross_entropy(output, target)


def default_metric(output: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy of one batch, the default metric."""
    return (output.argmax(dim=-1) == target).float().mean().item()


def default_optimizer(params: Any, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, the default optimizer."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def load_task(path: str | Path, *, import_timeout: float | None = None) -> Task:
    """Import a task file and return its callables, or raise :class:`TaskError` with the fix.

    The import gives up after ``import_timeout`` seconds (default ``BATCHTUNE_IMPORT_TIMEOUT`` or 120):
    module-level code that loops or waits for ever becomes a one-line error naming its line.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(
            f"{path}: no such task file; pass the path of a Python file that defines build_model, "
            "train_dataset and val_dataset (`batchtune init model.py` writes a template)"
        )
    if path.suffix != ".py":
        raise TaskError(f"{path}: a task file must be a Python file ending in .py")
    module = _import_file(path, _import_limit(import_timeout))

    def get(name: str, required: bool, signature: str) -> Any:
        value = getattr(module, name, None)
        if value is None:
            if required:
                raise TaskError(
                    f"{path}: {name}() is missing; define `def {signature}` at module level "
                    "(`batchtune init` writes a template)"
                )
            return None
        if not callable(value):
            raise TaskError(f"{path}: {name} is a {type(value).__name__}, not a function; define `def {signature}`")
        return value

    build_model = get("build_model", True, "build_model(norm='batch') -> torch.nn.Module")
    train_dataset = get("train_dataset", True, "train_dataset() -> torch.utils.data.Dataset")
    val_dataset = get("val_dataset", True, "val_dataset() -> torch.utils.data.Dataset")
    loss_fn = get("loss_fn", False, "loss_fn(output, target) -> torch.Tensor")
    metric = get("metric", False, "metric(output, target) -> float")
    build_optimizer = get("build_optimizer", False, "build_optimizer(params, lr) -> torch.optim.Optimizer")

    mode = getattr(module, "METRIC_MODE", "max")
    if mode not in ("max", "min"):
        raise TaskError(f"{path}: METRIC_MODE = {mode!r} is not valid; set it to \"max\" or \"min\"")
    norms = getattr(module, "NORMS", None)
    if norms is not None:
        if isinstance(norms, str) or not isinstance(norms, Sequence) or not norms:
            raise TaskError(f"{path}: NORMS must be a non-empty list such as [\"batch\", \"group\"]")
        norms = tuple(str(n) for n in norms)

    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(build_model).parameters
    except (TypeError, ValueError):
        params = {}
    takes_norm = "norm" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if norms is not None and takes_norm:
        unknown = [n for n in norms if n not in NORM_CHOICES]
        if unknown and "norm" not in params:
            raise TaskError(f"{path}: NORMS has unknown values {unknown}; choose from {list(NORM_CHOICES)}")

    return Task(
        path=path.resolve(),
        build_model=build_model,
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        loss_fn=loss_fn or default_loss,
        metric=metric or default_metric,
        build_optimizer=build_optimizer or default_optimizer,
        metric_mode=mode,
        file_norms=norms,
        takes_norm=takes_norm,
        custom_loss=loss_fn is not None,
        custom_metric=metric is not None,
        custom_optimizer=build_optimizer is not None,
    )


def _import_limit(value: float | None) -> float:
    if value is not None:
        return float(value)
    raw = os.environ.get("BATCHTUNE_IMPORT_TIMEOUT")
    try:
        return float(raw) if raw else IMPORT_TIMEOUT
    except ValueError:
        raise TaskError(f"BATCHTUNE_IMPORT_TIMEOUT={raw!r} is not a number of seconds; set it to e.g. 300") from None


class _ImportTimeout(BaseException):
    """Raised into the importing thread when the task file's import runs past its limit.

    A BaseException, so that a task file's own ``except Exception`` does not swallow it."""


@contextlib.contextmanager
def _time_limit(path: Path, limit: float) -> Iterator[None]:
    """Warn after a while, then raise :class:`_ImportTimeout` in this thread after ``limit`` seconds.

    In the main thread a SIGALRM timer (it also interrupts a blocking call such as ``time.sleep``);
    elsewhere an asynchronous exception set by a timer thread (runs at the next bytecode).
    """
    if not math.isfinite(limit) or limit <= 0:
        yield
        return
    notice_after = min(IMPORT_NOTICE, limit / 2)
    notice = threading.Timer(notice_after, lambda: log.warning(
        "still importing %s after %.3g s: its module-level code is running; batchtune gives up after %.3g s",
        path, notice_after, limit))
    notice.daemon = True
    notice.start()
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    lock = threading.Lock()
    state = {"done": False, "fired": False}
    ident = threading.get_ident()

    def fire(*_: Any) -> None:
        if main:
            raise _ImportTimeout()
        import ctypes

        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_ImportTimeout))

    timer: threading.Timer | None = None
    if main:
        started = time.monotonic()
        previous_handler = signal.signal(signal.SIGALRM, fire)
        previous_timer = signal.setitimer(signal.ITIMER_REAL, limit)
    else:
        timer = threading.Timer(limit, fire)
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        notice.cancel()
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_handler)
            if previous_timer[0] > 0:  # someone else's alarm (pytest-timeout, ...) goes on with its remaining time
                signal.setitimer(signal.ITIMER_REAL, max(1e-3, previous_timer[0] - (time.monotonic() - started)),
                                 previous_timer[1])
        else:
            with lock:
                state["done"] = True
                assert timer is not None
                timer.cancel()
                if state["fired"]:  # set but maybe not yet delivered: take it back
                    import ctypes

                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


def _import_file(path: Path, limit: float = IMPORT_TIMEOUT) -> Any:
    name = f"_batchtune_task_{path.stem}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"{path}: cannot be imported as a Python module; check the file name")
    module = importlib.util.module_from_spec(spec)
    # The task's own folder goes on sys.path while it imports, so it can import its sibling modules.
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        with _time_limit(path, limit):
            spec.loader.exec_module(module)
    except _ImportTimeout as exc:
        line = _user_line(exc, path)
        where = f" (its module-level code was running line {line[1:]})" if line else ""
        raise TaskError(
            f"{path}{line}: importing the file did not finish within {limit:g} s{where}; module-level code must "
            "not loop or wait: move slow work into the functions, or raise BATCHTUNE_IMPORT_TIMEOUT"
        ) from None
    except SyntaxError as exc:
        raise TaskError(f"{path}:{exc.lineno}: syntax error: {exc.msg}; fix that line and run again") from None
    except ImportError as exc:
        raise TaskError(
            f"{path}: import failed: {type(exc).__name__}: {exc}; install the missing package or fix the import"
        ) from None
    except Exception as exc:  # the user's module-level code raised
        line = _user_line(exc, path)
        raise TaskError(
            f"{path}{line}: running the file raised {type(exc).__name__}: {exc}; fix the module-level code"
        ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _user_line(exc: BaseException, path: Path) -> str:
    tb = exc.__traceback__
    line = ""
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


def call_user(task: Task, function: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a task-file function, turning its exception into a one-line :class:`TaskError`."""
    try:
        return fn(*args, **kwargs)
    except TaskError:
        raise
    except Exception as exc:
        line = _user_line(exc, task.path)
        raise TaskError(
            f"{task.path}{line}: {function} raised {type(exc).__name__}: {_one_line(exc)}; fix {function.split('(')[0]}"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- checking the contract


def make_dataset(task: Task, which: str) -> Any:
    """Call ``train_dataset()`` or ``val_dataset()`` and check it is a non-empty map-style dataset."""
    fn = task.train_dataset if which == "train" else task.val_dataset
    function = f"{which}_dataset()"
    dataset = call_user(task, function, fn)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TaskError(
            f"{task.path}: {function} returned a {type(dataset).__name__}, not a map-style dataset; "
            "return a torch.utils.data.Dataset with __len__ and __getitem__ (TensorDataset works)"
        )
    try:
        size = len(dataset)
    except Exception as exc:
        raise TaskError(f"{task.path}: len({function}) raised {type(exc).__name__}: {exc}; fix __len__") from None
    if size == 0:
        raise TaskError(f"{task.path}: {function} returned an empty dataset; it must hold at least one (input, target) item")
    item = call_user(task, f"{function}[0]", dataset.__getitem__, 0)
    check_item(task, function, item)
    return dataset


def check_item(task: Task, function: str, item: Any) -> None:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = type(item).__name__ + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise TaskError(
            f"{task.path}: {function}[0] is a {kind}, not an (input, target) pair; make __getitem__ return (input, target)"
        )
    inputs = item[0]
    ok = (
        isinstance(inputs, torch.Tensor)
        or (isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs))
        or (isinstance(inputs, Mapping) and inputs and all(isinstance(t, torch.Tensor) for t in inputs.values()))
    )
    if not ok:
        raise TaskError(
            f"{task.path}: {function}[0] has an input of type {type(inputs).__name__}; the input must be a tensor, "
            "a tuple/list of tensors or a dict of tensors"
        )


def forward(model: nn.Module, inputs: Any) -> Any:
    """Call the model the way the contract says: tensor, ``*tuple`` or ``**dict``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def build_model(task: Task, norm: str) -> nn.Module:
    """Build a fresh model for ``norm`` (passed to the factory, or converted from BatchNorm)."""
    from batchtune.task.norm import convert_norm

    if task.takes_norm:
        model = call_user(task, f"build_model(norm={norm!r})", task.build_model, norm=norm)
    else:
        model = call_user(task, "build_model()", task.build_model)
    if not isinstance(model, nn.Module):
        raise TaskError(
            f"{task.path}: build_model() returned a {type(model).__name__}, not a torch.nn.Module; return the model"
        )
    if not task.takes_norm and norm not in ("batch", AS_BUILT):
        from batchtune.task.norm import UnconvertibleNorm

        try:
            model = convert_norm(model, norm)
        except UnconvertibleNorm as exc:
            raise TaskError(f"{task.path}: build_model(): {exc}; {_NORM_FIX}, or search --norms batch") from None
    return model


_NORM_FIX = ("add a `norm` argument to build_model that builds each normalization itself "
             "(timm: create_model(..., norm_layer=...))")


def build_optimizer(task: Task, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    opt = call_user(task, f"build_optimizer(params, lr={lr:g})", task.build_optimizer, model.parameters(), lr)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TaskError(
            f"{task.path}: build_optimizer() returned a {type(opt).__name__}, not a torch.optim.Optimizer; return one"
        )
    return opt


def optimizer_family(task: Task) -> str:
    """``"sgd"`` or ``"adaptive"``: decides linear vs square-root learning-rate scaling."""
    probe = nn.Linear(1, 1)
    opt = build_optimizer(task, probe, 1e-3)
    adaptive = (
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.Adamax,
        torch.optim.NAdam,
        torch.optim.RAdam,
        torch.optim.Adagrad,
        torch.optim.Adadelta,
        torch.optim.RMSprop,
    )
    return "adaptive" if isinstance(opt, adaptive) else "sgd"


def search_norms(task: Task, requested: Sequence[str] | None) -> tuple[tuple[str, ...], str]:
    """The normalization choices to search and a note for the report.

    Of the default choices, those the factory rejects (raises for) and, without a ``norm`` argument,
    the swaps the model's layers do not allow are dropped, with a warning; named choices (``--norms``,
    ``NORMS``) are kept, so the dry run reports what is wrong with them.
    """
    explicit = tuple(requested or task.file_norms or ())
    if task.takes_norm:
        note = "build_model takes `norm`; each value is passed to it"
        if explicit:
            return explicit, note
        kept, dropped = [], []
        for norm in NORM_CHOICES:
            try:
                build_model(task, norm)
            except TaskError as exc:
                dropped.append((norm, str(exc)))
            else:
                kept.append(norm)
        if not kept:
            raise TaskError(dropped[0][1])
        if dropped:
            reason = dropped[0][1].split(": ", 1)[-1].rsplit("; fix", 1)[0]
            line = (f"build_model rejects norm {', '.join(n for n, _ in dropped)} ({reason}), so the default norms are "
                    f"{', '.join(kept)}; pass --norms (or NORMS) to choose others")
            log.warning("%s: %s", task.path, line)
            note += f"; {line}"
        return tuple(kept), note
    from batchtune.task.norm import count_batchnorm, unconvertible_layers

    model = build_model(task, AS_BUILT)
    if count_batchnorm(model) == 0:
        return (AS_BUILT,), "the model has no BatchNorm layer and build_model takes no `norm`, so it is searched as built"
    choices = explicit or NORM_CHOICES
    unknown = [n for n in choices if n not in NORM_CHOICES]
    if unknown:
        raise TaskError(
            f"{task.path}: norms {unknown} cannot be made by converting BatchNorm; choose from {list(NORM_CHOICES)}"
        )
    note = "BatchNorm layers of each fresh model are converted (group: GroupNorm(gcd(32,C)), layer: GroupNorm(1,C), none: Identity)"
    odd = unconvertible_layers(model)
    if odd:
        name, kind = odd[0]
        what = (f"{kind} at {name} is a BatchNorm subclass that may do more than normalize (an activation, a drop "
                "path), so batchtune will not swap it")
        if explicit and any(n != "batch" for n in explicit):
            raise TaskError(f"{task.path}: build_model(): {what}; {_NORM_FIX}, or search --norms batch")
        if not explicit:
            line = f"{what}: only batch norm is searched; {_NORM_FIX} to search the others"
            log.warning("%s: %s", task.path, line)
            return ("batch",), line
    return choices, note



def dry_run(task: Task, norms: Sequence[str]) -> None:
    """Run one tiny training and evaluation step on the CPU so contract errors surface before the study."""
    from torch.utils.data import default_collate

    train = make_dataset(task, "train")
    val = make_dataset(task, "val")
    n = min(2, len(train))
    for norm in norms:
        torch.manual_seed(0)
        model = build_model(task, norm)
        # A private copy: the dry run must not touch the model a user might hold elsewhere.
        opt = build_optimizer(task, model, 1e-3)
        batch = default_collate([train[i] for i in range(n)])
        inputs, target = batch[0], batch[1]
        model.train()
        output = call_user(task, f"model(input) (norm={norm})", forward, model, inputs)
        loss = call_user(task, "loss_fn(output, target)", task.loss_fn, output, target)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TaskError(
                f"{task.path}: loss_fn(output, target) returned {shape}, not a scalar tensor; reduce it with .mean()"
            )
        if not loss.requires_grad:
            raise TaskError(
                f"{task.path}: loss_fn(output, target) returned a tensor without grad; compute it from the model output"
            )
        call_user(task, "loss.backward()", loss.backward)
        opt.step()
        model.eval()
        with torch.no_grad():
            vb = default_collate([val[i] for i in range(min(2, len(val)))])
            vout = call_user(task, "model(input) on val_dataset", forward, model, vb[0])
            value = call_user(task, "metric(output, target)", task.metric, vout, vb[1])
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TaskError(
                f"{task.path}: metric(output, target) returned a {type(value).__name__}, not a number; return a float"
            ) from None
        if math.isnan(value):
            raise TaskError(f"{task.path}: metric(output, target) returned NaN on a fresh model; check the metric")
