"""The one atomic writer: a reader sees the old file or the new one, never half of one.

Every file latentsurgeon writes (store manifests and progress, checkpoints, saved estimators,
reports, figures, ``results.json``) goes through :func:`atomic_write`: the content is written to a
temporary file in the same folder, flushed (and fsynced when ``durable``), given ordinary
permissions and renamed over the target.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "check_writable_file", "fsync_dir", "readable_mode", "save_figure_atomic", "torch_save_atomic",
           "write_json_atomic", "write_text_atomic"]


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


def check_writable_file(path: str | Path) -> Path:
    """Raise an :class:`OSError` naming ``path`` (never a temporary file) unless a file can be
    written there: ``path`` is not a folder and its folder exists."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; expected a file name", str(path))
    if not path.parent.is_dir():
        where = next((p for p in path.parents if p.exists()), None)
        reason = (f"its folder {path.parent} does not exist" if where is None or where.is_dir()
                  else f"{where} is a file, not a folder")
        raise FileNotFoundError(errno.ENOENT, f"cannot write a file there: {reason}", str(path))
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], *,
                 durable: bool = True) -> Path:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then rename it over
    ``path``. The rename alone makes the write atomic for other processes and survives the writer
    being killed; ``durable=True`` also fsyncs file and folder so it survives a power cut.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
        FileNotFoundError: its folder does not exist (or lies under a file).
        OSError: the folder is not writable (nothing is left behind).
    """
    path = Path(path)
    check_writable_file(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
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
    return path


def write_text_atomic(path: str | Path, text: str, *, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), durable=durable)


def write_json_atomic(path: str | Path, payload: Any, *, durable: bool = True,
                      sort_keys: bool = True) -> Path:
    """Write ``payload`` as indented JSON atomically."""
    text = json.dumps(payload, indent=1, sort_keys=sort_keys)
    return write_text_atomic(path, text, durable=durable)


def torch_save_atomic(obj: Any, path: str | Path, *, durable: bool = True) -> Path:
    """``torch.save(obj)`` atomically (checkpoints, saved estimators)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle), durable=durable)


def save_figure_atomic(figure: Any, path: str | Path, *, dpi: int = 110, close: bool = True,
                       durable: bool = True) -> Path:
    """Save a matplotlib figure atomically, in the format its suffix names (``.png`` when it
    has none matplotlib knows), cropped to its content; then close it (``close=False`` keeps it
    open, for a caller that embeds it in a report afterwards and closes it there).

    A failing ``savefig`` leaves an existing file at ``path`` as it was. Matplotlib is imported
    here, not at the top, so importing latentsurgeon stays light.

    Raises:
        OSError: the folder is missing or not writable (nothing is left behind).
    """
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    # savefig on a handle cannot see the name, so the format is passed from the suffix
    fmt = suffix if suffix in figure.canvas.get_supported_filetypes() else "png"
    try:
        return atomic_write(path, lambda handle: figure.savefig(
            handle, format=fmt, dpi=dpi, bbox_inches="tight"), durable=durable)
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)
