"""One exception hierarchy. Every message says what was wrong and how to fix it."""

from __future__ import annotations


class BatchtuneError(Exception):
    """Base class of every error batchtune raises on purpose.

    ``exit_code`` is what the CLI exits with: 2 for bad input (usage, task file), 1 otherwise.
    """

    exit_code = 1


class UsageError(BatchtuneError):
    """An option or argument has an impossible value."""

    exit_code = 2


class TaskError(BatchtuneError):
    """The user's task file is missing, broken, or does not follow the contract."""

    exit_code = 2


class StorageError(BatchtuneError):
    """The study storage cannot be opened, read or written."""

    exit_code = 1


class OutputError(BatchtuneError):
    """A report or baseline file cannot be written or read."""

    exit_code = 1


class BaselineError(UsageError):
    """A bench baseline file is missing, corrupt, foreign or of an unknown schema (exit 2)."""
