"""Loading the user's task file and checking it against the contract (see README, "The task file")."""

from __future__ import annotations

import contextlib
import functools
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
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
# DataLoader settings a task file may set in DATALOADER; batchtune owns batch size, shuffling and drop_last.
LOADER_OPTIONS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "timeout",
                  "worker_init_fn", "multiprocessing_context", "in_order")
COLLATE_PROBE = 8  # items the dry run collates together, so inputs of different lengths show up before a trial
IGNORE_INDEX = -100  # cross_entropy's default ignore_index; Hugging Face pads labels with it


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
    collate_fn: Callable[[list[Any]], Any] | None = None
    target_key: str | None = None  # TARGET_KEY: the target's key in dict items (Hugging Face datasets)
    loader_options: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def name(self) -> str:
        return self.path.stem

    def where(self, function: str) -> str:
        return f"{self.path}: {function}"


class OutputError(TypeError):
    """A model output the default loss or metric cannot find the logits in; the message says what it is."""


def describe(value: Any) -> str:
    """A short description of a model output or a target: ``Tensor (2, 10)``, ``tuple (Tensor (2, 7, 16), tuple)``."""
    if isinstance(value, torch.Tensor):
        return f"Tensor {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} ({', '.join(describe(v) if isinstance(v, torch.Tensor) else type(v).__name__ for v in value)})"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {list(value.keys())}"
    return type(value).__name__


def model_loss(output: Any) -> torch.Tensor | None:
    """The loss a model computed itself (a ``loss`` entry of a dict or ``ModelOutput``), else None."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
    elif isinstance(output, (torch.Tensor, tuple, list)):
        return None
    else:
        loss = getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def logits(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor itself; ``logits`` of a dict or a Hugging Face
    ``ModelOutput``; the first tensor with a batch dimension of a tuple (``nn.LSTM``, ``return_dict=False``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for value in output:
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                return value
        raise OutputError(f"the model output is a {describe(output)} with no tensor of logits")
    value = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(value, torch.Tensor):
        return value
    raise OutputError(f"the model output is a {describe(output)} without `logits`")


def class_dim(out: torch.Tensor, target: torch.Tensor) -> int:
    """Where the classes are: dim 1 as torch's cross_entropy expects, or last for class-last outputs
    such as a language model's (batch, tokens, vocabulary) against (batch, tokens) targets."""
    if out.dim() > 2 and tuple(target.shape) == tuple(out.shape[:-1]) and tuple(target.shape) != (out.shape[0], *out.shape[2:]):
        return -1
    return 1 if out.dim() > 1 else 0


def default_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """The model's own ``loss`` when it returned one, else cross-entropy on its logits."""
    own = model_loss(output)
    if own is not None:
        return own
    out = logits(output)
    if class_dim(out, target) == -1:
        return nn.functional.cross_entropy(out.flatten(0, -2), target.flatten())
    return nn.functional.cross_entropy(out, target)


def default_metric(output: Any, target: torch.Tensor) -> float:
    """Top-1 accuracy of one batch on the logits, the default metric (targets of -100 are ignored, as in the loss;
    class probabilities count their most likely class)."""
    out = logits(output)
    dim = class_dim(out, target)
    pred = out.argmax(dim=dim)
    if target.is_floating_point() and target.shape == out.shape:  # class probabilities (soft labels): their top class
        target = target.argmax(dim=dim)
    keep = target != IGNORE_INDEX
    return ((pred == target) & keep).sum().item() / max(1, int(keep.sum().item()))


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
    collate_fn = get("collate_fn", False, "collate_fn(items) -> (input, target)")
    _check_near_misses(path, module, {"loss_fn": loss_fn, "metric": metric, "build_optimizer": build_optimizer})
    target_key = getattr(module, "TARGET_KEY", None)
    if target_key is not None and not isinstance(target_key, str):
        raise TaskError(f"{path}: TARGET_KEY = {target_key!r} must be a string, the key of the target in dict items, e.g. \"label\"")
    loader = getattr(module, "DATALOADER", None) or {}
    if not isinstance(loader, Mapping):
        raise TaskError(f"{path}: DATALOADER must be a dict of DataLoader settings such as {{\"num_workers\": 2}}")
    bad = [k for k in loader if k not in LOADER_OPTIONS]
    if bad:
        owned = {"batch_size", "shuffle", "drop_last", "sampler", "batch_sampler", "generator"}
        why = ("batchtune sets it per trial" if bad[0] in owned
               else "define collate_fn(items) at module level instead" if bad[0] == "collate_fn" else "it is not a setting batchtune passes on")
        raise TaskError(f"{path}: DATALOADER has {bad[0]!r}: {why}; allowed keys are {', '.join(LOADER_OPTIONS)}")

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
        collate_fn=collate_fn,
        target_key=target_key,
        loader_options=types.MappingProxyType(dict(loader)),
    )


# Names a user may give the optional functions, and the name batchtune reads (a function under another
# name is never called, and its default stands in silently). Not collate_fn: a collate helper is common,
# and items that need one fail to stack with an error that names collate_fn anyway.
NEAR_MISSES = {
    "build_optimizer": ("optimizer", "make_optimizer", "get_optimizer", "create_optimizer", "configure_optimizer",
                        "configure_optimizers", "optimizer_fn"),
    "loss_fn": ("loss", "criterion", "compute_loss", "loss_function", "get_loss"),
    "metric": ("metric_fn", "compute_metric", "metrics", "eval_metric", "metric_function"),
}


def _check_near_misses(path: Path, module: Any, found: Mapping[str, Any]) -> None:
    """A function the task file defines under a near-miss of an optional name (``optimizer`` for
    ``build_optimizer``) would be ignored for the default: a one-line error naming the right name."""
    for name, misses in NEAR_MISSES.items():
        if found.get(name) is not None:
            continue
        for miss in misses:
            value = getattr(module, miss, None)
            if inspect.isfunction(value) and value.__module__ == module.__name__:
                raise TaskError(
                    f"{path}: {miss}() is defined but batchtune reads `{name}`, so it would be ignored for the "
                    f"default; rename it to {name} (or, if it is a helper, give it another name)"
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
    """Check one dataset item: an ``(input, target)`` pair, or a dict holding ``TARGET_KEY``.

    With a ``collate_fn`` an item may be anything: the collated batch is checked in the dry run.
    """
    if task.collate_fn is not None:
        return
    if isinstance(item, Mapping):
        keys = list(item.keys())
        if task.target_key is None:
            guess = next((k for k in ("label", "labels", "target", "y") if k in item), keys[0] if keys else "label")
            raise TaskError(
                f"{task.path}: {function}[0] is a dict with keys {keys}, not an (input, target) pair; set "
                f"TARGET_KEY = {guess!r} in the task file to name its target (the other keys are the model's inputs)"
            )
        if task.target_key not in item:
            raise TaskError(
                f"{task.path}: {function}[0] has no key {task.target_key!r} (TARGET_KEY); its keys are {keys}: "
                "set TARGET_KEY to the target's key"
            )
        _check_inputs(task, f"{function}[0]", {k: v for k, v in item.items() if k != task.target_key}, items=True)
        return
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = type(item).__name__ + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        raise TaskError(
            f"{task.path}: {function}[0] is a {kind}, not an (input, target) pair; make __getitem__ return (input, target)"
        )
    _check_inputs(task, f"{function}[0]", item[0], items=True)


def _batchable(value: Any, items: bool) -> bool:
    """A tensor; in a dataset item also a numeric NumPy array, which torch's default_collate makes one."""
    if isinstance(value, torch.Tensor):
        return True
    import numpy as np

    return items and isinstance(value, np.ndarray) and value.dtype.kind in "biufc"


def _check_inputs(task: Task, where: str, inputs: Any, *, items: bool) -> None:
    """The model's input must be a tensor, a tuple/list of tensors or a dict of tensors (in a dataset item,
    numeric NumPy arrays stand for tensors: the batch is collated as a DataLoader does)."""
    if isinstance(inputs, Mapping) and inputs:
        for key, value in inputs.items():
            if not _batchable(value, items):
                fix = ("call .with_format(\"torch\") on a Hugging Face dataset, or return tensors" if items
                       else "make collate_fn return tensors")
                raise TaskError(
                    f"{task.path}: {where} holds a {type(value).__name__} under {key!r}, not a tensor; {fix}"
                    + ("; inputs of different lengths also need collate_fn(items) to pad them" if items else "")
                )
        return
    ok = _batchable(inputs, items) or (
        isinstance(inputs, (tuple, list)) and inputs and all(_batchable(t, items) for t in inputs)
    )
    if not ok:
        raise TaskError(
            f"{task.path}: {where} has an input of type {type(inputs).__name__}; the input must be a tensor, "
            "a tuple/list of tensors or a dict of tensors"
            + ("" if task.collate_fn is not None else " (or define collate_fn(items) that makes them)")
        )


def collate(task: Task, items: list[Any], function: str) -> Any:
    """Make a batch of dataset items with the task's ``collate_fn`` or torch's ``default_collate``."""
    from torch.utils.data import default_collate

    if task.collate_fn is not None:
        return call_user(task, "collate_fn(items)", task.collate_fn, items)
    try:
        return default_collate(items)
    except RuntimeError as exc:
        raise collate_error(task, function, exc) from None
    except (TypeError, ValueError) as exc:
        raise TaskError(
            f"{task.path}: items of {function} cannot be batched: {_one_line(exc)}; return tensors, or define "
            "collate_fn(items) in the task file that builds the batch"
        ) from None


def collate_error(task: Task, function: str, exc: BaseException) -> BaseException:
    """torch.stack's "equal size" failure, as the one line that names the fix; other errors unchanged."""
    text = str(exc)
    if task.collate_fn is not None or "equal size" not in text:
        return exc
    shapes = text.split("but got", 1)[-1].strip().rstrip(".")
    return TaskError(
        f"{task.path}: items of {function} have inputs of different shapes ({shapes}), which cannot be stacked "
        "into a batch; define collate_fn(items) in the task file that pads them to one length "
        "(torch.nn.utils.rnn.pad_sequence), see README \"Variable-length data\""
    )


def split_batch(task: Task, batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a collated batch: a pair, or a dict whose ``TARGET_KEY`` entry is the target.

    The dict stays whole as the input: :func:`forward` passes the target on only to a model whose
    ``forward`` names that parameter (Hugging Face's ``labels``), so such a model computes its own loss.
    """
    if task.target_key is not None and isinstance(batch, Mapping):
        if task.target_key not in batch:
            raise TaskError(
                f"{task.path}: a batch has no key {task.target_key!r} (TARGET_KEY); its keys are {list(batch.keys())}"
            )
        return dict(batch), batch[task.target_key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    made = "collate_fn(items) returned" if task.collate_fn is not None else "a batch is"
    raise TaskError(
        f"{task.path}: {made} a {describe(batch)}, not an (input, target) pair"
        + (f" or a dict with {task.target_key!r}" if task.target_key else "") + "; return (input, target)"
    )


@functools.lru_cache(maxsize=256)
def _names_parameter(cls: Any, name: str) -> bool:
    """Whether ``cls.forward`` has a parameter called ``name`` (``**kwargs`` alone does not count)."""
    try:
        return name in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def forward(model: nn.Module, inputs: Any, target_key: str | None = None) -> Any:
    """Call the model the way the contract says: tensor, ``*tuple`` or ``**dict``.

    A dict input that holds the target under ``target_key`` passes it only to a model whose forward
    names that parameter (a Hugging Face model computes its loss from ``labels``).
    """
    if isinstance(inputs, Mapping):
        cls: Any = type(model)  # hashable, whatever mypy thinks of nn.Module's __hash__
        if target_key is not None and target_key in inputs and not _names_parameter(cls, target_key):
            inputs = {k: v for k, v in inputs.items() if k != target_key}
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
        named = [n for n in explicit if n not in ("batch", AS_BUILT)]
        if named:
            where = "--norms" if requested else "NORMS"
            raise TaskError(
                f"{task.path}: {where} names {', '.join(named)}, but the model has no BatchNorm layer to convert and "
                f"build_model takes no `norm`, so it can only run as built; drop {where}, or give build_model a `norm` "
                "argument that builds each normalization"
            )
        return (AS_BUILT,), "the model has no BatchNorm layer and build_model takes no `norm`, so it is searched as built"
    choices = explicit or NORM_CHOICES
    unknown = [n for n in choices if n not in NORM_CHOICES]
    if unknown:
        raise TaskError(
            f"{task.path}: norms {unknown} cannot be made by converting BatchNorm; choose from {list(NORM_CHOICES)}"
        )
    note = ("BatchNorm layers of each fresh model are converted (group: GroupNorm(gcd(32,C)), at least 16 channels per "
            "group on (batch, C) inputs; layer: GroupNorm(1,C); none: Identity)")
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


# ----------------------------------------------------------------------------- the dry run


def dry_run(task: Task, norms: Sequence[str]) -> tuple[Any, Any]:
    """Run one tiny training and evaluation step on the CPU so contract errors surface before the study; returns
    the (train, val) datasets it built, so a caller need not build them again (a slow ``train_dataset()`` paid
    twice in one process)."""
    train = make_dataset(task, "train")
    val = make_dataset(task, "val")
    inputs, target = _dry_batch(task, train, "train_dataset()")
    v_inputs, v_target = _dry_batch(task, val, "val_dataset()")
    for norm in norms:
        torch.manual_seed(0)
        model = build_model(task, norm)
        if not any(p.requires_grad for p in model.parameters()):
            raise TaskError(
                f"{task.path}: build_model({'' if norm == AS_BUILT else f'norm={norm!r}'}) returned a model with no "
                "trainable parameter (requires_grad is False on all of them); leave at least the head trainable"
            )
        # A private copy: the dry run must not touch the model a user might hold elsewhere.
        opt = build_optimizer(task, model, 1e-3)
        model.train()
        output = call_user(task, f"model(input) (norm={norm})", forward, model, inputs, task.target_key)
        loss = _dry_loss(task, output, target, train, "train_dataset()")
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
            vout = call_user(task, "model(input) on val_dataset", forward, model, v_inputs, task.target_key)
            _dry_loss(task, vout, v_target, val, "val_dataset()")
            value = _dry_metric(task, vout, v_target)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TaskError(
                f"{task.path}: metric(output, target) returned a {type(value).__name__}, not a number; return a float"
            ) from None
        if math.isnan(value):
            raise TaskError(f"{task.path}: metric(output, target) returned NaN on a fresh model; check the metric")
        if math.isinf(value):
            raise TaskError(
                f"{task.path}: metric(output, target) returned {value} on a fresh model; return a finite number "
                "(guard divisions that can be by zero)"
            )
    return train, val


def _dry_batch(task: Task, dataset: Any, function: str) -> tuple[Any, Any]:
    """A batch of two items, collated and split as the trials do; collating a few more first shows
    inputs of different lengths now rather than in the middle of a trial."""
    n = len(dataset)
    items = [call_user(task, f"{function}[{i}]", dataset.__getitem__, i) for i in range(min(COLLATE_PROBE, n))]
    if len(items) > 2:
        collate(task, items, function)
    inputs, target = split_batch(task, collate(task, items[:2], function))
    if task.collate_fn is not None:
        _check_inputs(task, "the input collate_fn(items) made", inputs, items=False)
    return inputs, target


def _check_one_logits(task: Task, output: Any) -> None:
    """A tuple output with tensors of different shapes, ``(features, logits)`` say: the default loss and metric
    take the first as the logits, and would silently train and score the wrong one. Tensors of one shape
    (``(logits, aux_logits)``) and ``nn.LSTM``'s ``(output, (h, c))`` pass."""
    if not isinstance(output, (tuple, list)):
        return
    tensors = [(i, v) for i, v in enumerate(output) if isinstance(v, torch.Tensor) and v.dim() >= 1]
    if len({tuple(v.shape) for _, v in tensors}) < 2:
        return
    uses = [name for name, custom in (("loss_fn", task.custom_loss), ("metric", task.custom_metric)) if not custom]
    shapes = ", ".join(f"output[{i}] {tuple(v.shape)}" for i, v in tensors)
    raise TaskError(
        f"{task.path}: the model returns a {type(output).__name__} of tensors of different shapes ({shapes}); the default "
        f"{' and '.join(uses)} would take output[{tensors[0][0]}] as the logits; return the logits alone from forward, "
        f"or define {' and '.join(f'{u}(output, target)' for u in uses)} taking the part that holds them (e.g. output[{tensors[-1][0]}])"
    )


def _dry_loss(task: Task, output: Any, target: Any, dataset: Any, function: str) -> Any:
    """The loss of the dry run, with the checks that name the cause of a failure (or of a silent mistake)."""
    if not task.custom_loss and model_loss(output) is None:
        _check_one_logits(task, output)
        try:
            out = logits(output)
        except OutputError as exc:
            raise TaskError(
                f"{task.path}: {exc}; return the logits from forward (or a dict or ModelOutput with `logits`), "
                "or define loss_fn(output, target)"
            ) from None
        if isinstance(target, torch.Tensor):
            _check_labels(task, out, target, dataset, function)
            if (target.is_floating_point() and target.shape == out.shape and out.dim() >= 2
                    and out.shape[class_dim(out, target)] > 1 and not _probabilities(out, target)):
                metric = ("" if task.custom_metric else ", and metric(output, target): an error with METRIC_MODE = "
                          "\"min\" (`return nn.functional.mse_loss(output, target).item()`)")
                raise TaskError(
                    f"{task.path}: the targets have the output's shape {tuple(out.shape)} but are not class probabilities "
                    "(each sample's summing to 1): real values or multi-hot labels, which the default loss, "
                    "cross-entropy, would take as soft labels; define loss_fn(output, target): "
                    "`return nn.functional.mse_loss(output, target)` for a reconstruction or regression, "
                    f"binary_cross_entropy_with_logits for multi-hot labels{metric}"
                )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loss = task.loss_fn(output, target)
        except Exception as exc:
            raise _loss_error(task, exc, output, target) from exc
    for w in caught:
        if "different to the input size" in str(w.message):  # torch's mse_loss/l1_loss broadcasting warning
            raise _broadcast_error(task, output, target)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if isinstance(output, torch.Tensor) and _broadcasts(output, target):
        # Same values, shapes that only agree by broadcasting: a loss that broadcasts changes when the
        # output takes the target's shape; one that reshapes for itself does not.
        with torch.no_grad():
            try:
                reshaped = task.loss_fn(output.detach().reshape(target.shape), target)
            except Exception:  # noqa: BLE001 - it takes only the shape it was given (say, squeezes dim 1): it shapes for itself
                return loss
            if isinstance(loss, torch.Tensor) and loss.numel() == 1 and not torch.allclose(
                loss.detach().float(), torch.as_tensor(reshaped).float(), rtol=1e-4, atol=1e-6
            ):
                raise _broadcast_error(task, output, target)
    return loss


def _broadcasts(output: torch.Tensor, target: Any) -> bool:
    if not isinstance(target, torch.Tensor) or output.shape == target.shape or output.numel() != target.numel():
        return False
    try:
        return math.prod(torch.broadcast_shapes(output.shape, target.shape)) != output.numel()
    except RuntimeError:
        return False


def _broadcast_error(task: Task, output: Any, target: Any) -> TaskError:
    out = tuple(output.shape) if isinstance(output, torch.Tensor) else describe(output)
    tgt = tuple(target.shape)
    try:
        to = f" (to {tuple(torch.broadcast_shapes(output.shape, target.shape))})"
    except (RuntimeError, AttributeError):
        to = ""
    return TaskError(
        f"{task.path}: the model output {out} and the target {tgt} only agree by broadcasting{to}, so loss_fn "
        f"compares every output with every target; make them one shape: return output.squeeze(-1) from forward, "
        f"or give the targets shape {out}"
    )


def _cheap_labels(task: Task, dataset: Any) -> torch.Tensor | None:
    """All targets of ``dataset`` when they can be read at once (TensorDataset, a ``targets`` attribute,
    a Hugging Face dataset's TARGET_KEY column), else None."""
    from torch.utils.data import TensorDataset

    try:
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            raw: Any = dataset.tensors[1]
        elif task.target_key and task.target_key in (getattr(dataset, "column_names", None) or ()):
            raw = dataset[task.target_key]
        else:
            raw = getattr(dataset, "targets", None)
        if raw is None:
            return None
        values = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(raw)
    except Exception:  # labels that are not numbers: the batch's own are checked instead
        return None
    return values if not values.is_floating_point() and not values.is_complex() else None


def _check_labels(task: Task, out: torch.Tensor, target: torch.Tensor, dataset: Any, function: str) -> None:
    """Integer targets must index the output's classes: [0, classes), or -100 (ignored)."""
    if target.is_floating_point() or out.dim() < 2 or target.dim() == out.dim():
        return
    classes = int(out.shape[class_dim(out, target)])
    values = _cheap_labels(task, dataset)
    values = target if values is None else values
    values = values[values != IGNORE_INDEX]
    if values.numel() == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= classes:
        raise TaskError(
            f"{task.path}: {function} has labels outside [0, {classes}): they range over [{low}, {high}], and the "
            f"model outputs {classes} values per sample; make it output {max(high + 1, classes)} (its last layer), "
            f"or map the labels to 0..{classes - 1}"
        )


def _output_hint(output: Any, target: Any) -> str:
    if isinstance(output, (tuple, list)):
        return (f"the model output is a {describe(output)}: return the logits from forward, or take the part "
                "you need in loss_fn and metric (e.g. output[0])")
    return ""


def _loss_error(task: Task, exc: BaseException, output: Any, target: Any) -> TaskError:
    line = _user_line(exc, task.path)
    base = f"{task.path}{line}: loss_fn(output, target) raised {type(exc).__name__}: {_one_line(exc)}"
    if "out of bounds" in str(exc) and isinstance(target, torch.Tensor) and not target.is_floating_point():
        classes = ""
        with contextlib.suppress(Exception):
            out = logits(output)
            classes = f" [0, {out.shape[class_dim(out, target)]})"
        return TaskError(
            f"{base}; the labels are outside{classes or ' the range of classes'} (they range over "
            f"[{int(target.min())}, {int(target.max())}] in this batch): make the model output one value per "
            "class, or map the labels to 0..classes-1"
        )
    hint = _output_hint(output, target)
    if hint:
        return TaskError(f"{base}; {hint}")
    if not task.custom_loss:
        what = describe(output)
        with contextlib.suppress(Exception):
            what = describe(logits(output))
        return TaskError(
            f"{base}; the default loss is cross-entropy of the logits ({what}) against the target "
            f"({describe(target)}): return logits of shape (batch, classes) with integer class targets, "
            "or define loss_fn(output, target)"
        )
    return TaskError(f"{base}; fix loss_fn")


def _probabilities(out: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether real-valued targets of the output's shape are class probabilities (soft or one-hot labels)."""
    dim = class_dim(out, target)
    return bool((target >= 0).all()) and torch.allclose(target.sum(dim), torch.ones(()), atol=1e-3)


def _check_accuracy_fits(task: Task, out: torch.Tensor, target: torch.Tensor) -> None:
    """The default metric, top-1 accuracy, is silently constant on one output per sample (the argmax of one
    logit is always 0) and meaningless on real-valued targets: refuse both, with the metric to write."""
    if out.dim() < 2 or out.shape[class_dim(out, target)] == 1:
        loss = ("" if task.custom_loss else "; the default loss, cross-entropy, needs one logit per class too: define "
                "loss_fn(output, target) as well (a regression: `return nn.functional.mse_loss(output.reshape(-1), target)`)")
        raise TaskError(
            f"{task.path}: the model returns one output per sample {tuple(out.shape)}; the default metric, top-1 "
            "accuracy over one logit per class, would score every model alike; define metric(output, target): for "
            "a binary classifier's one logit `return ((output.reshape(-1) > 0).float() == target).float().mean().item()`, "
            f"for a regression an error with METRIC_MODE = \"min\"{loss}"
        )
    if target.is_floating_point() and target.shape == out.shape:
        if not _probabilities(out, target):
            raise TaskError(
                f"{task.path}: the targets have the output's shape {tuple(out.shape)} but are not class probabilities "
                "(each sample's summing to 1): real values or multi-hot labels; the default metric, top-1 accuracy, "
                "would compare the top class only; define metric(output, target): an error with METRIC_MODE = \"min\" "
                "for a reconstruction or regression (`return nn.functional.mse_loss(output, target).item()`), for "
                "multi-hot labels `return ((output > 0).float() == target).float().mean().item()`"
            )
        return
    if target.is_floating_point() and not bool((target == target.round()).all()):
        raise TaskError(
            f"{task.path}: the targets are real numbers ({target.dtype}, e.g. {float(target.flatten()[0]):.4g}); the "
            "default metric, top-1 accuracy, compares class indices; return integer class labels (torch.long), or "
            "define metric(output, target), for a regression an error with METRIC_MODE = \"min\""
        )


def _dry_metric(task: Task, output: Any, target: Any) -> Any:
    if not task.custom_metric and task.metric_mode == "min":
        raise TaskError(
            f"{task.path}: METRIC_MODE = \"min\" but no metric is defined: the default metric, top-1 accuracy, is higher "
            "is better, and the search would pick the least accurate configuration; remove METRIC_MODE, or define "
            "metric(output, target) returning an error (e.g. the validation loss)"
        )
    if not task.custom_metric:
        if model_loss(output) is not None and isinstance(target, torch.Tensor) and target.dim() > 1:
            raise TaskError(
                f"{task.path}: the model computes its own loss from targets of shape {tuple(target.shape)} (one per "
                "token); the default metric, accuracy of the logits against them, cannot know whether the model "
                "shifts them as a causal language model does; define metric(output, target), e.g. "
                "`return output.loss.item()` with METRIC_MODE = \"min\""
            )
        _check_one_logits(task, output)
        try:
            out = logits(output)
        except OutputError as exc:
            raise TaskError(
                f"{task.path}: {exc}; return the logits from forward, or define metric(output, target)"
            ) from None
        if isinstance(target, torch.Tensor):
            _check_accuracy_fits(task, out, target)
    try:
        return task.metric(output, target)
    except Exception as exc:
        line = _user_line(exc, task.path)
        hint = _output_hint(output, target) or "fix metric"
        raise TaskError(
            f"{task.path}{line}: metric(output, target) raised {type(exc).__name__}: {_one_line(exc)}; {hint}"
        ) from exc
