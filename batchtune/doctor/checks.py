"""The batch doctor: checks for batches that misrepresent the data or make BatchNorm misbehave.

Each check returns :class:`Finding` values with a severity and a fix; rendering lives in
:mod:`batchtune.doctor.report`. The batches are judged as batchtune trains: shuffled every epoch,
with drop_last (see :func:`batchtune.trial.train.train_batches`).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "error")

# Wu and He 2018 ("Group Normalization", fig. 1): BatchNorm's error rises steeply once the batch
# per device falls below 8 (and more so at 4 and 2); GroupNorm's does not.
BN_MIN_BATCH = 8
# A class with share p is absent from a batch of B with probability about (1 - p)^B; a batch of
# 3/p holds it in 95% of batches (ln 0.05 = -3.0).
ABSENT_WARN = 0.5
IMBALANCE_WARN = 10.0
DROP_WARN = 0.10  # drop_last discarding 10% of the data each epoch is worth a warning
LOADER_WARN = 0.30  # the loader taking 30% of each step starves the model visibly
DEFAULT_BATCH = 32
LABEL_TIME_BUDGET = 5.0  # seconds spent reading labels item by item from a plain Dataset


@dataclass(frozen=True)
class Finding:
    """One result of one check."""

    check: str
    severity: str  # info | warning | error
    message: str
    fix: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.severity in SEVERITIES, self.severity


@dataclass(frozen=True)
class Diagnosis:
    """All findings for one task and the batch sizes it was checked at."""

    task: str
    batch_sizes: tuple[int, ...]
    norm: str
    train_size: int
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def exit_code(self) -> int:
        """0 when no finding is an error, 1 otherwise (``batchtune check`` exits with it)."""
        return 1 if self.errors else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "batch_sizes": list(self.batch_sizes),
            "norm": self.norm,
            "train_size": self.train_size,
            "counts": {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES},
            "exit_code": self.exit_code,
            "findings": [asdict(f) for f in self.findings],
        }


# ----------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Labels:
    values: np.ndarray
    kind: str  # "class" | "scalar"
    complete: bool  # False when only a prefix of the dataset was read


def read_labels(dataset: Any, budget: float = LABEL_TIME_BUDGET, target_key: str | None = None,
                collate: Any = None) -> Labels | None:
    """The targets of a dataset as a 1-D array, or None when they are not one number per sample.

    TensorDataset, datasets with a ``targets`` or ``labels`` attribute (torchvision's) and a Hugging
    Face dataset's ``target_key`` column are read at once; anything else item by item, in index
    order, for at most ``budget`` seconds (``item[target_key]`` of dict items, else ``item[1]``). Dict
    items without ``target_key`` (a ``collate_fn`` that adds it, as Hugging Face's ``labels`` from ``label``)
    are read through ``collate`` in batches of 64, when given.
    """
    import torch
    from torch.utils.data import TensorDataset

    n = len(dataset)
    raw: Any = None
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        raw = dataset.tensors[1]
    elif target_key is not None and target_key in (getattr(dataset, "column_names", None) or ()):
        raw = list(dataset[target_key])
    else:
        for name in ("targets", "labels"):
            attr = getattr(dataset, name, None)
            if isinstance(attr, (torch.Tensor, np.ndarray, list)) and len(attr) == n:
                raw = attr
                break
    if raw is not None and np.asarray(raw if not isinstance(raw, torch.Tensor) else raw.detach().cpu()).dtype.kind not in "biuf":
        raw = None  # a `labels` attribute of strings, mapped to numbers in __getitem__: read the items instead
    complete = True
    if raw is None:
        items = []
        start = time.perf_counter()
        for i in range(n):
            item = dataset[i]
            try:
                items.append(item[target_key] if target_key is not None and isinstance(item, Mapping) else item[1])
            except (KeyError, IndexError, TypeError):
                if collate is None or i > 0:
                    return None  # items a collate_fn makes sense of: no labels to check
                return _collated_labels(dataset, budget, target_key, collate)
            if time.perf_counter() - start > budget:
                complete = False
                break
        try:
            raw = torch.stack([torch.as_tensor(t) for t in items])
        except (RuntimeError, TypeError, ValueError):
            return None
    arr = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size < 2 or arr.dtype.kind not in "biuf":
        return None
    if arr.dtype.kind in "biu":
        return Labels(arr.astype(np.int64), "class", complete)
    return Labels(arr.astype(float), "scalar", complete)


def _collated_labels(dataset: Any, budget: float, target_key: str | None, collate: Any) -> Labels | None:
    """The targets of batches of 64 items made by ``collate`` (``batch[target_key]`` of a dict, else ``batch[1]``),
    in index order for at most ``budget`` seconds; None when a batch holds no targets of one number per sample."""
    import torch

    n, chunks, start = len(dataset), [], time.perf_counter()
    for first in range(0, n, 64):
        try:
            batch = collate([dataset[i] for i in range(first, min(n, first + 64))])
            target = torch.as_tensor(batch[target_key] if target_key is not None and isinstance(batch, Mapping)
                                     else batch[1])
        except Exception:  # noqa: BLE001 - the user's collate_fn; the dry run has reported what is wrong with it
            return None
        if target.dim() > 2 or (target.dim() == 2 and target.shape[1] != 1):
            return None  # not one number per sample
        chunks.append(target.reshape(-1))
        if time.perf_counter() - start > budget:
            break
    arr = torch.cat(chunks).cpu().numpy()
    if arr.size < 2 or arr.dtype.kind not in "biuf":
        return None
    complete = sum(c.numel() for c in chunks) >= n
    if arr.dtype.kind in "biu":
        return Labels(arr.astype(np.int64), "class", complete)
    return Labels(arr.astype(float), "scalar", complete)


def _shuffled_batches(n: int, batch_size: int, batches: int, seed: int) -> np.ndarray:
    """Index batches as batchtune draws them: a fresh permutation per epoch, drop_last."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    out: list[np.ndarray] = []
    while len(out) < batches:
        perm = rng.permutation(n)
        out.extend(perm[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
    return np.stack(out[:batches])


def _chi_square(counts: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's chi-square statistic of each batch's class counts against the dataset's shares."""
    from scipy import stats

    keep = expected > 0
    stat = ((counts[:, keep] - expected[keep]) ** 2 / expected[keep]).sum(axis=1)
    return stat, stats.chi2.sf(stat, max(1, int(keep.sum()) - 1))


def check_label_balance(labels: Labels, batch_size: int, *, seed: int = 0) -> list[Finding]:
    """Per-batch class distribution under shuffled, drop_last sampling against the whole dataset."""
    if labels.kind != "class" or batch_size > labels.values.size:
        return []
    y = labels.values - labels.values.min()
    n = y.size
    counts = np.bincount(y)
    present = counts > 0
    k = int(present.sum())
    if k < 2:
        return [Finding("label-balance", "warning", f"every training label is {labels.values[0]}: one class only",
                        "check train_dataset(): a classifier needs at least two classes")]
    share = counts / n
    batches = _shuffled_batches(n, batch_size, min(2000, max(200, 3 * (n // batch_size))), seed)
    per_batch = np.stack([np.bincount(y[b], minlength=counts.size) for b in batches])
    stat, pvalues = _chi_square(per_batch.astype(float), share * batch_size)
    tv = 0.5 * np.abs(per_batch / batch_size - share).sum(axis=1)
    absent = (per_batch[:, present] == 0).mean(axis=0)
    rarest = int(np.flatnonzero(present)[np.argmin(share[present])])
    p_min = float(share[rarest])
    ratio = float(share[present].max() / p_min)
    worst_absent = float(absent[np.argmin(share[present])])
    label_of = int(rarest + labels.values.min())
    details = {
        "classes": k,
        "batches_simulated": int(len(batches)),
        "mean_chi_square": float(stat.mean()),
        # Under random sampling without replacement E[X^2] = (k - 1)(N - B)/(N - 1).
        "expected_chi_square": (k - 1) * (n - batch_size) / max(1, n - 1),
        "rejected_at_1pct": float((pvalues < 0.01).mean()),
        "mean_total_variation": float(tv.mean()),
        "rarest_class": label_of,
        "rarest_share": p_min,
        "rarest_absent_fraction": float(absent[np.argmin(share[present])]),
        "imbalance_ratio": ratio,
        "complete": labels.complete,
    }
    need = math.ceil(math.log(0.05) / math.log(1.0 - p_min)) if p_min < 1 else 1
    # A small batch misses most classes whatever the balance; only a class missing far more often
    # than the typical one points at imbalance.
    typical_absent = float(np.median(absent))
    if ratio >= IMBALANCE_WARN or (worst_absent >= ABSENT_WARN and typical_absent < ABSENT_WARN / 2):
        return [Finding(
            "label-balance", "warning",
            f"imbalanced labels: class {label_of} is {p_min:.1%} of the data ({ratio:.0f}:1 against the largest) and "
            f"missing from {details['rarest_absent_fraction']:.0%} of shuffled batches of {batch_size}; batches differ "
            f"from the dataset by {tv.mean():.0%} total variation on average",
            f"weight the loss by class (cross_entropy(weight=...)) or sample balanced batches (WeightedRandomSampler); "
            f"a batch of {need} or more holds class {label_of} in 95% of batches; judge with a balanced metric, since "
            "accuracy hides the minority class",
            details,
        )]
    cover = "" if batch_size >= k else f"; a batch of {batch_size} cannot hold all {k} classes"
    return [Finding(
        "label-balance", "info",
        f"shuffled batches of {batch_size} represent the {k} classes: mean chi-square {stat.mean():.3g} against "
        f"{details['expected_chi_square']:.3g} expected for random batches, {tv.mean():.0%} mean total variation{cover}",
        "none needed",
        details,
    )]


def check_sorted(labels: Labels, val_labels: Labels | None = None) -> list[Finding]:
    """Training data ordered by label: neighbours share labels far more often than in random order."""
    y = labels.values
    n = y.size
    findings = []
    if labels.kind == "class":
        same = float((y[1:] == y[:-1]).mean())
        counts = np.bincount(y - y.min())
        expected = float((counts * (counts - 1)).sum() / (n * (n - 1)))
        sd = math.sqrt(max(expected * (1 - expected), 1e-12) / (n - 1))
        z = (same - expected) / sd
        details = {"adjacent_same_label": same, "expected_if_shuffled": expected, "z": z}
        sorted_ = same >= expected + 0.25 and z > 5
        what = f"{same:.0%} of neighbouring samples share a label (random order: {expected:.0%})"
    else:
        a, b = y[:-1] - y[:-1].mean(), y[1:] - y[1:].mean()
        denom = math.sqrt(float((a * a).sum() * (b * b).sum())) or 1.0
        r = float((a * b).sum() / denom)
        z = r * math.sqrt(n)
        details = {"lag1_autocorrelation": r, "z": z}
        sorted_ = r > 0.5 and z > 5
        what = f"the targets' lag-1 autocorrelation in index order is {r:.2f} (random order: about 0)"
    if sorted_:
        findings.append(Finding(
            "sorted-labels", "warning",
            f"the training data are ordered by label: {what}",
            "batchtune shuffles every epoch, so its trials are unaffected; in your own DataLoader set shuffle=True, "
            "and shuffle before splitting off validation data (a slice of sorted data holds only some labels)",
            details,
        ))
    else:
        findings.append(Finding("sorted-labels", "info", f"the training order looks shuffled: {what}", "none needed", details))
    if labels.kind == "class" and val_labels is not None and val_labels.kind == "class" and val_labels.complete:
        train_set, val_set = set(np.unique(y).tolist()), set(np.unique(val_labels.values).tolist())
        missing = sorted(train_set - val_set)
        if missing and len(train_set) > 1:
            findings.append(Finding(
                "val-coverage", "warning",
                f"the validation set lacks {len(missing)} of the {len(train_set)} training classes "
                f"({', '.join(map(str, missing[:8]))}{'...' if len(missing) > 8 else ''}); its metric then ignores them",
                "split train and validation data after shuffling, or stratify the split by label",
                {"missing_classes": missing[:100]},
            ))
    return findings


# ----------------------------------------------------------------------------------- batch sizes


def check_dataset_size(n: int, batch_sizes: Sequence[int]) -> list[Finding]:
    """A batch larger than the dataset, and drop_last discarding much of each epoch."""
    findings = []
    for b in sorted(set(batch_sizes)):
        if b > n:
            findings.append(Finding(
                "batch-vs-dataset", "error",
                f"batch size {b} is larger than the training set ({n} samples): with drop_last no step can be taken, "
                "without it every step is the whole dataset",
                f"use a batch size of at most {n} (e.g. --batch-size {max(1, n // 4)}) or a larger dataset",
                {"batch_size": b, "train_size": n},
            ))
            continue
        dropped = n % b
        if dropped / n >= DROP_WARN:
            better = n // (n // b)
            findings.append(Finding(
                "drop-last", "warning",
                f"at batch size {b}, drop_last discards {dropped} of {n} samples ({dropped / n:.0%}) every epoch",
                f"batch size {better} takes the same {n // b} step(s) per epoch and drops {n % better}",
                {"batch_size": b, "dropped": dropped, "suggested": better},
            ))
    return findings


def check_batchnorm(model: Any, n: int, batch_sizes: Sequence[int], other_norms: Sequence[str] = ()) -> list[Finding]:
    """BatchNorm with batches below 8, of one sample, or a final batch of one without drop_last."""
    from batchtune.task.norm import count_batchnorm

    layers = count_batchnorm(model)
    if layers == 0:
        return []
    findings = []
    alt = [x for x in other_norms if x in ("group", "layer")]
    small = sorted(b for b in set(batch_sizes) if b < BN_MIN_BATCH)
    if 1 in small:
        findings.append(Finding(
            "batchnorm-batch", "error",
            f"batch size 1 with {layers} BatchNorm layer(s): BatchNorm1d raises on one value per channel and "
            "BatchNorm2d turns into per-sample instance normalization",
            "use batch size 2 or more, or GroupNorm (build_model(norm='group'), --norm group)",
            {"batch_sizes": [1], "layers": layers},
        ))
        small.remove(1)
    if small:
        searched = f"; the search compares {', '.join(alt)} norm too" if alt else ""
        findings.append(Finding(
            "batchnorm-batch", "info" if alt else "warning",
            f"batch size {', '.join(map(str, small))} is below {BN_MIN_BATCH} with {layers} BatchNorm layer(s): batch "
            f"statistics that noisy cost accuracy and make eval-mode running statistics disagree with training "
            f"(Wu and He 2018){searched}",
            "use GroupNorm (norm='group', --norms batch,group) or a batch of 8 or more per device; gradient "
            "accumulation does not enlarge BatchNorm's batch",
            {"batch_sizes": small, "layers": layers},
        ))
    ones = sorted(b for b in set(batch_sizes) if 1 < b <= n and n % b == 1)
    if ones:
        findings.append(Finding(
            "batchnorm-last-batch", "warning",
            f"{n} samples at batch size {', '.join(map(str, ones))} leave a final batch of one sample, which BatchNorm "
            "cannot normalize (BatchNorm1d raises: 'Expected more than 1 value per channel when training')",
            "batchtune drops it (drop_last); in your own DataLoader pass drop_last=True, or use a batch size with "
            f"{n} % batch != 1",
            {"batch_sizes": ones},
        ))
    return findings


# ----------------------------------------------------------------------------------- the loader


def _time_steps(task: Any, model: Any, optimizer: Any, inputs: Any, target: Any, device: Any) -> list[float]:
    """Seconds per training step on one preloaded batch, after two burn-in steps (nanoGPT's bench.py)."""
    import torch

    from batchtune.task.contract import forward

    times: list[float] = []
    for i in range(12):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss_fn(forward(model, inputs, task.target_key), target)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
        if i >= 4 and sum(times) > 1.0:
            break
    return times


def check_loader(task: Any, dataset: Any, model: Any, batch_size: int, device: Any, *, seed: int = 0) -> list[Finding]:
    """Time batches from the real DataLoader against training steps on preloaded tensors.

    With ``num_workers=0`` loading and computing take turns, so the loader's share of a step is
    load / (load + compute); ``n`` workers can hide loading up to ``n x compute`` per batch.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from batchtune.task.contract import build_optimizer, split_batch
    from batchtune.trial.device import default_threads
    from batchtune.trial.train import to_device

    if batch_size > len(dataset):
        return []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0,
                        collate_fn=task.collate_fn, generator=torch.Generator().manual_seed(seed))
    it = iter(loader)
    first = next(it)
    load_times = []
    start = time.perf_counter()
    for _batch in it:
        load_times.append(time.perf_counter() - start)
        if len(load_times) >= 10 or sum(load_times) > 1.0:
            break
        start = time.perf_counter()
    if not load_times:  # one batch per epoch: time a second epoch's first batch
        start = time.perf_counter()
        next(iter(loader))
        load_times.append(time.perf_counter() - start)
    inputs, target = split_batch(task, first)
    inputs, target = to_device(inputs, device), to_device(target, device)
    optimizer = build_optimizer(task, model, 1e-4)
    model.train()
    # The threads a trial would get (the idle cores): torch's thread per core stalls on a busy machine,
    # and a 0.2 ms step timed at 20 ms made a starving loader look harmless.
    threads = torch.get_num_threads()
    torch.set_num_threads(default_threads(1))
    try:
        compute_times = _time_steps(task, model, optimizer, inputs, target, device)
    finally:
        torch.set_num_threads(threads)
    load = statistics.median(load_times)
    compute = statistics.median(compute_times)
    # The task's DATALOADER workers (which batchtune's trials use too) fetch batches while the model
    # computes: k workers deliver one every load / k seconds, so a step waits max(0, load / k - compute).
    workers_set = int(task.loader_options.get("num_workers") or 0)
    wait = load if workers_set == 0 else max(0.0, load / workers_set - compute)
    share = wait / (wait + compute) if wait + compute > 0 else 0.0
    cores = os.cpu_count() or 1
    needed = math.ceil(load / compute) if compute > 0 else 1
    workers = min(max(1, cores - 1), needed)
    pin = device.type == "cuda"
    details = {
        "batch_size": batch_size,
        "load_seconds_per_batch": load,
        "compute_seconds_per_step": compute,
        "num_workers": workers_set,
        "loader_share": share,
        "suggested_num_workers": max(workers, workers_set),
        "suggested_pin_memory": pin,
    }
    with_workers = f" with DATALOADER's num_workers={workers_set}" if workers_set else ""
    what = (f"the DataLoader takes {load * 1e3:.3g} ms per batch of {batch_size} in one process, a training step on "
            f"preloaded tensors {compute * 1e3:.3g} ms: loading would be {share:.0%} of each step{with_workers}")
    pin_text = ", \"pin_memory\": True" if pin else ""
    if isinstance(dataset, TensorDataset):
        return [Finding(
            "loader", "info",
            f"{what}; batchtune batches a TensorDataset by indexing its tensors, so its trials do not pay this",
            "in your own loop, index the tensors with a shuffled permutation per batch instead of a DataLoader"
            if share >= LOADER_WARN else "none needed",
            details,
        )]
    if share >= LOADER_WARN:
        cpu_note = "; on the CPU, workers take cores from the model's threads" if device.type == "cpu" else ""
        if workers_set >= workers:  # more workers than this machine can spare would not help
            fix = (f"precompute __getitem__'s work into tensors once: num_workers={workers_set} already uses the "
                   f"{cores} core(s) this machine has{cpu_note}")
        else:
            short = f" (hiding it all would take {needed} workers)" if needed > workers else ""
            fix = (f"set DATALOADER = {{\"num_workers\": {workers}, \"persistent_workers\": True{pin_text}}} in the task "
                   f"file (the same in your own DataLoader){short}, or precompute __getitem__'s work into tensors once{cpu_note}")
        return [Finding("loader", "warning", f"the data loader starves the model: {what}", fix, details)]
    return [Finding("loader", "info", what, f"none needed{'; pin_memory=True helps copies to the GPU' if pin else ''}", details)]


# ----------------------------------------------------------------------------------- all checks


def diagnose(
    task: Any,
    *,
    batch_sizes: Sequence[int] | None = None,
    norm: str | None = None,
    other_norms: Sequence[str] = (),
    device: str = "auto",
    seed: int = 0,
    loader: bool = True,
) -> Diagnosis:
    """Run every check on ``task`` (a :class:`~batchtune.task.contract.Task` or a task-file path).

    ``batch_sizes`` defaults to 32 (or the training set size when smaller). Label checks use the smallest batch size (the least representative), the loader check the
    largest one that fits (where compute per sample is cheapest, so loading shows most).
    """
    from batchtune.task.contract import (
        Task,
        build_model,
        load_task,
        make_dataset,
        search_norms,
    )
    from batchtune.trial.device import resolve_device
    from batchtune.trial.train import seed_everything

    if not isinstance(task, Task):
        task = load_task(task)
    dev = resolve_device(device)
    chosen = search_norms(task, [norm] if norm else None)[0][0]  # validates a --norm the task cannot build
    train = make_dataset(task, "train")
    val = make_dataset(task, "val")
    n = len(train)
    sizes = tuple(sorted(set(int(b) for b in batch_sizes))) if batch_sizes else (min(DEFAULT_BATCH, n),)
    findings: list[Finding] = []
    findings += check_dataset_size(n, sizes)
    fitting = [b for b in sizes if b <= n]
    seed_everything(seed)
    model = build_model(task, chosen).to(dev)
    if chosen in ("batch", "as-built"):
        findings += check_batchnorm(model, n, sizes, other_norms)
    labels = read_labels(train, target_key=task.target_key, collate=task.collate_fn)
    if labels is None:
        findings.append(Finding(
            "label-balance", "info", "the targets are not one number per sample, so the label checks were skipped",
            "none needed",
        ))
    else:
        if not labels.complete:
            findings.append(Finding(
                "labels-partial", "info",
                f"reading labels item by item took over {LABEL_TIME_BUDGET:g} s; the label checks used the first "
                f"{labels.values.size} of {n} samples",
                "expose the labels as a `targets` attribute of the dataset so they are read at once",
            ))
        if fitting:
            findings += check_label_balance(labels, fitting[0], seed=seed)
        findings += check_sorted(labels, read_labels(val, target_key=task.target_key, collate=task.collate_fn))
    if loader and fitting:
        try:
            findings += check_loader(task, train, model, fitting[-1], dev, seed=seed)
        except Exception as exc:  # a check that cannot run is a finding, not a crash of the doctor
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            findings.append(Finding(
                "loader", "warning", f"the loader check could not time a training step: {type(exc).__name__}: {first}",
                "run `batchtune search` to see whether training works at this batch size",
            ))
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    findings.sort(key=lambda f: order[f.severity])
    return Diagnosis(task=str(task.path), batch_sizes=sizes, norm=chosen, train_size=n, findings=tuple(findings))
