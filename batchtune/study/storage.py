"""Opening Optuna storage: SQLite under studies/ by default, PostgreSQL (or MySQL) by URL."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchtune.errors import StorageError, UsageError
from batchtune.units import redact_url

if TYPE_CHECKING:
    from batchtune.study.config import SearchConfig

log = logging.getLogger(__name__)

_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
# Heartbeats let another worker mark a dead worker's trial failed and retry it once (Optuna's
# RetryHeartbeatStaleTrialCallback). 10 s beats, declared dead after 60 s without one.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60


def default_storage(study: str, studies_dir: str | Path = "studies") -> str:
    return f"sqlite:///{Path(studies_dir) / f'{study}.db'}"


def check_url(url: str) -> None:
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise UsageError(
            f"--storage {redact_url(url)!r} has an unknown scheme {scheme or '(none)'!r}; use "
            "sqlite:///studies/NAME.db or postgresql://user:password@host/db"
        )


def open_storage(
    url: str,
    *,
    heartbeat: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    create_folder: bool = False,
) -> Any:
    """An RDBStorage for ``url``, with heartbeats, or a :class:`StorageError` that says why not.

    ``create_folder``: create the SQLite file's folder (only for the default studies/ path; a folder
    named in a user's URL that does not exist is a typo, refused with :class:`UsageError`).
    """
    import optuna
    import sqlalchemy.exc

    check_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            folder = Path(path).parent
            if not create_folder and not folder.is_dir():
                raise UsageError(
                    f"--storage {redact_url(url)!r}: the folder {folder} does not exist; create it first or fix the path"
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the study folder {folder}: {exc.strerror}; pass a writable --storage") from None
            if Path(path).exists() and not os.access(path, os.R_OK | os.W_OK):
                raise StorageError(f"the study file {path} is not readable and writable; fix its permissions or pass another --storage")
        # Concurrent workers on one SQLite file wait for the lock instead of failing with
        # "database is locked" (Optuna's docs warn about SQLite under parallel writers).
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    else:
        # No pre-ping: it costs a round trip per storage call; recycle connections hourly instead.
        kwargs["engine_kwargs"] = {"pool_recycle": 3600}
    if heartbeat:
        kwargs.update(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    try:
        storage = _create_with_retry(lambda: optuna.storages.RDBStorage(url, **kwargs))
    except ImportError as exc:
        raise StorageError(
            f"the driver for {redact_url(url)} is not installed ({exc}); pip install 'batchtune[postgres]'"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as exc:
        raise StorageError(_describe(url, exc)) from None
    if url.startswith("sqlite"):
        _enable_wal(storage)
    return storage


def _create_with_retry(make: Any, attempts: int = 5) -> Any:
    """Workers started together race to create Optuna's tables; the loser retries once they exist."""
    import random
    import time

    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            text = str(exc).lower()
            # PostgreSQL says "duplicate"/"already exists"; SQLite "database is locked", or a UNIQUE
            # failure when both processes stamp Optuna's schema version into a new file.
            racing = any(s in text for s in ("duplicate", "already exists", "database is locked", "unique constraint failed"))
            if attempt == attempts - 1 or not racing:
                raise
            time.sleep(0.2 + random.random() * 0.5)
    raise AssertionError("unreachable")


def _enable_wal(storage: Any) -> None:
    """WAL lets readers (a report, a dashboard) work while a worker writes."""
    import sqlalchemy

    try:
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("PRAGMA journal_mode=WAL"))
    except Exception as exc:  # a read-only or network file system keeps the default journal
        log.debug("could not enable WAL: %s", exc)


def _describe(url: str, exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
    safe = redact_url(url)
    if "file is not a database" in text or "malformed" in text:
        return (
            f"{safe} is not a readable Optuna study ({text}); the file was left as it is: move it aside "
            "or pass another --study/--storage"
        )
    if "could not connect" in text or "Connection refused" in text or "could not translate host" in text:
        return f"cannot reach the storage server {safe} ({redact_url(text)}); start it or check the URL"
    return f"cannot open the study storage {safe}: {redact_url(text)}"


def storage_error(url: str, exc: BaseException) -> StorageError:
    return StorageError(_describe(url, exc))


def open_study(cfg: SearchConfig, directions: list[Any], *, create: bool = True, pruner: Any = None) -> Any:
    import optuna
    import sqlalchemy.exc

    from batchtune.study.sampler import make_sampler

    url = cfg.storage or default_storage(cfg.study_name, cfg.studies_dir)
    storage = open_storage(url, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.heartbeat_grace,
                           create_folder=cfg.storage is None)
    sampler = make_sampler(seed=cfg.seed, trials=cfg.total_trials)
    try:
        if create:
            study = optuna.create_study(
                study_name=cfg.study_name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                directions=directions,
                load_if_exists=True,
            )
            # load_if_exists does not compare the objectives of a stored study with the ones asked for
            # (a changed direction is a changed metric mode, which the resume check names).
            if len(study.directions) != len(directions):
                raise ValueError(f"{len(study.directions)} objective(s) stored, {len(directions)} asked for")
            return study
        return optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise StorageError(
            f"no study named {cfg.study_name!r} in {redact_url(url)}; run `batchtune search` first or pass --study"
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"study {cfg.study_name!r} in {redact_url(url)} exists with other objectives ({exc}); pass a new --study name"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise storage_error(url, exc) from None
