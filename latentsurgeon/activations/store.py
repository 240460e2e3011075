"""ActivationStore: layer activations over a dataset, streamed to memory-mapped files on disk.

Layout of a store directory::

    manifest.json      written last, atomically: the store is complete when (and only when) it exists
    progress.json      during extraction: configuration, samples done, per-batch fingerprints
    000-features.0.npy one ``.npy`` file per layer, shape ``(n_samples, *pooled_shape)``

Peak memory is one batch of activations, whatever the dataset size. A run that is killed resumes at
the last committed batch and yields bit-identical arrays (same model, same data order). A store whose
files were altered, or that belongs to other weights or other data, is refused with
:class:`~latentsurgeon.errors.StoreError`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
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
    loader_length,
    model_device,
    to_device,
)
from latentsurgeon.activations.fingerprint import (
    combine,
    file_fingerprint,
    model_fingerprint,
    tensor_fingerprint,
)
from latentsurgeon.activations.pooling import check_pooling, pool
from latentsurgeon.activations.sharding import current_shard, extract_sharded
from latentsurgeon.errors import StoreError
from latentsurgeon.hooks import HookGroup, preserve_model_state, primary_tensor, resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector

logger = logging.getLogger("latentsurgeon")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}


def _file_name(index: int, layer: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", layer) or "root"
    return f"{index:03d}-{safe}.npy"


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path) as handle:
            payload = json.load(handle)
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise StoreError(f"The {what} {path} is damaged or unreadable ({exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise StoreError(f"The {what} {path} is not a latentsurgeon store (format {FORMAT_VERSION}).")
    return payload


def _check_manifest(path: Path, manifest: dict) -> None:
    """Raise :class:`StoreError` (not ``KeyError``) when a manifest lacks a field readers need."""
    fields = {"layers": dict, "n_samples": int, "model_fingerprint": str,
              "data_fingerprint": str, "config": dict}
    entry_fields = {"file": str, "shape": list, "dtype": str, "bytes": int, "fingerprint": str,
                    "pooling": str}
    config_fields = ("layers", "pooling", "dtype", "model_fingerprint", "n_samples")
    bad = [k for k, t in fields.items() if not isinstance(manifest.get(k), t)]
    if not bad:
        bad += [k for k in config_fields if k not in manifest["config"]]
        for layer, entry in manifest["layers"].items():
            if not isinstance(entry, dict):
                bad.append(layer)
                continue
            bad += [f"{layer}.{k}" for k, t in entry_fields.items()
                    if not isinstance(entry.get(k), t)]
    if bad:
        raise StoreError(f"The manifest of the store at {path} is damaged (bad or missing fields: "
                         f"{', '.join(bad)}). Extract it again with overwrite=True.")


def _batch_fingerprint(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return tensor_fingerprint(inputs)
    if isinstance(inputs, Mapping):
        return combine([k + tensor_fingerprint(v) for k, v in sorted(inputs.items())
                        if isinstance(v, torch.Tensor)])
    return combine([tensor_fingerprint(v) for v in inputs if isinstance(v, torch.Tensor)])


class ActivationStore:
    """A complete, verified store opened for reading.

    Create one with :meth:`ActivationStore.extract`; open an existing one with
    ``ActivationStore(path, model=model)``.

    Args:
        path: the store directory.
        model: if given, the store must have been extracted from these exact weights.
        verify: check every file's content fingerprint (reads the files once). With ``False`` only
            sizes and headers are checked.

    Raises:
        StoreError: the store is incomplete, damaged, or was made from another model.
    """

    def __init__(self, path: str | Path, *, model: nn.Module | None = None,
                 verify: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            if (self.path / PROGRESS).exists():
                done = _read_json(self.path / PROGRESS, "progress file").get("n_done", 0)
                raise StoreError(
                    f"The store at {self.path} is incomplete ({done} samples written); run "
                    "ActivationStore.extract(...) again with the same model and data to resume it."
                )
            raise StoreError(f"No activation store at {self.path} (no {MANIFEST}).")
        self.manifest = _read_json(manifest_path, "manifest")
        _check_manifest(self.path, self.manifest)
        if not self.manifest.get("complete"):
            raise StoreError(f"The store at {self.path} is marked incomplete.")
        self._check_files(verify)
        if model is not None:
            self.check_model(model)

    # -- properties ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    @property
    def n_samples(self) -> int:
        return int(self.manifest["n_samples"])

    def shape(self, layer: str) -> tuple[int, ...]:
        """Full array shape ``(n_samples, *per_sample)`` of ``layer``."""
        return tuple(self._entry(layer)["shape"])

    def pooling(self, layer: str) -> str:
        return self._entry(layer)["pooling"]

    def _entry(self, layer: str) -> dict:
        try:
            return self.manifest["layers"][layer]
        except KeyError:
            raise StoreError(
                f"Layer {layer!r} is not in the store at {self.path}; it holds {self.layers}."
            ) from None

    # -- reading ---------------------------------------------------------------------------------
    def __getitem__(self, layer: str) -> np.ndarray:
        """A read-only memory map of ``layer``'s activations, ``(n_samples, ...)``."""
        entry = self._entry(layer)
        return np.load(self.path / entry["file"], mmap_mode="r")

    def tensor(self, layer: str, indices: Any = None) -> torch.Tensor:
        """``layer``'s activations (or the rows ``indices``) as a float tensor in memory."""
        array = self[layer]
        rows = array if indices is None else array[indices]
        return torch.from_numpy(np.array(rows, dtype=array.dtype, copy=True))

    def iter_batches(self, layer: str, batch_size: int = 1024) -> Iterator[torch.Tensor]:
        """Stream ``layer`` in batches (constant memory)."""
        array = self[layer]
        for start in range(0, len(array), batch_size):
            yield torch.from_numpy(np.array(array[start:start + batch_size], copy=True))

    # -- checks ----------------------------------------------------------------------------------
    def _check_files(self, verify: bool) -> None:
        for layer, entry in self.manifest["layers"].items():
            file = self.path / entry["file"]
            if not file.exists():
                raise StoreError(f"The store at {self.path} is damaged: {file.name} is missing.")
            try:
                array = np.load(file, mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise StoreError(f"The store at {self.path} is damaged: {file.name}: {exc}") from exc
            if tuple(array.shape) != tuple(entry["shape"]) or str(array.dtype) != entry["dtype"]:
                raise StoreError(
                    f"The store at {self.path} is damaged: {file.name} holds {array.dtype}"
                    f"{tuple(array.shape)}, the manifest says {entry['dtype']}{tuple(entry['shape'])}."
                )
            if file.stat().st_size != entry["bytes"]:
                raise StoreError(
                    f"The store at {self.path} is damaged: {file.name} has {file.stat().st_size} "
                    f"bytes, expected {entry['bytes']}."
                )
            if verify and file_fingerprint(file) != entry["fingerprint"]:
                raise StoreError(
                    f"The store at {self.path} is damaged: the content of {file.name} (layer "
                    f"{layer!r}) does not match its recorded fingerprint. Extract it again with "
                    "overwrite=True."
                )

    def verify(self) -> None:
        """Re-check every file against the manifest; raises :class:`StoreError` if damaged."""
        self._check_files(verify=True)

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`StoreError` unless the store was extracted from ``model``'s weights."""
        found = model_fingerprint(model)
        if found != self.manifest["model_fingerprint"]:
            raise StoreError(
                f"The store at {self.path} was extracted from other weights (fingerprint "
                f"{self.manifest['model_fingerprint']}, this model has {found}). Extract again with "
                "overwrite=True, or open it without model= to read it anyway."
            )

    def summary(self) -> str:
        """A short human-readable description (layers, shapes, pooling, size on disk)."""
        lines = [f"ActivationStore at {self.path}: {self.n_samples} samples, "
                 f"{len(self.layers)} layers, model {self.manifest['model_fingerprint'][:12]}"]
        for layer, entry in self.manifest["layers"].items():
            mib = entry["bytes"] / 2**20
            lines.append(f"  {layer:<24} {str(tuple(entry['shape'])):<20} {entry['dtype']:<8} "
                         f"pooling={entry['pooling']:<8} {mib:8.2f} MiB")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, n_samples={self.n_samples}, layers={self.layers})"

    # -- extraction ------------------------------------------------------------------------------
    @classmethod
    def extract(
        cls,
        model: nn.Module,
        data: DataLike,
        layers: LayerSelector,
        path: str | Path,
        *,
        pooling: str | Mapping[str, str] = "none",
        batch_size: int = 64,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        resume: bool = True,
        overwrite: bool = False,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        progress: bool = True,
        verify: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> ActivationStore:
        """Run ``model`` over ``data`` once and stream the selected layers' activations to ``path``.

        Args:
            model: the network (run in eval mode under ``torch.no_grad``; its mode is restored).
            data: a DataLoader, a Dataset, a tensor ``(N, ...)`` or a tuple of tensors; the model
                input is a batch's first element. The order is kept: row ``i`` of every array is
                the ``i``-th sample the loader yields.
            layers: layer selector (names, globs, ``re:`` regexes, classes).
            path: store directory (created if missing).
            pooling: ``"max"``, ``"mean"``, ``"flatten"`` or ``"none"``, or a dict per layer.
            batch_size: used when ``data`` is not already a DataLoader.
            device: where the inputs go (default: the model's device).
            dtype: ``"float32"`` (default), ``"float16"`` or ``"float64"`` on disk.
            resume: continue an interrupted extraction at ``path`` (default). With ``False``
                a partial store is discarded and extraction starts over.
            overwrite: replace a complete or mismatching store instead of refusing it.
            forward_fn: ``forward_fn(model, inputs)`` instead of ``model(inputs)`` (e.g. to
                unpack dict inputs for a transformer).
            progress: show a progress bar over batches.
            verify: verify the file fingerprints of a store that already exists before reusing it.
            shard: ``(rank, world_size)`` for a multi-process extraction; default: the running
                ``torch.distributed`` job's (``(0, 1)`` outside one). Each rank extracts its
                contiguous block of the data into ``path/shards/`` (resumable on its own), then
                rank 0 merges the blocks, in order, into ``path``: the result equals a
                single-process store. Every rank must call ``extract`` with the same arguments.

        Returns:
            The complete :class:`ActivationStore`.

        Raises:
            StoreError: an existing store at ``path`` belongs to other weights, layers or data,
                or is damaged (pass ``overwrite=True`` to replace it).
        """
        if dtype not in _DTYPES:
            raise StoreError(f"Unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}.")
        path = Path(path)
        rank, world = current_shard() if shard is None else shard
        if world > 1:
            return extract_sharded(
                cls, model, data, layers, path, rank, world, batch_size, overwrite,
                {"pooling": pooling, "device": device, "dtype": dtype, "resume": resume,
                 "forward_fn": forward_fn, "progress": progress and rank == 0, "verify": verify})
        loader = as_loader(data, batch_size)
        names = list(resolve_layers(model, layers))
        if not isinstance(pooling, str):
            unknown = sorted(set(pooling) - set(names))
            if unknown:  # a typo would silently store that layer unpooled
                raise StoreError(f"pooling names layers that are not extracted: {unknown}; "
                                 f"the layers are {names}.")
        poolings = {n: check_pooling(pooling if isinstance(pooling, str) else pooling.get(n, "none"))
                    for n in names}
        n_samples = loader_length(loader)
        config = {
            "layers": names,
            "pooling": poolings,
            "dtype": dtype,
            "model_fingerprint": model_fingerprint(model),
            "n_samples": n_samples,
        }
        forward = forward_fn or (lambda m, x: m(x))
        device = model_device(model) if device is None else torch.device(device)

        if (path / MANIFEST).exists() and not overwrite:
            return cls._reuse(path, config, loader, verify)
        if overwrite or not resume:
            cls._clear(path)
        path.mkdir(parents=True, exist_ok=True)
        state = cls._load_progress(path, config)

        writer = _StoreWriter(path, config, state)
        with preserve_model_state(model), HookGroup() as group, torch.no_grad():
            model.eval()
            captured: dict[str, torch.Tensor] = {}

            def record(name: str, module: nn.Module, inputs: tuple, output: object) -> None:
                # Pool and copy now: a later in-place op (``ReLU(inplace=True)``) would otherwise
                # change the output before it is written.
                tensor = primary_tensor(output).detach()
                captured[name] = pool(tensor, poolings[name]).clone()

            group.forward(model, names, record)
            bar = tqdm(loader, desc="extracting activations", unit="batch", disable=not progress,
                       leave=False)
            position = 0
            for batch_index, batch in enumerate(bar):
                inputs = batch_inputs(batch)
                fingerprint = _batch_fingerprint(inputs)
                size = len(primary_tensor(inputs) if not isinstance(inputs, Mapping)
                           else next(iter(inputs.values())))
                if batch_index < len(state["batches"]):
                    recorded_end, recorded_fp = state["batches"][batch_index]
                    if recorded_fp != fingerprint or recorded_end != position + size:
                        raise StoreError(
                            f"Cannot resume the store at {path}: batch {batch_index} differs from "
                            "the interrupted run's (the data, their order or the batch size "
                            "changed; a shuffling loader cannot be resumed). Use overwrite=True to start over."
                        )
                    position += size
                    continue
                captured.clear()
                forward(model, to_device(inputs, device))
                pooled = {}
                for name in names:
                    if name not in captured:
                        raise StoreError(f"Layer {name!r} was not run by the forward pass.")
                    pooled[name] = captured[name].to("cpu")
                writer.write(position, pooled, fingerprint)
                position += size
            bar.close()
        if position != n_samples:
            raise StoreError(f"The data yielded {position} samples, {n_samples} were expected.")
        writer.finish()
        return cls(path, verify=False)

    @classmethod
    def _reuse(cls, path: Path, config: dict, loader: Any, verify: bool) -> ActivationStore:
        store = cls(path, verify=verify)
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
        fingerprint = combine([_batch_fingerprint(batch_inputs(b)) for b in loader])
        if fingerprint != manifest["data_fingerprint"]:
            raise StoreError(f"A complete store at {path} was extracted from other data, in another "
                             "order, or in other batches (data are compared batch by batch: keep "
                             "the batch size); pass overwrite=True to replace it.")
        logger.info("reusing the complete activation store at %s", path)
        return store

    @staticmethod
    def _clear(path: Path) -> None:
        if not path.exists():
            return
        known = {MANIFEST, PROGRESS}
        for child in path.iterdir():
            if child.name in known or child.suffix == ".npy" or child.name.endswith(".tmp"):
                child.unlink()
            elif child.is_dir():
                shutil.rmtree(child)

    @staticmethod
    def _load_progress(path: Path, config: dict) -> dict:
        progress_path = path / PROGRESS
        if not progress_path.exists():
            return {"format": FORMAT_VERSION, "config": config, "n_done": 0, "batches": [],
                    "shapes": None, "checksums": []}
        state = _read_json(progress_path, "progress file")
        fields = {"config": dict, "batches": list, "checksums": list, "n_done": int}
        if (any(not isinstance(state.get(k), t) for k, t in fields.items())
                or len(state["batches"]) != len(state["checksums"])
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
        if _rows_checksum(arrays, start, end) != checksum:
            raise StoreError(
                f"Cannot resume the store at {path}: rows {start}..{end} were damaged after they "
                "were written. Pass overwrite=True to start over."
            )
        start = end


def _rows_checksum(arrays: Mapping[str, np.ndarray], start: int, end: int) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name][start:end]).tobytes())
    return digest.hexdigest()


class _StoreWriter:
    """Owns the memory maps and the progress file during one extraction."""

    def __init__(self, path: Path, config: dict, state: dict) -> None:
        self.path = path
        self.config = config
        self.state = state
        self.arrays: dict[str, np.memmap] = {}
        if state["shapes"] is not None:
            for name, info in state["shapes"].items():
                self.arrays[name] = np.load(path / info["file"], mmap_mode="r+")

    def _allocate(self, pooled: Mapping[str, torch.Tensor]) -> None:
        shapes = {}
        for index, name in enumerate(self.config["layers"]):
            file = _file_name(index, name)
            shape = (self.config["n_samples"], *pooled[name].shape[1:])
            self.arrays[name] = np.lib.format.open_memmap(
                self.path / file, mode="w+", dtype=_DTYPES[self.config["dtype"]], shape=shape)
            shapes[name] = {"file": file, "shape": list(shape)}
        self.state["shapes"] = shapes

    def write(self, start: int, pooled: Mapping[str, torch.Tensor], fingerprint: str) -> None:
        if not self.arrays:
            self._allocate(pooled)
        end = start + len(next(iter(pooled.values())))
        for name, value in pooled.items():
            expected = tuple(self.arrays[name].shape[1:])
            if tuple(value.shape[1:]) != expected:
                raise StoreError(
                    f"Layer {name!r} produced per-sample shape {tuple(value.shape[1:])} but the "
                    f"store holds {expected}; inputs of varying size need pooling='max' or 'mean'."
                )
            self.arrays[name][start:end] = value.numpy()
        # The rows are in the shared mapping (the page cache) before the batch is recorded as
        # done, so a killed process never skips a batch on resume. Syncing to the disk every batch
        # would only guard against power cuts and costs an msync per batch; rows damaged that way
        # are caught by the per-batch checksums when resuming.
        self.state["batches"].append([end, fingerprint])
        self.state["checksums"].append(_rows_checksum(self.arrays, start, end))
        self.state["n_done"] = end
        write_json_atomic(self.path / PROGRESS, self.state, durable=False)

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
        del self.arrays
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
        write_json_atomic(self.path / MANIFEST, manifest)
        (self.path / PROGRESS).unlink(missing_ok=True)
