"""Parsing and formatting of sizes, percentages and storage URLs (pure Python, no torch)."""

from __future__ import annotations

import re

from batchtune.errors import UsageError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


# numpy's legacy seeding (np.random.seed, Optuna's samplers) takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def check_seed(seed: int, *, option: str = "--seed") -> None:
    """A seed every RNG batchtune seeds accepts, or a :class:`UsageError` with the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{option} {seed} is out of range; use an integer from 0 to {MAX_SEED}")


def parse_size(text: str, *, option: str = "--memory-budget") -> int:
    """Parse ``6GiB``, ``512MB``, ``1.5e9``-free forms like ``1500000000`` into bytes."""
    match = _SIZE_RE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise UsageError(
            f"{option} {text!r} is not a memory size; write a number with a unit such as "
            "6GiB, 512MiB or 8GB"
        )
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise UsageError(f"{option} {text!r} must be larger than zero; for example 6GiB")
    return int(value)


def format_bytes(n: float | None) -> str:
    """Human-readable binary size: ``1.5 GiB``."""
    if n is None or n != n:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_fraction(text: str, *, option: str) -> float:
    """Parse ``10%`` or ``0.1`` into a fraction in [0, 1)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a percentage; write it like 10% or 0.1") from None
    if not 0 <= value < 1:
        raise UsageError(f"{option} {text!r} is out of range; it must be at least 0% and below 100%")
    return value


_FLOPS_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgtp]?)(?:flop/?s|flops)?\s*$", re.IGNORECASE)
_FLOPS_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_flops(text: str, *, option: str = "--peak-flops") -> float:
    """Parse ``312e12``, ``312T`` or ``312 TFLOPS`` into FLOP/s."""
    match = _FLOPS_RE.match(str(text))
    if not match:
        raise UsageError(f"{option} {text!r} is not a FLOP/s figure; write it like 312e12, 312T or 312TFLOPS")
    value = float(match.group(1)) * _FLOPS_UNITS[match.group(2).lower()]
    if value <= 0:
        raise UsageError(f"{option} {text!r} must be larger than zero; for example 312T")
    return value


_URL_PASSWORD_RE = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")


def redact_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    return _URL_PASSWORD_RE.sub(lambda m: f"{m.group('head')}***@", str(text))
