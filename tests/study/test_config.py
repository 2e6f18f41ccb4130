"""Impossible option values: one-line errors that name the option and the fix (exit 2 in the CLI)."""

from __future__ import annotations

import pytest

from batchtune.errors import UsageError
from batchtune.study.config import SearchConfig, parse_tolerance
from batchtune.units import format_bytes, parse_size, redact_url


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size_min": 64, "batch_size_max": 32}, r"--batch-size-min 64 is above --batch-size-max 32"),
        ({"lr_min": 0.0}, r"--lr-min 0 must be a positive learning rate"),
        ({"lr_min": -1.0}, r"--lr-min -1 must be a positive learning rate"),
        ({"lr_min": 0.1, "lr_max": 0.01}, r"--lr-min 0.1 must be below --lr-max 0.01"),
        ({"norms": ("batch", "weird")}, r"--norms: unknown normalization 'weird'; choose from batch, group, layer, none"),
        ({"trials": 0}, r"--trials 0 must be at least 1"),
        ({"epochs": 0.0}, r"--epochs 0 must be a positive number"),
        ({"storage": "mongodb://x/y"}, r"--storage 'mongodb://x/y' has an unknown scheme 'mongodb'"),
        ({"precisions": ("fp8",)}, r"--precisions: unknown precision"),
        ({"workers": 0}, r"--workers 0 must be at least 1"),
        # issue 14: values that escaped validation
        ({"study": "../../etc/x"}, r"--study '../../etc/x' is not a plain name"),
        ({"study": ".."}, r"--study '..' is not a plain name"),
        ({"workers": 100000}, r"--workers 100000 is more than"),
        ({"seed": -1}, r"--seed -1 is out of range; use an integer from 0 to 4294967295"),
        ({"seed": 2**32}, r"--seed 4294967296 is out of range"),
        ({"trial_timeout": float("nan")}, r"--trial-timeout nan must be a positive number of seconds"),
        ({"timeout": float("nan")}, r"--timeout nan must be a positive number of seconds"),
        ({"eval_every": float("nan")}, r"--eval-every nan must be a positive number of epochs"),
    ],
)
def test_impossible_values(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SearchConfig(task_path="t.py", **kwargs).validated()


@pytest.mark.parametrize("text", ["-1pp", "100%", "abc", "nan"])
def test_bad_tolerance(text):
    with pytest.raises(UsageError, match="--tolerance"):
        parse_tolerance(text)


def test_tolerances():
    assert parse_tolerance("0.5pp").value == pytest.approx(0.005)
    assert parse_tolerance("1%").kind == "relative"


@pytest.mark.parametrize("text, expected", [("6GiB", 6 * 2**30), ("512MB", 512 * 10**6), ("1024", 1024), ("1.5 kib", 1536)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "6 GiBs", "-1GiB", "0"])
def test_bad_sizes(text):
    with pytest.raises(UsageError, match=r"--memory-budget"):
        parse_size(text)


def test_redaction_and_format():
    assert redact_url("postgresql://bob:s3cr%40t@db:5432/x failed") == "postgresql://bob:***@db:5432/x failed"
    assert redact_url("sqlite:///studies/a.db") == "sqlite:///studies/a.db"
    assert format_bytes(1536) == "1.5 KiB"
