"""Writing an activation store: :meth:`ActivationStore.extract` (streamed, resumable, atomic).

* **Streaming**: each batch's pooled activations go into memory-mapped ``.npy`` files; peak
  memory is one batch.
* **Resume**: after every batch, ``progress.json`` records the samples done, each batch's input
  fingerprint and a checksum of the rows written; a new call continues at the next batch and
  yields bit-identical arrays.
* **Atomic overwrite**: ``overwrite=True`` writes the new store beside the old one
  (``.NAME.overwrite``) and swaps the directories once it is complete; a failure leaves the old
  store as it was, and removes the half-written new one.
* **No debris**: a failed extraction that committed no batch removes what it created (the
  directory too, if it made it); one that committed batches leaves a resumable partial store.
* **Non-finite values** are refused (``NonFiniteError`` naming layer and rows) or, with
  ``nonfinite="record"``, written and listed in the manifest.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._io import write_json_atomic
from latentsurgeon.activations.batching import (
    DataLike,
    as_loader,
    batch_inputs,
    batch_size_of,
    check_batch_size,
    loader_length,
)
from latentsurgeon.activations.fingerprint import combine, file_fingerprint, model_fingerprint
from latentsurgeon.activations.read import LayerReader, nonfinite_error, nonfinite_rows
from latentsurgeon.activations.sharding import (
    barrier,
    current_shard,
    in_process_group,
    merge_shards,
    shard_loader,
    shard_path,
    shards_fingerprint,
)
from latentsurgeon.activations.store_format import (
    DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS,
    batch_fingerprint,
    file_name,
    read_json,
    rows_checksum,
)
from latentsurgeon.activations.store_reader import StoreReader
from latentsurgeon.errors import InvalidParameterError, StoreError
from latentsurgeon.hooks.resolve import LayerSelector

logger = logging.getLogger("latentsurgeon")

NONFINITE = ("raise", "record")
OVERWRITE_SUFFIX = ".overwrite"
REPLACED_SUFFIX = ".replaced"
_RECORD_HINT = (" Or pass nonfinite='record' to store them anyway and list the rows in the "
                "manifest (store.nonfinite_rows(layer)).")


def _is_store_file(child: Path) -> bool:
    """Files and folders a store (or its extraction) writes: nothing else is ever deleted."""
    name = child.name
    return (name in (MANIFEST, PROGRESS, "shards") or name.endswith(".tmp")
            or (child.suffix == ".npy" and name[:3].isdigit() and name[3:4] == "-"))


def _validate(path: Any, batch_size: Any, dtype: Any, nonfinite: Any, shard: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"path must be a str or a Path; got {path!r}.")
    if dtype not in DTYPES:
        raise InvalidParameterError(
            f"dtype must be one of {sorted(DTYPES)} (the dtype on disk); got {dtype!r}.")
    if nonfinite not in NONFINITE:
        raise InvalidParameterError(f"nonfinite must be one of {NONFINITE}; got {nonfinite!r}.")
    check_batch_size(batch_size)
    if shard is not None and not (
            isinstance(shard, tuple) and len(shard) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
            and 0 <= shard[0] < shard[1]):
        raise InvalidParameterError(
            f"shard must be None or (rank, world_size) with 0 <= rank < world_size; got {shard!r}.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"path: {path} is an existing file; an activation store is a directory. "
                         "Choose another path (or remove the file).")
    return path


def _make_dir(path: Path) -> Path | None:
    """Create ``path`` (and missing parents) and check that files can be written in it.

    Returns the outermost folder it created (None if ``path`` existed), for cleaning up."""
    created = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        created = folder
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if created is not None and created.exists():
            shutil.rmtree(created, ignore_errors=True)
        raise StoreError(f"path: cannot write an activation store at {path} "
                         f"({exc.strerror or exc}); choose a writable directory.") from exc
    return created


def extract_store(model: nn.Module, data: DataLike, layers: LayerSelector,
                  path: str | Path, *, pooling: str | Mapping[str, str], batch_size: int,
                  device: str | torch.device | None, dtype: str, resume: bool, overwrite: bool,
                  forward_fn: Callable[[nn.Module, Any], Any] | None, progress: bool,
                  verify: bool, shard: tuple[int, int] | None, stop_early: bool,
                  nonfinite: str) -> Path:
    """The body of :meth:`ActivationStore.extract` (see there); returns the path of the complete
    store (under ``torch.distributed``: the merged store, or this rank's shard while other shards
    are missing)."""
    path = _validate(path, batch_size, dtype, nonfinite, shard)
    rank, world = current_shard() if shard is None else shard
    if world > 1:
        return _extract_sharded(
            model, data, layers, path, rank, world, batch_size, overwrite,
            {"pooling": pooling, "device": device, "dtype": dtype, "resume": resume,
             "forward_fn": forward_fn, "progress": progress and rank == 0, "verify": verify,
             "stop_early": stop_early, "nonfinite": nonfinite})
    loader = as_loader(data, batch_size)
    # Everything about the model and the layers is checked before anything touches the disk.
    reader = LayerReader(model, layers, pooling=pooling, stop_early=stop_early,
                         forward_fn=forward_fn, device=device)
    n_samples = loader_length(loader)
    config = {
        "layers": reader.names,
        "pooling": reader.poolings,
        "dtype": dtype,
        "model_fingerprint": model_fingerprint(model),
        "n_samples": n_samples,
    }
    if (path / MANIFEST).exists() and not overwrite:
        _reuse(path, config, loader, verify)
        return path

    swap = overwrite and path.exists() and any(path.iterdir())
    if swap:
        foreign = sorted(c.name for c in path.iterdir() if not _is_store_file(c))
        if foreign:
            raise StoreError(
                f"path: {path} holds files that are not part of an activation store "
                f"({', '.join(foreign[:5])}); overwrite=True replaces the whole directory, so "
                "it refuses. Choose a directory of its own for the store.")
        target = path.parent / f".{path.name}{OVERWRITE_SUFFIX}"
        if target.exists():
            shutil.rmtree(target)  # left by an overwrite that was killed
    else:
        target = path
        if not resume:
            _clear(target)
    created = _make_dir(target)
    state = _load_progress(target, config, nonfinite)
    writer = _StoreWriter(target, config, state, nonfinite)
    try:
        _write_batches(reader, loader, writer, state, target, n_samples, progress)
        writer.finish()
    except BaseException:
        writer.close()
        if swap:
            shutil.rmtree(target, ignore_errors=True)
        elif not state["batches"]:
            writer.remove_created(created)
        raise
    if swap:
        _swap(target, path)
    return path


def _write_batches(reader: LayerReader, loader: Any, writer: _StoreWriter, state: dict,
                   path: Path, n_samples: int, progress: bool) -> None:
    position = 0
    with reader:
        bar = tqdm(loader, desc="extracting activations", unit="batch",
                   disable=None if progress else True, leave=False)
        for batch_index, batch in enumerate(bar):
            inputs = batch_inputs(batch)
            fingerprint = batch_fingerprint(inputs)
            size = batch_size_of(inputs)
            if batch_index < len(state["batches"]):
                recorded_end, recorded_fp = state["batches"][batch_index]
                if recorded_fp != fingerprint or recorded_end != position + size:
                    raise StoreError(
                        f"Cannot resume the store at {path}: batch {batch_index} differs from "
                        "the interrupted run's (the data, their order or the batch size "
                        "changed; a shuffling loader cannot be resumed). Use overwrite=True to "
                        "start over.")
                position += size
                continue
            values = reader.read(inputs)
            writer.write(position, {n: v.to("cpu") for n, v in values.items()}, fingerprint)
            position += size
        bar.close()
    if position != n_samples:
        raise StoreError(f"The data yielded {position} samples, {n_samples} were expected.")


def _swap(new: Path, path: Path) -> None:
    """Put the complete store ``new`` at ``path``; the old one is removed only afterwards."""
    old = path.parent / f".{path.name}{REPLACED_SUFFIX}"
    if old.exists():
        shutil.rmtree(old)
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _reuse(path: Path, config: dict, loader: Any, verify: bool) -> None:
    """Check that the complete store at ``path`` is the one this extraction would write."""
    store = StoreReader(path, verify=verify)
    manifest = store.manifest
    for key in ("layers", "dtype", "model_fingerprint", "n_samples"):
        if manifest["config"][key] != config[key]:
            raise StoreError(
                f"A complete store at {path} was made with another {key.replace('_', ' ')} "
                f"({manifest['config'][key]!r}, now {config[key]!r}); pass overwrite=True to "
                "replace it or choose another path."
            )
    if manifest["config"]["pooling"] != config["pooling"]:
        raise StoreError(f"A complete store at {path} used other pooling "
                         f"({manifest['config']['pooling']}); pass overwrite=True to replace it.")
    fingerprint = combine([batch_fingerprint(batch_inputs(b)) for b in loader])
    if fingerprint != manifest["data_fingerprint"]:
        raise StoreError(f"A complete store at {path} was extracted from other data, in another "
                         "order, or in other batches (data are compared batch by batch: keep "
                         "the batch size); pass overwrite=True to replace it.")
    logger.info("reusing the complete activation store at %s", path)


def _clear(path: Path) -> None:
    """Remove a store's own files from ``path`` (never anything else)."""
    if not path.exists():
        return
    for child in path.iterdir():
        if _is_store_file(child):
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def _load_progress(path: Path, config: dict, nonfinite: str) -> dict:
    progress_path = path / PROGRESS
    if not progress_path.exists():
        return {"format": FORMAT_VERSION, "config": config, "n_done": 0, "batches": [],
                "shapes": None, "checksums": [], "nonfinite": {}}
    state = read_json(progress_path, "progress file")
    fields = {"config": dict, "batches": list, "checksums": list, "n_done": int}
    state.setdefault("nonfinite", {})
    if (any(not isinstance(state.get(k), t) for k, t in fields.items())
            or len(state["batches"]) != len(state["checksums"])
            or not isinstance(state["nonfinite"], dict)
            or not (isinstance(state.get("shapes"), dict)
                    or (state.get("shapes") is None and not state["batches"]))):
        raise StoreError(f"Cannot resume the store at {path}: its progress file is damaged. "
                         "Pass overwrite=True (or resume=False) to start over.")
    for key, value in config.items():
        if state["config"].get(key) != value:
            raise StoreError(
                f"Cannot resume the store at {path}: it was started with another "
                f"{key.replace('_', ' ')}. Pass overwrite=True (or resume=False) to start over."
            )
    _verify_written(path, state)
    if nonfinite == "raise":
        for layer, rows in state["nonfinite"].items():
            if rows:
                raise nonfinite_error(layer, rows, hint=" (recorded by the interrupted run with "
                                      "nonfinite='record'; resume with the same option)")
    logger.info("resuming activation store at %s from sample %d", path, state["n_done"])
    return state


def _verify_written(path: Path, state: dict) -> None:
    """Check that the rows committed before an interruption are still what was written."""
    if not state["batches"]:
        return
    try:
        arrays = {name: np.load(path / info["file"], mmap_mode="r")
                  for name, info in state["shapes"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:  # missing, truncated, bad entry
        raise StoreError(f"Cannot resume the store at {path}: its files are damaged ({exc}). "
                         "Pass overwrite=True to start over.") from exc
    start = 0
    for (end, _), checksum in zip(state["batches"], state["checksums"], strict=True):
        if rows_checksum(arrays, start, end) != checksum:
            raise StoreError(
                f"Cannot resume the store at {path}: rows {start}..{end} were damaged after they "
                "were written. Pass overwrite=True to start over."
            )
        start = end


def _as_stored(value: torch.Tensor, dtype: str) -> np.ndarray:
    """``value`` as a numpy array of the store's dtype (numpy rounds float32 -> float16 as
    ``.astype`` does; torch-only dtypes such as bfloat16 are widened to float32 first)."""
    if value.dtype not in (torch.float16, torch.float32, torch.float64):
        value = value.to(torch.float32)
    with np.errstate(over="ignore"):  # an overflow to Inf is caught by the non-finite check
        return value.numpy().astype(DTYPES[dtype], copy=False)


class _StoreWriter:
    """Owns the memory maps and the progress file during one extraction."""

    def __init__(self, path: Path, config: dict, state: dict, nonfinite: str) -> None:
        self.path = path
        self.config = config
        self.state = state
        self.nonfinite = nonfinite
        self.arrays: dict[str, np.memmap] = {}
        self.created: list[Path] = []
        if state["shapes"] is not None:
            for name, info in state["shapes"].items():
                self.arrays[name] = np.load(path / info["file"], mmap_mode="r+")

    def _allocate(self, pooled: Mapping[str, np.ndarray]) -> None:
        shapes = {}
        for index, name in enumerate(self.config["layers"]):
            file = file_name(index, name)
            shape = (self.config["n_samples"], *pooled[name].shape[1:])
            self.created.append(self.path / file)
            self.arrays[name] = np.lib.format.open_memmap(
                self.path / file, mode="w+", dtype=DTYPES[self.config["dtype"]], shape=shape)
            shapes[name] = {"file": file, "shape": list(shape)}
        self.state["shapes"] = shapes

    def write(self, start: int, pooled: Mapping[str, torch.Tensor], fingerprint: str) -> None:
        values = {n: _as_stored(v, self.config["dtype"]) for n, v in pooled.items()}
        # Checked before anything of the batch is written: a refused batch leaves no trace.
        bad = {n: nonfinite_rows(torch.from_numpy(v)) for n, v in values.items()}
        if self.nonfinite == "raise":
            for name, rows in bad.items():
                if rows:
                    raise nonfinite_error(name, [start + r for r in rows], hint=_RECORD_HINT)
        if not self.arrays:
            self._allocate(values)
        end = start + len(next(iter(values.values())))
        for name, value in values.items():
            expected = tuple(self.arrays[name].shape[1:])
            if tuple(value.shape[1:]) != expected:
                raise StoreError(
                    f"Layer {name!r} produced per-sample shape {tuple(value.shape[1:])} but the "
                    f"store holds {expected}; inputs of varying size need pooling='max' or 'mean'."
                )
        for name, value in values.items():
            self.arrays[name][start:end] = value
        for name, rows in bad.items():
            if rows:
                self.state["nonfinite"].setdefault(name, []).extend(start + r for r in rows)
        # The rows are in the shared mapping (the page cache) before the batch is recorded as
        # done, so a killed process never skips a batch on resume. Syncing to the disk every batch
        # would only guard against power cuts and costs an msync per batch; rows damaged that way
        # are caught by the per-batch checksums when resuming.
        self.state["batches"].append([end, fingerprint])
        self.state["checksums"].append(rows_checksum(self.arrays, start, end))
        self.state["n_done"] = end
        write_json_atomic(self.path / PROGRESS, self.state, durable=False)

    def close(self) -> None:
        """Release the memory maps (before files are removed or the folder is moved)."""
        for array in self.arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        self.arrays = {}

    def remove_created(self, created_folder: Path | None) -> None:
        """Undo an extraction that committed nothing: its files, and the folders it made."""
        if created_folder is not None:
            shutil.rmtree(created_folder, ignore_errors=True)
            return
        for file in (*self.created, self.path / PROGRESS):
            file.unlink(missing_ok=True)

    def finish(self) -> None:
        if not self.arrays:
            raise StoreError("No data: the loader yielded no batch.")
        layers = {}
        for name, array in self.arrays.items():
            array.flush()
            info = self.state["shapes"][name]
            file = self.path / info["file"]
            layers[name] = {
                "file": info["file"],
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "pooling": self.config["pooling"][name],
                "bytes": file.stat().st_size,
                "fingerprint": file_fingerprint(file),
            }
        self.arrays = {}
        manifest = {
            "format": FORMAT_VERSION,
            "complete": True,
            "config": self.config,
            "layers": layers,
            "n_samples": self.config["n_samples"],
            "model_fingerprint": self.config["model_fingerprint"],
            "data_fingerprint": combine([fp for _, fp in self.state["batches"]]),
            # per batch, so that sharded stores merge into the single-process fingerprint
            "batch_fingerprints": [fp for _, fp in self.state["batches"]],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        recorded = {k: sorted(v) for k, v in self.state["nonfinite"].items() if v}
        if recorded:
            manifest["nonfinite"] = recorded
            logger.warning("the store at %s holds NaN/Inf rows: %s", self.path,
                           {k: len(v) for k, v in recorded.items()})
        write_json_atomic(self.path / MANIFEST, manifest)
        (self.path / PROGRESS).unlink(missing_ok=True)


def _merged_fingerprint(path: Path) -> str | None:
    """The shards fingerprint of the merged store at ``path`` (None: none, or unreadable)."""
    if not (path / MANIFEST).exists():
        return None
    try:
        return StoreReader(path, verify=False).manifest.get("shards_fingerprint")
    except StoreError:
        return None


def _extract_sharded(model: nn.Module, data: Any, layers: Any, path: Path, rank: int, world: int,
                     batch_size: int, overwrite: bool, kwargs: dict[str, Any]) -> Path:
    """One rank's part of an extraction with ``shard=(rank, world)`` (see
    :mod:`latentsurgeon.activations.sharding`).

    Returns the merged store's path, or (outside a process group, while other shards are
    missing) this rank's shard's.
    """
    mine = shard_path(path, rank, world)
    extract_store(model, shard_loader(data, batch_size, rank, world), layers, mine,
                  overwrite=overwrite, shard=(0, 1), batch_size=batch_size, **kwargs)
    barrier()  # every shard complete
    # In a process group rank 0 merges; without one (shards run by hand, one after another),
    # whichever rank finds every shard complete merges.
    shards = [shard_path(path, r, world) for r in range(world)]
    if in_process_group():
        merge_here = rank == 0
    else:
        merge_here = all((s / MANIFEST).exists() for s in shards)
    wanted = None
    if merge_here:
        wanted = shards_fingerprint([StoreReader(s, verify=False).manifest for s in shards])
        if _merged_fingerprint(path) != wanted:
            merge_shards(path, world)
    barrier()  # the merged store exists for everyone
    # The merged store at ``path`` counts only if it was merged from these very shards (an older
    # merge stays readable, untouched, until a new one replaces it).
    if wanted is None and all((s / MANIFEST).exists() for s in shards):
        wanted = shards_fingerprint([StoreReader(s, verify=False).manifest for s in shards])
    if wanted is not None and _merged_fingerprint(path) == wanted:
        return path
    return mine
