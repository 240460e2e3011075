"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def readable_mode() -> int:
    """``0o666`` less the process umask: what ``open()`` would give a new file (``mkstemp``
    creates its files ``0o600``, too strict for reports and stores others should read)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: Any, *, durable: bool = True,
                      sort_keys: bool = True) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``.

    The rename alone makes the write atomic for other processes and survives the writer being
    killed; ``durable=True`` also fsyncs file and folder so it survives a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=sort_keys)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, readable_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
