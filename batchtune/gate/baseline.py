"""The result of one ``batchtune bench`` measurement, and its JSON file (schema 3).

A baseline file is plain JSON, never pickle: it is read back on another machine and another
version, so it must not execute anything. It carries a format name and a schema number; a file
that is not JSON, not a batchtune bench file, or of an unknown schema is refused with one line.
Schema 2 added the calibration samples (the reference workload timed before every step); schema 3
decides on synchronised wall time and keeps the CPU time of every step and reference run beside it.
Older files are refused with the fix (save the baseline again): a schema 1 file has no calibration,
and a schema 2 file timed steps by CPU time, which a wall-time decision cannot be compared with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from batchtune.errors import BaselineError
from batchtune.files import write_json
from batchtune.trial.timing import Stats, summarize

FORMAT = "batchtune-bench"
SCHEMA = 3

# What was measured: two runs with different values here measure different things.
CONFIG_FIELDS = ("batch_size", "lr", "norm", "precision", "device", "clock", "epochs", "seed", "calibration")
# How hard it was measured: may differ between runs (more repeats on a noisy runner is fine).
EFFORT_FIELDS = ("repeat", "steps", "warmup", "processes")
# Fingerprint fields that change what a measurement means; two runs that differ here are refused
# (exit 3) unless the caller allows it. The other recorded facts are shown but never refuse.
FINGERPRINT_FIELDS = (
    "device_name",
    "device_memory_bytes",
    "cpu",
    "threads",
    "torch",
    "cuda",
    "batchtune",
    "precision",
    "task_sha256",
)
NOTED_FIELDS = ("optuna", "python", "cudnn")
# Bounds of every number read back from a file, and of the flags that write one: a corrupt or
# doctored file must not start a measurement that never ends (a repeat of 1e9).
INT_BOUNDS = {
    "batch_size": (1, 2**24),
    "seed": (0, 2**32 - 1),
    "repeat": (2, 1000),
    "steps": (3, 100_000),
    "warmup": (0, 100_000),
    "processes": (1, 64),
}
MAX_EPOCHS = 1000.0
MAX_THREADS = 1024


@dataclass
class BenchRun:
    """One measurement of a fixed training configuration: raw samples plus summaries.

    ``samples[r]`` holds the seconds per training step of repeat ``r`` by the decision clock
    (``config["clock"]``: synchronised wall time by default, process CPU time on request);
    ``wall_samples`` and ``cpu_samples`` the wall and CPU time of the same steps. ``calibration[r][i]``
    is the time of batchtune's reference workload run just before step ``i`` of repeat ``r``, by the
    decision clock, and ``cpu_calibration`` the same runs' CPU time (both None when the run was not
    calibrated: on accelerators). The raw samples are kept so a later comparison can test significance.
    """

    task: str
    created: str
    config: dict[str, Any]
    fingerprint: dict[str, Any]
    samples: list[list[float]]
    wall_samples: list[list[float]]
    repeat_process: list[int]
    peak_memory_bytes: list[int]
    memory_kind: str
    calibration: list[list[float]] | None = None
    cpu_samples: list[list[float]] | None = None
    cpu_calibration: list[list[float]] | None = None
    flops_per_sample: float | None = None
    metric: float | None = None
    metric_mode: str = "max"
    warnings: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    @property
    def batch_size(self) -> int:
        return int(self.config["batch_size"])

    @property
    def step_time(self) -> Stats:
        """Median and quartiles of all step-time samples (decision clock), pooled over repeats."""
        return summarize([t for rep in self.samples for t in rep])

    @property
    def normalised_step_time(self) -> Stats | None:
        """Median and quartiles of step time / the reference time before it (None without calibration)."""
        if self.calibration is None:
            return None
        return summarize([s / c for reps in zip(self.samples, self.calibration) for s, c in zip(*reps)])

    @property
    def wall_step_time(self) -> Stats:
        return summarize([t for rep in self.wall_samples for t in rep])

    @property
    def throughput(self) -> Stats:
        """Samples per second: the batch size over the step-time quartiles (a slow step is a low throughput)."""
        st = self.step_time
        b = self.batch_size
        return Stats(median=b / st.median, q25=b / st.q75, q75=b / st.q25, n=st.n)

    @property
    def cpu_share(self) -> float:
        """CPU time / wall time of the timed steps (1.0 on an idle core with one thread and no waiting)."""
        wall = sum(t for rep in self.wall_samples for t in rep)
        cpu_reps = self.cpu_samples if self.cpu_samples is not None else self.samples if self.config.get("clock") == "cpu" else None
        cpu = sum(t for rep in cpu_reps for t in rep) if cpu_reps is not None else wall
        return cpu / wall if wall > 0 else 1.0

    @property
    def peak_memory(self) -> int:
        """Median over repeats of the peak memory (CUDA max_memory_allocated, or CPU peak RSS)."""
        values = sorted(self.peak_memory_bytes)
        return int(values[len(values) // 2])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        body = {"format": FORMAT, "schema": self.schema}
        body.update({k: v for k, v in data.items() if k != "schema"})
        body["summary"] = {  # for people and dashboards; recomputed from the samples when read back
            "step_time_median_s": self.step_time.median,
            "step_time_rel_iqr": self.step_time.rel_iqr,
            "throughput_median": self.throughput.median,
            "throughput_q25": self.throughput.q25,
            "throughput_q75": self.throughput.q75,
            "wall_throughput_median": self.batch_size / self.wall_step_time.median,
            "calibration_median_s": summarize([c for rep in self.calibration for c in rep]).median if self.calibration else None,
            "peak_memory_bytes": self.peak_memory,
        }
        return body


def save_run(run: BenchRun, path: str | Path) -> Path:
    """Write ``run`` as JSON, atomically (a crash never leaves half a baseline)."""
    return write_json(Path(path), run.to_dict())


def load_run(path: str | Path) -> BenchRun:
    """Read a file written by :func:`save_run`, or raise :class:`BaselineError` with the fix."""
    path = Path(path)
    fix = f"save it again with `batchtune bench TASK --save {path}`"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such baseline file; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a UTF-8 text file"
        raise BaselineError(f"{path}: cannot read the baseline ({reason}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); the file is corrupt, {fix}") from None
    return from_dict(data, where=str(path), fix=fix)


def from_dict(data: Any, *, where: str = "baseline", fix: str = "save it again with `batchtune bench TASK --save FILE`") -> BenchRun:
    """Check and convert the parsed JSON of a baseline file."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"{where}: not a batchtune bench file (no \"format\": \"{FORMAT}\"); {fix}")
    schema = data.get("schema")
    if schema in (1, 2):
        why = {1: "has no machine-speed calibration", 2: "timed steps by CPU time, which cannot see waiting"}[schema]
        raise BaselineError(
            f"{where}: baseline schema {schema} {why}; this batchtune decides on wall time (schema {SCHEMA}): "
            f"re-save the baseline: {fix.removeprefix('save it again with ')}"
        )
    if schema != SCHEMA:
        newer = isinstance(schema, int) and schema > SCHEMA
        hint = "upgrade batchtune to read it" if newer else fix
        raise BaselineError(f"{where}: baseline schema {schema!r} is not supported (this batchtune reads schema {SCHEMA}); {hint}")
    names = {f.name for f in fields(BenchRun)} - {"schema"}
    values = {k: data[k] for k in names if k in data}
    try:
        run = BenchRun(**values, schema=SCHEMA)
        _check(run)
    except (TypeError, ValueError, KeyError) as exc:
        raise BaselineError(f"{where}: malformed baseline ({exc}); {fix}") from None
    return run


def _check(run: BenchRun) -> None:
    """Types and shapes the comparison relies on; raises ValueError naming the bad field."""
    if not isinstance(run.config, dict) or not isinstance(run.fingerprint, dict):
        raise ValueError("config and fingerprint must be objects")
    for key in CONFIG_FIELDS + EFFORT_FIELDS:
        if key not in run.config:
            raise ValueError(f"config.{key} is missing")
    for key, (low, high) in INT_BOUNDS.items():
        if not _int_in(run.config[key], low, high):
            raise ValueError(f"config.{key} must be an integer from {low} to {high}, not {run.config[key]!r}")
    if not _number(run.config["lr"]) or run.config["lr"] <= 0:
        raise ValueError(f"config.lr must be a positive finite number, not {run.config['lr']!r}")
    epochs = run.config["epochs"]
    if epochs is not None and (not _number(epochs) or not 0 < epochs <= MAX_EPOCHS):
        raise ValueError(f"config.epochs must be null or a number of epochs above 0 and at most {MAX_EPOCHS:g}, not {epochs!r}")
    for key in ("norm", "precision", "clock", "device"):
        if not isinstance(run.config[key], str) or not 0 < len(run.config[key]) <= 100:
            raise ValueError(f"config.{key} must be a short string, not {run.config[key]!r}")
    threads = run.fingerprint.get("threads")
    if threads is not None and not _int_in(threads, 1, MAX_THREADS):
        raise ValueError(f"fingerprint.threads must be an integer from 1 to {MAX_THREADS}, not {threads!r}")
    for name in ("samples", "wall_samples"):
        reps = getattr(run, name)
        if not _nested_positive(reps):
            raise ValueError(f"{name} must be a non-empty list of non-empty lists of positive seconds")
    if len(run.samples) != len(run.wall_samples) or len(run.samples) != len(run.peak_memory_bytes):
        raise ValueError("samples, wall_samples and peak_memory_bytes must have one entry per repeat")
    for name in ("cpu_samples", "cpu_calibration"):
        reps = getattr(run, name)
        if reps is not None and (not _nested_positive(reps) or [len(r) for r in reps] != [len(r) for r in run.samples]):
            raise ValueError(f"{name} must be null or one list of positive seconds per repeat, one per step sample")
    if run.calibration is not None:
        if not _nested_positive(run.calibration):
            raise ValueError("calibration must be null or a non-empty list of non-empty lists of positive seconds")
        if [len(r) for r in run.calibration] != [len(r) for r in run.samples]:
            raise ValueError("calibration must have one sample per step sample")
    if (run.calibration is None) != (run.config.get("calibration") is None):
        raise ValueError("calibration samples and config.calibration must be given together")
    if not all(isinstance(m, int) and m >= 0 for m in run.peak_memory_bytes):
        raise ValueError("peak_memory_bytes must be non-negative integers")
    for name in ("flops_per_sample", "metric"):
        value = getattr(run, name)
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number or null")
    if run.metric_mode not in ("max", "min"):
        raise ValueError("metric_mode must be \"max\" or \"min\"")


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _nested_positive(reps: Any) -> bool:
    if not isinstance(reps, Sequence) or not reps:
        return False
    for rep in reps:
        if not isinstance(rep, Sequence) or not rep:
            return False
        if not all(isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in rep):
            return False
    return True
