"""Writing output files safely: whole or not at all, with errors that say what to do."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from batchtune.errors import OutputError


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a task file's identity in a bench fingerprint and a study's)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {path}: {exc.strerror}; pass a writable --output") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"the output folder {path} is not writable; fix its permissions or pass another --output")
    return path


def write_text(path: Path, text: str) -> Path:
    """Write via a temporary file and rename, so a full disk never leaves half a report."""
    ensure_dir(path.parent)
    try:
        fd, tmp = _temporary(path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}; pass a writable --output") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OutputError(f"cannot write {path}: {exc.strerror}; {_fix_for(exc, path)}") from None
    return path


def _fix_for(exc: OSError, path: Path) -> str:
    """The fix an OS error on writing ``path`` calls for: a full disk is not the only way to fail."""
    import errno

    if exc.errno == errno.EISDIR:
        return f"a folder is in the way: move or remove {path}, or pass another --output"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "pass a writable --output"
    return "free disk space or pass another --output"


def _temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` with the mode ``path`` has, or else the one the umask gives any new
    file (mkstemp's 0600 would make every report private while the plots beside it are not)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            os.fchmod(fd, mode)
        return fd, tmp


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
