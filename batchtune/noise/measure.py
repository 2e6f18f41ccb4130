"""The gradient noise scale of a task, measured, and the goodput it implies.

The simple noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training", eq. 2.8) predicts the critical batch size: below it, doubling the batch nearly
halves the steps to a given loss; above it, extra samples per step are mostly wasted. It is estimated
from squared gradient norms at two batch sizes on the same parameters (their appendix A). Rendering
is in :mod:`batchtune.noise.report`, the efficiency and goodput arithmetic in :mod:`batchtune.noise.goodput`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from batchtune.errors import BatchtuneError, UsageError
from batchtune.noise.goodput import GoodputCurve, goodput_curve

log = logging.getLogger(__name__)

CONFIDENCE = 0.95  # two-sided bootstrap interval of B_simple
BOOTSTRAP = 2000
BN_STATS = ("batch", "running")  # how BatchNorm normalizes while gradients are measured
PRECISE_BN_SAMPLES = 4096  # training samples whose statistics replace the running averages (PreciseBN)
CURVATURE_CHUNKS = 4  # small batches per step whose Hessian quadratic form is taken (each one is unbiased)
UNTIL_VAL_SAMPLES = 512  # validation samples whose mean loss or metric decides --burst-until-loss/-metric


# ----------------------------------------------------------------------------------- the estimator


@dataclass(frozen=True)
class NoiseEstimate:
    """B_simple with its parts and a bootstrap band; None where the gradient signal is not resolved."""

    b_simple: float | None  # tr(Sigma) / |G|^2; None when the |G|^2 estimate is not positive
    low: float | None
    high: float | None  # None: unbounded (|G|^2 not resolved in part of the resamples)
    grad_sq: float  # unbiased estimate of |G|^2, the true gradient's squared norm
    trace_sigma: float  # unbiased estimate of tr(Sigma), the per-sample gradient variance
    steps: int
    b_small: int
    b_big: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unbiased_parts(small_sq: np.ndarray, big_sq: np.ndarray, b_small: int, b_big: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step unbiased estimates of |G|^2 and tr(Sigma) (McCandlish et al. 2018, appendix A.1).

    E|G_B|^2 = |G|^2 + tr(Sigma)/B for a batch of B samples, so two batch sizes give
    |G|^2 = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small) and
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big).
    """
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace


def estimate_from_norms(
    small_sq: Sequence[float],
    big_sq: Sequence[float],
    b_small: int,
    b_big: int,
    *,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> NoiseEstimate:
    """B_simple from per-step squared gradient norms at two batch sizes.

    Numerator and denominator are averaged over the steps separately before dividing (the ratio of
    per-step estimates is biased and heavy-tailed; McCandlish et al. smooth both with moving averages).
    The band is the percentile bootstrap over steps of the same ratio of means.
    """
    if b_big <= b_small:
        raise ValueError("b_big must be larger than b_small")
    small = np.asarray(small_sq, dtype=float)
    big = np.asarray(big_sq, dtype=float)
    if small.shape != big.shape or small.size < 2:
        raise ValueError("need at least two steps with both norms")
    g2, tr = unbiased_parts(small, big, b_small, b_big)
    g2_mean, tr_mean = float(g2.mean()), float(tr.mean())
    b_simple = tr_mean / g2_mean if g2_mean > 0 else None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, small.size, size=(bootstrap, small.size))
    num = tr[idx].mean(axis=1)
    den = g2[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den > 0, num / den, np.inf)
    alpha = (1.0 - CONFIDENCE) / 2
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha], method="inverted_cdf")  # no interpolation across inf

    def finite(v: float) -> float | None:
        return float(v) if math.isfinite(v) else None

    return NoiseEstimate(
        b_simple=b_simple,
        low=finite(float(low)),
        high=finite(float(high)),
        grad_sq=g2_mean,
        trace_sigma=tr_mean,
        steps=int(small.size),
        b_small=b_small,
        b_big=b_big,
    )


# ----------------------------------------------------------------------------------- the measurement


@dataclass(frozen=True)
class NoiseConfig:
    """What ``batchtune noise`` measures. Mirrors the CLI flags."""

    task_path: str
    norm: str | None = None
    lr: float | None = None  # training-burst learning rate; None: 0.05 (SGD) or 1e-3 (adaptive)
    b_small: int = 16
    b_big: int = 128
    steps: int = 30
    burst_epochs: float = 1.0  # with burst_until_loss or burst_until_metric: the most the burst may train
    burst_until_loss: float | None = None  # stop the burst once the validation loss is at or below this
    burst_until_metric: float | None = None  # stop it once the validation metric is at this or better
    repeats: int = 1  # measurements at seeds seed, seed+1, ...; the median one is reported
    curvature: bool = False  # also B_noise = tr(H Sigma)/(G^T H G) by Hessian-vector products; goodput uses it
    batch_sizes: tuple[int, ...] | None = None  # goodput candidates; None: powers of two from b_small
    throughput_steps: int = 20
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    timeout: float | None = 1800.0
    bn_stats: str = "batch"  # "batch": as in training; "running": precise running statistics, frozen

    def validated(self) -> NoiseConfig:
        if self.bn_stats not in BN_STATS:
            raise UsageError(f"--batchnorm-stats {self.bn_stats!r} is not one of {', '.join(BN_STATS)}")
        if self.b_small < 1:
            raise UsageError(f"--batch-small {self.b_small} must be at least 1")
        if self.b_big <= self.b_small:
            raise UsageError(
                f"--batch-big {self.b_big} must be larger than --batch-small {self.b_small}; "
                "the estimator needs two different batch sizes (e.g. 16 and 128)"
            )
        if self.steps < 2:
            raise UsageError(f"--steps {self.steps} must be at least 2 (the estimate averages over steps)")
        if not math.isfinite(self.burst_epochs) or self.burst_epochs < 0:
            raise UsageError(f"--burst-epochs {self.burst_epochs:g} must be 0 or a positive number of epochs")
        if self.burst_until_loss is not None and self.burst_until_metric is not None:
            raise UsageError("pass --burst-until-loss or --burst-until-metric, not both")
        for flag, value in (("--burst-until-loss", self.burst_until_loss), ("--burst-until-metric", self.burst_until_metric)):
            if value is None:
                continue
            if not math.isfinite(value):
                raise UsageError(f"{flag} {value:g} must be a finite validation value such as 0.15")
            if self.burst_epochs <= 0:
                raise UsageError(f"{flag} needs a training burst; pass --burst-epochs above 0 (the most it may train)")
        if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
            raise UsageError(f"--lr {self.lr:g} must be a positive learning rate such as 0.05")
        if self.repeats < 1:
            raise UsageError(f"--repeats {self.repeats} must be at least 1 (3 gives a median that one odd point cannot move)")
        if self.throughput_steps < 4:
            raise UsageError(f"--throughput-steps {self.throughput_steps} must be at least 4")
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise UsageError("--batch-sizes must be positive integers, e.g. 16,32,64")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads} must be at least 1")
        return replace(self)


@dataclass(frozen=True)
class StopAt:
    """Where a training burst stops: a validation loss (at or below) or metric (at or better)."""

    what: str  # "loss" or "metric"
    value: float
    higher_better: bool = False  # the metric's direction (the task's METRIC_MODE); the loss: lower

    def met(self, loss: float | None, metric: float | None) -> bool:
        seen = loss if self.what == "loss" else metric
        if seen is None:
            return False
        return seen >= self.value if self.higher_better else seen <= self.value

    def describe(self, loss: float | None, metric: float | None) -> str:
        seen = loss if self.what == "loss" else metric
        return f"validation {self.what} {seen:.3g}" if seen is not None else f"validation {self.what} not measured"

    @property
    def flag(self) -> str:
        return f"--burst-until-{self.what}"


@dataclass(frozen=True)
class NoisePhase:
    """The noise scale at one point of training."""

    label: str
    epochs: float  # training epochs before the measurement
    train_loss: float | None  # mean loss of the measured batches at this point
    estimate: NoiseEstimate
    curvature: NoiseEstimate | None = None  # B_noise = tr(H Sigma)/(G^T H G) in b_simple's fields (--curvature)
    until: StopAt | None = None  # where the burst was to stop (--burst-until-loss/-metric)
    val_loss: float | None = None  # validation loss and metric where the burst stopped (with ``until`` only)
    val_metric: float | None = None

    @property
    def used(self) -> NoiseEstimate:
        """The noise scale goodput uses: B_noise when the curvature was measured, else B_simple."""
        return self.curvature if self.curvature is not None else self.estimate

    @property
    def reached(self) -> bool | None:
        """Whether the burst reached its target (None: there was no target)."""
        if self.until is None:
            return None
        return self.until.met(self.val_loss, self.val_metric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "epochs": self.epochs, "train_loss": self.train_loss,
            "until": asdict(self.until) if self.until else None, "val_loss": self.val_loss, "val_metric": self.val_metric,
            "reached": self.reached, **self.estimate.to_dict(),
            "b_noise_curvature": self.curvature.to_dict() if self.curvature else None,
        }


@dataclass(frozen=True)
class GradientNoise:
    """What the child process measured: the noise scale at initialisation and after the burst."""

    norm: str
    lr: float
    b_small: int
    b_big: int
    phases: tuple[NoisePhase, ...]
    train_size: int
    device: str
    batchnorm_layers: int = 0
    bn_stats: str = "batch"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for a block and restore them (a process-wide knob)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _slice(obj: Any, start: int, stop: int) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj[start:stop]
    if isinstance(obj, Mapping):
        return {k: _slice(v, start, stop) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_slice(v, start, stop) for v in obj)
    return obj


def _batchnorms(model: Any) -> list[Any]:
    from batchtune.task.norm import batchnorm_layers

    return batchnorm_layers(model)


def precise_batchnorm(model: Any, batches: Iterator[tuple[Any, Any]], samples: int, device: Any) -> int:
    """Replace BatchNorm's running averages by the statistics of about ``samples`` training samples.

    PreciseBN (Wu and Johnson 2021, "Rethinking 'Batch' in BatchNorm", sec. 3): forward passes in
    train mode with ``momentum=None`` (a cumulative average), no gradients. Returns the samples used.
    """
    import torch

    from batchtune.task.contract import forward
    from batchtune.trial.train import batch_len, to_device

    layers = _batchnorms(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    with torch.no_grad():
        while seen < samples:
            inputs, target = next(batches)
            forward(model, to_device(inputs, device))
            seen += batch_len(target, 1)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    return seen


def _grads(task: Any, model: Any, inputs: Any, target: Any) -> tuple[list[Any], float]:
    """The loss gradient over the trainable parameters (detached), and the loss."""
    import torch

    from batchtune.task.contract import call_user, forward

    params = [p for p in model.parameters() if p.requires_grad]
    output = call_user(task, "model(input)", forward, model, inputs, task.target_key)
    loss = call_user(task, "loss_fn(output, target)", task.loss_fn, output, target)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)], float(loss.detach())


def _sq_norm(grads: Sequence[Any]) -> float:
    return float(sum(g.double().pow(2).sum().cpu() for g in grads))


class _Hessian:
    """Hessian-vector products of the loss on one batch: v -> v^T H v (double backward, math attention)."""

    def __init__(self, task: Any, model: Any, inputs: Any, target: Any) -> None:
        import torch

        from batchtune.task.contract import call_user, forward

        self.params = [p for p in model.parameters() if p.requires_grad]
        with _math_attention():
            output = call_user(task, "model(input)", forward, model, inputs, task.target_key)
            loss = call_user(task, "loss_fn(output, target)", task.loss_fn, output, target)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def quad(self, v: Sequence[Any]) -> float:
        import torch

        if not self.pairs:
            return 0.0
        try:
            with _math_attention():
                hv = torch.autograd.grad(
                    [g for _, g in self.pairs], [self.params[i] for i, _ in self.pairs],
                    grad_outputs=[v[i] for i, _ in self.pairs], retain_graph=True, allow_unused=True,
                )
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(
                f"--curvature needs second derivatives of the model, and one of its operations has none ({first}); "
                "drop --curvature"
            ) from None
        if all(h is None for h in hv):
            raise UsageError(
                "--curvature needs second derivatives of the model, and its gradient does not depend on its parameters "
                "(an operation with a first derivative only, such as a @once_differentiable function); drop --curvature"
            )
        return float(sum((v[i].double() * h.double()).sum().cpu() for (i, _), h in zip(self.pairs, hv) if h is not None))


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    """Scaled dot-product attention through its math kernel: the fused kernels have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


@dataclass(frozen=True)
class Measured:
    """Per-step squared norms at the two batch sizes, their quadratic forms in the Hessian, and the loss."""

    small_sq: list[float]
    big_sq: list[float]
    loss: float
    small_q: list[float] = field(default_factory=list)  # with curvature only: G_small^T H G_small
    big_q: list[float] = field(default_factory=list)


def measure_norms(
    task: Any,
    model: Any,
    batches: Iterator[tuple[Any, Any]],
    b_small: int,
    b_big: int,
    steps: int,
    device: Any,
    bn_stats: str = "batch",
    hessian_batches: Iterator[tuple[Any, Any]] | None = None,
) -> Measured:
    """Squared gradient norms at ``b_big`` and (averaged over its ``b_big // b_small`` chunks) at ``b_small``.

    The parameters are not updated, so every step measures the same gradient distribution. Each big
    batch is cut into disjoint small batches: each chunk's squared norm is an unbiased estimate of
    E|G_small|^2, and their mean has less variance than one chunk. With ``bn_stats="running"``
    BatchNorm layers normalize with precise running statistics (recomputed first, then frozen in eval
    mode), so a sample's gradient no longer depends on its batch mates, as the estimator assumes.

    With ``hessian_batches`` each step also takes the quadratic forms G^T H G of the big batch's
    gradient and of the first ``CURVATURE_CHUNKS`` chunks' gradients, H the Hessian of the loss on an
    independent batch: E[G_B^T H G_B] = G^T H G + tr(H Sigma)/B, so the same two-size algebra gives
    B_noise = tr(H Sigma)/(G^T H G) (McCandlish et al. 2018, eq. 2.7).
    """
    from batchtune.trial.train import to_device

    if bn_stats == "running" and _batchnorms(model):
        precise_batchnorm(model, batches, PRECISE_BN_SAMPLES, device)
    model.train()
    if bn_stats == "running":
        for m in _batchnorms(model):
            m.eval()
    chunks = b_big // b_small
    out = Measured([], [], 0.0)
    losses: list[float] = []
    for _ in range(steps):
        inputs, target = next(batches)
        inputs, target = to_device(inputs, device), to_device(target, device)
        big, loss = _grads(task, model, inputs, target)
        parts = [
            _grads(task, model, _slice(inputs, i * b_small, (i + 1) * b_small), _slice(target, i * b_small, (i + 1) * b_small))[0]
            for i in range(chunks)
        ]
        big_sq, part_sq = _sq_norm(big), [_sq_norm(p) for p in parts]
        if not (math.isfinite(big_sq) and all(math.isfinite(p) for p in part_sq)):
            raise BatchtuneError("the gradient became non-finite while measuring the noise scale; lower --lr or check the loss")
        out.big_sq.append(big_sq)
        out.small_sq.append(float(np.mean(part_sq)))
        losses.append(loss)
        if hessian_batches is not None:
            h_inputs, h_target = next(hessian_batches)
            hessian = _Hessian(task, model, to_device(h_inputs, device), to_device(h_target, device))
            out.big_q.append(hessian.quad(big))
            out.small_q.append(float(np.mean([hessian.quad(p) for p in parts[:CURVATURE_CHUNKS]])))
            del hessian
    model.zero_grad(set_to_none=True)
    model.train()
    return replace(out, loss=float(np.mean(losses)))


def measure_gradient_noise(
    *,
    task_path: str,
    norm: str | None,
    lr: float | None,
    b_small: int,
    b_big: int,
    steps: int,
    burst_epochs: float,
    device: str,
    seed: int,
    threads: int | None,
    bn_stats: str = "batch",
    until_loss: float | None = None,
    until_metric: float | None = None,
    curvature: bool = False,
) -> GradientNoise:
    """Measure B_simple on a fresh model at initialisation and after a short training burst.

    Runs wherever it is called; :func:`run_noise` calls it in a child process. The burst trains
    with the task's optimizer at ``b_small`` for ``burst_epochs`` epochs (shuffled, drop_last, as
    the search trains), since the noise scale grows as the loss falls (McCandlish et al. 2018, sec. 3).
    With ``until_loss`` the burst stops as soon as the validation loss (first 512 validation samples,
    checked every ``max(1, 64 // b_small)`` steps) is at or below it, so B_simple is measured at the
    loss the critical batch is wanted for; ``until_metric`` does the same with the task's metric (at or
    better than it, in the task's METRIC_MODE). ``burst_epochs`` is then the most the burst may train.
    With ``curvature`` each phase also estimates B_noise with the Hessian (see :func:`measure_norms`).
    """
    import torch

    from batchtune.task.contract import (
        build_model,
        build_optimizer,
        call_user,
        forward,
        load_task,
        make_dataset,
        optimizer_family,
        search_norms,
    )
    from batchtune.trial.device import resolve_device
    from batchtune.trial.train import (
        evaluate_at,
        seed_everything,
        to_device,
        train_batches,
    )

    with torch_threads(threads):
        task = load_task(task_path)
        dev = resolve_device(device)
        chosen = search_norms(task, [norm] if norm else None)[0][0]
        train = make_dataset(task, "train")
        n = len(train)
        if b_big > n:
            raise UsageError(
                f"--batch-big {b_big} is larger than the training set ({n} samples); pass --batch-big {n} or less"
            )
        if lr is None:
            lr = 0.05 if optimizer_family(task) == "sgd" else 1e-3
        seed_everything(seed)
        model = build_model(task, chosen).to(dev)
        batchnorm_layers = len(_batchnorms(model))
        measure_gen = torch.Generator().manual_seed(seed + 1)
        batches = train_batches(train, b_big, measure_gen, pin=False, task=task)
        hessian_batches = train_batches(train, b_big, torch.Generator().manual_seed(seed + 3), pin=False, task=task) if curvature else None

        def measure() -> tuple[float, NoiseEstimate, NoiseEstimate | None]:
            m = measure_norms(task, model, batches, b_small, b_big, steps, dev, bn_stats, hessian_batches)
            est = estimate_from_norms(m.small_sq, m.big_sq, b_small, b_big, seed=seed)
            curv = estimate_from_norms(m.small_q, m.big_q, b_small, b_big, seed=seed) if curvature else None
            return m.loss, est, curv

        phases = []
        loss, est, curv = measure()
        phases.append(NoisePhase("initialisation", 0.0, loss, est, curvature=curv))
        if burst_epochs > 0:
            optimizer = build_optimizer(task, model, lr)
            burst_gen = torch.Generator().manual_seed(seed + 2)
            total = max(1, round(burst_epochs * (n // b_small)))
            check = max(1, 64 // b_small)
            until = None
            if until_loss is not None:
                until = StopAt("loss", until_loss)
            elif until_metric is not None:
                until = StopAt("metric", until_metric, higher_better=task.metric_mode == "max")
            if until is not None:
                from torch.utils.data import Subset

                full_val = make_dataset(task, "val")
                val = Subset(full_val, range(min(UNTIL_VAL_SAMPLES, len(full_val))))
            val_loss = val_metric = None
            steps_done = 0
            model.train()
            for step, (inputs, target) in zip(range(total), train_batches(train, b_small, burst_gen, pin=False, task=task)):
                inputs, target = to_device(inputs, dev), to_device(target, dev)
                optimizer.zero_grad(set_to_none=True)
                out = call_user(task, "model(input)", forward, model, inputs, task.target_key)
                step_loss = task.loss_fn(out, target)
                if not math.isfinite(float(step_loss.detach())):
                    raise BatchtuneError(
                        f"the training burst diverged at step {step + 1} with --lr {lr:g}; pass a lower --lr"
                    )
                step_loss.backward()
                optimizer.step()
                steps_done = step + 1
                if until is not None and (steps_done % check == 0 or steps_done == total):
                    val_metric, val_loss = evaluate_at(task, model, val, dev, 256)  # val is set with until
                    if until.met(val_loss, val_metric):
                        break
            del optimizer
            loss, est, curv = measure()
            epochs = steps_done / (n // b_small) if until is not None else burst_epochs
            label = f"after {epochs:.3g} epoch{'s' if epochs != 1 else ''}"
            if until is not None:
                seen = until.describe(val_loss, val_metric)
                label = (f"at {seen} ({label})" if until.met(val_loss, val_metric) else
                         f"{label}, {seen} (target {until.value:g} not reached)")
            phases.append(NoisePhase(
                label, epochs, loss, est, curvature=curv, until=until, val_loss=val_loss, val_metric=val_metric
            ))
        return GradientNoise(
            norm=chosen, lr=float(lr), b_small=b_small, b_big=b_big, phases=tuple(phases), train_size=n, device=str(dev),
            batchnorm_layers=batchnorm_layers, bn_stats=bn_stats,
        )


# ----------------------------------------------------------------------------------- throughput


def throughput_curve(
    task_path: str,
    sizes: Sequence[int],
    *,
    norm: str,
    lr: float,
    device: str = "cpu",
    steps: int = 20,
    seed: int = 0,
    threads: int | None = None,
    timeout: float | None = 600.0,
) -> dict[int, float]:
    """Training throughput (median samples/s) at each batch size, measured in a worker process.

    A stand-in for the probe's throughput curve (issue 3): callers take a ``dict[int, float]`` and do
    not care where it came from. Sizes that fail (OOM, errors) are left out and logged.
    """
    import os

    from batchtune.trial.process import TrialRunner
    from batchtune.trial.train import TrialSpec

    env = {}
    if threads:
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    curve: dict[int, float] = {}
    with TrialRunner(str(Path(task_path).resolve()), env=env) as runner:
        for b in sorted(set(sizes)):
            spec = TrialSpec(
                batch_size=b, lr=lr, norm=norm, device=device, seed=seed, epochs=None, budget_samples=steps * b,
                max_steps=steps, evaluate=False, threads=threads or max(1, (os.cpu_count() or 1)), warmup_steps=3,
            )
            result = runner.run(spec, timeout=timeout)
            if result.ok and result.throughput:
                curve[b] = float(result.throughput)
            else:
                log.warning("throughput at batch size %d not measured: %s %s", b, result.status, result.reason)
    return curve


# ----------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class NoiseReport:
    """Everything ``batchtune noise`` found: the noise scale by phase and the goodput curve."""

    task: str
    norm: str
    device: str
    lr: float
    b_small: int
    b_big: int
    train_size: int
    phases: tuple[NoisePhase, ...]
    goodput: GoodputCurve | None
    recommended: int | None = None  # the search's recommendation, when there is one
    notes: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)  # reasons to distrust B_simple
    batchnorm_layers: int = 0
    bn_stats: str = "batch"
    seed: int = 0  # the seed of the measurement reported in ``phases``
    repeats: tuple[tuple[int, float | None], ...] = ()  # (seed, last phase's b_noise) of every repeat; None: not resolved

    @property
    def final(self) -> NoisePhase:
        """The last phase measured: the one goodput uses."""
        return self.phases[-1]

    @property
    def b_noise(self) -> float | None:
        """The noise scale goodput uses: B_noise with --curvature, else B_simple, of the last phase."""
        return self.final.used.b_simple

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "norm": self.norm,
            "device": self.device,
            "lr": self.lr,
            "b_small": self.b_small,
            "b_big": self.b_big,
            "train_size": self.train_size,
            "b_noise": self.b_noise,
            "phases": [p.to_dict() for p in self.phases],
            "goodput": self.goodput.to_dict() if self.goodput else None,
            "recommended": self.recommended,
            "batchnorm_layers": self.batchnorm_layers,
            "bn_stats": self.bn_stats,
            "seed": self.seed,
            "repeats": [{"seed": seed, "b_simple": v} for seed, v in self.repeats],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def default_sizes(b_small: int, train_size: int, limit: int = 1024) -> tuple[int, ...]:
    """Powers of two from ``b_small`` up to the training set size (at most ``limit``)."""
    sizes = []
    b = b_small
    while b <= min(limit, train_size):
        sizes.append(b)
        b *= 2
    return tuple(sizes)


def repeat_band(estimate: NoiseEstimate, repeats: Sequence[float | None]) -> tuple[float | None, float | None]:
    """The band of B_noise: the reported measurement's bootstrap band, widened to every repeat's value.

    The bootstrap band covers the noise of the measured batches at one point of training; repeats at other
    seeds show how much the value moves between points, which near a low loss is more (docs/noise.md).
    """
    low, high = estimate.low, estimate.high
    if any(v is None for v in repeats):
        high = None
    values = [v for v in repeats if v is not None]
    if values:
        low = min(values + ([low] if low is not None else []))
        high = max(values + [high]) if high is not None else None
    return low, high


def pick_median(runs: Sequence[GradientNoise]) -> int:
    """The index of the run whose last-phase noise scale is the (lower) median; unresolved counts as the largest."""

    def key(i: int) -> float:
        v = runs[i].phases[-1].used.b_simple
        return math.inf if v is None else v

    ordered = sorted(range(len(runs)), key=key)
    return ordered[(len(ordered) - 1) // 2]


def make_goodput(
    noise: GradientNoise | NoiseReport,
    throughput: Mapping[int, float],
    source: str,
    repeats: Sequence[float | None] = (),
) -> tuple[GoodputCurve | None, list[str]]:
    """The goodput curve from the last measured phase, with notes on what could not be done."""
    notes = []
    phase = noise.phases[-1]
    est = phase.used
    if not throughput:
        return None, ["no throughput was measured, so there is no goodput curve"]
    b_noise = est.b_simple if est.b_simple is not None else math.inf
    if est.b_simple is None:
        what = "G^T H G" if phase.curvature is not None else "|G|^2"
        notes.append(
            f"{what} was not resolved {phase.label} (its estimate is not positive): the gradient is mostly noise, "
            "so efficiency is taken as 1 at every batch size; measure more --steps or after a longer --burst-epochs"
        )
    curve = goodput_curve(throughput, b_noise, band=repeat_band(est, repeats), source=source)
    return curve, notes


def run_noise(
    config: NoiseConfig,
    *,
    throughput: Mapping[int, float] | None = None,
    throughput_source: str = "measured by batchtune noise",
    recommended: int | None = None,
    isolate: bool = True,
) -> NoiseReport:
    """Measure the noise scale (in a child process unless ``isolate=False``) and the goodput curve.

    ``throughput`` replaces the throughput measurement (the search passes its trials' medians; the
    probe's curve fits here too).
    """
    from batchtune.trial.device import resolve_device

    cfg = config.validated()
    device = str(resolve_device(cfg.device))
    seeds = range(cfg.seed, cfg.seed + cfg.repeats)
    runs = []
    for seed in seeds:
        kwargs = dict(
            task_path=str(Path(cfg.task_path).resolve()), norm=cfg.norm, lr=cfg.lr, b_small=cfg.b_small,
            b_big=cfg.b_big, steps=cfg.steps, burst_epochs=cfg.burst_epochs, device=device, seed=seed,
            threads=cfg.threads, bn_stats=cfg.bn_stats, until_loss=cfg.burst_until_loss, until_metric=cfg.burst_until_metric,
            curvature=cfg.curvature,
        )
        if isolate:
            from batchtune.trial.process import call_in_child

            env = {"OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads)} if cfg.threads else {}
            runs.append(call_in_child(
                measure_gradient_noise, kwargs, env=env, timeout=cfg.timeout, what="the noise-scale measurement"
            ))
        else:
            runs.append(measure_gradient_noise(**kwargs))  # type: ignore[arg-type]
    median = pick_median(runs)
    noise = runs[median]
    repeats = tuple((seed, run.phases[-1].used.b_simple) for seed, run in zip(seeds, runs)) if cfg.repeats > 1 else ()
    if throughput is None:
        sizes = cfg.batch_sizes or default_sizes(cfg.b_small, noise.train_size)
        too_big = [b for b in sizes if b > noise.train_size]
        if too_big:
            raise UsageError(
                f"--batch-sizes {too_big[0]} is larger than the training set ({noise.train_size} samples); drop it"
            )
        throughput = throughput_curve(
            cfg.task_path, sizes, norm=noise.norm, lr=noise.lr, device=device, steps=cfg.throughput_steps,
            seed=cfg.seed, threads=cfg.threads, timeout=cfg.timeout,
        )
    curve, notes = make_goodput(noise, throughput, throughput_source, [v for _, v in repeats])
    warnings = []
    final = noise.phases[-1]
    short = [run.phases[-1] for run in runs if run.phases[-1].reached is False]
    if short and final.until is not None:
        which = f"{len(short)} of {len(runs)} bursts" if len(runs) > 1 else "the burst"
        seen = "; ".join(p.until.describe(p.val_loss, p.val_metric) for p in short if p.until)
        warnings.append(
            f"{which} stopped at the cap of --burst-epochs {cfg.burst_epochs:g} short of {final.until.flag} "
            f"{final.until.value:g} ({seen}), so B_simple was measured before that; pass a larger --burst-epochs "
            "or a higher --lr"
        )
    if noise.batchnorm_layers and noise.bn_stats == "batch":
        warnings.append(batchnorm_warning(noise.batchnorm_layers, noise.b_small))
    elif noise.batchnorm_layers:
        notes.append(
            f"the {noise.batchnorm_layers} BatchNorm layer(s) normalized with running statistics of "
            f"{PRECISE_BN_SAMPLES} training samples (PreciseBN), frozen while measuring, so per-sample gradients are "
            "independent as the estimator assumes; the value describes training whose batch statistics are close "
            "to the population's (not batches of a few samples)"
        )
    return NoiseReport(
        task=str(Path(cfg.task_path).resolve()), norm=noise.norm, device=noise.device, lr=noise.lr,
        b_small=noise.b_small, b_big=noise.b_big, train_size=noise.train_size, phases=noise.phases,
        goodput=curve, recommended=recommended, notes=tuple(notes), warnings=tuple(warnings),
        batchnorm_layers=noise.batchnorm_layers, bn_stats=noise.bn_stats, seed=seeds[median], repeats=repeats,
    )


def batchnorm_warning(layers: int, b_small: int) -> str:
    """Why B_simple of a model with BatchNorm in train mode is biased, and what to do instead."""
    return (
        f"the model has {layers} BatchNorm layer(s) in train mode: a sample's gradient depends on its batch mates "
        f"(the statistics of the batch), but the estimator assumes independent per-sample gradients (McCandlish et "
        f"al. 2018, appendix A), so B_simple is biased, usually too high or not resolved (the statistics of {b_small} "
        "samples add noise that the big batch lacks); --batchnorm-stats running removes the bias but leaves out the "
        "noise of batch statistics in training, so treat either value as rough and check the batch size with "
        "batchtune search --objective time-to-target"
    )
