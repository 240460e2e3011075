"""ActivationStore: layer activations over a dataset, in memory-mapped files on disk (the reader).

A store is written by :meth:`ActivationStore.extract` (:mod:`latentsurgeon.activations.store_writer`)
and laid out as :mod:`latentsurgeon.activations.store_format` says. Peak memory while writing is one
batch of activations, whatever the dataset size; a killed extraction resumes at the last committed
batch with bit-identical arrays; ``overwrite=True`` replaces a store atomically. A store whose files
were altered, or that belongs to other weights or other data, is refused with
:class:`~latentsurgeon.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations.batching import DataLike
from latentsurgeon.activations.fingerprint import file_fingerprint, model_fingerprint
from latentsurgeon.activations.store_format import (
    DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS,
    check_manifest,
    read_json,
)
from latentsurgeon.errors import StoreError
from latentsurgeon.hooks.resolve import LayerSelector

__all__ = ["FORMAT_VERSION", "MANIFEST", "PROGRESS", "ActivationStore"]

_DTYPES = DTYPES  # the name older code imported


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
        StoreError: the store is missing, incomplete, damaged, or was made from another model.
    """

    def __init__(self, path: str | Path, *, model: nn.Module | None = None,
                 verify: bool = True) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"path: {self.path} is a file, not an activation store directory.")
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            if (self.path / PROGRESS).exists():
                done = read_json(self.path / PROGRESS, "progress file").get("n_done", 0)
                raise StoreError(
                    f"The store at {self.path} is incomplete ({done} samples written); run "
                    "ActivationStore.extract(...) again with the same model and data to resume it."
                )
            what = "no such directory" if not self.path.exists() else f"no {MANIFEST}"
            raise StoreError(f"No activation store at {self.path} ({what}).")
        self.manifest = read_json(manifest_path, "manifest")
        check_manifest(self.path, self.manifest)
        if not self.manifest.get("complete"):
            raise StoreError(f"The store at {self.path} is marked incomplete.")
        self._check_files(verify)
        if model is not None:
            self.check_model(model)

    # -- properties ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """The layer names, in the model's order (``named_modules()``), as they were selected."""
        return list(self.manifest["config"]["layers"])

    @property
    def n_samples(self) -> int:
        return int(self.manifest["n_samples"])

    def shape(self, layer: str) -> tuple[int, ...]:
        """Full array shape ``(n_samples, *per_sample)`` of ``layer``."""
        return tuple(self._entry(layer)["shape"])

    def pooling(self, layer: str) -> str:
        return self._entry(layer)["pooling"]

    def nonfinite_rows(self, layer: str) -> np.ndarray:
        """Rows of ``layer`` holding NaN or Inf, recorded by ``extract(..., nonfinite="record")``
        (empty otherwise: by default such rows are refused at extraction)."""
        self._entry(layer)
        return np.asarray(self.manifest.get("nonfinite", {}).get(layer, []), dtype=np.int64)

    def _entry(self, layer: str) -> dict:
        try:
            return self.manifest["layers"][layer]
        except (KeyError, TypeError):
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
        nonfinite = self.manifest.get("nonfinite", {})
        for layer in self.layers:
            entry = self.manifest["layers"][layer]
            mib = entry["bytes"] / 2**20
            bad = f"  {len(nonfinite[layer])} rows NaN/Inf" if nonfinite.get(layer) else ""
            lines.append(f"  {layer:<24} {str(tuple(entry['shape'])):<20} {entry['dtype']:<8} "
                         f"pooling={entry['pooling']:<8} {mib:8.2f} MiB{bad}")
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
        stop_early: bool = True,
        nonfinite: str = "raise",
    ) -> ActivationStore:
        """Run ``model`` over ``data`` once and stream the selected layers' activations to ``path``.

        Args:
            model: the network (run in eval mode under ``torch.no_grad``; its state is restored).
                Floating inputs are cast to the model's floating dtype (fp16/bf16 models).
            data: a DataLoader, a Dataset, a tensor ``(N, ...)`` or a tuple of tensors; the model
                input is a batch's first element. The order is kept: row ``i`` of every array is
                the ``i``-th sample the loader yields.
            layers: layer selector (names, globs, ``path:`` globs, ``re:`` regexes, classes).
                The store lists them in the model's order.
            path: store directory (created if missing).
            pooling: ``"max"``, ``"mean"``, ``"flatten"`` or ``"none"``, or a dict per layer.
            batch_size: used when ``data`` is not already a DataLoader.
            device: None or the model's device (analysis never moves the model).
            dtype: ``"float32"`` (default), ``"float16"`` or ``"float64"`` on disk.
            resume: continue an interrupted extraction at ``path`` (default). With ``False``
                a partial store is discarded and extraction starts over.
            overwrite: replace a complete or mismatching store instead of refusing it. Atomic: the
                new store is written beside the old one (``.NAME.overwrite``) and swapped in once
                complete; until then, and if the extraction fails, the old store stays as it was.
            forward_fn: ``forward_fn(model, inputs)`` instead of ``model(inputs)``
                (``model(**inputs)`` for dict inputs).
            progress: show a progress bar over batches.
            verify: verify the file fingerprints of a store that already exists before reusing it.
            shard: ``(rank, world_size)`` for a multi-process extraction; default: the running
                ``torch.distributed`` job's (``(0, 1)`` outside one). Each rank extracts its
                contiguous block of the data into ``path/shards/`` (resumable on its own), then
                rank 0 merges the blocks, in order, into ``path``: the result equals a
                single-process store. Every rank must call ``extract`` with the same arguments.
            stop_early: end each forward pass once every selected layer has produced its output
                (default; the arrays are bit-identical to whole passes). ``False`` runs the whole
                model, for later layers with side effects you need.
            nonfinite: ``"raise"`` (default): NaN or Inf activations raise
                :class:`~latentsurgeon.errors.NonFiniteError` naming the layer and rows, before
                anything of that batch is written. ``"record"``: store them and list the rows in
                the manifest (:meth:`nonfinite_rows`).

        Returns:
            The complete :class:`ActivationStore`.

        Raises:
            StoreError: an existing store at ``path`` belongs to other weights, layers or data,
                or is damaged (pass ``overwrite=True`` to replace it); ``path`` is a file or
                cannot be written.
            InvalidParameterError: a bad ``batch_size``, ``dtype``, ``nonfinite``, ``pooling``;
                a model on the ``meta`` device; integer inputs to a floating model.
            NonFiniteError: NaN/Inf activations (with ``nonfinite="raise"``).
            LayerNotFoundError: a layer selector matches nothing, or a layer does not run.
        """
        from latentsurgeon.activations.store_writer import extract_store

        return extract_store(
            cls, model, data, layers, path, pooling=pooling, batch_size=batch_size, device=device,
            dtype=dtype, resume=resume, overwrite=overwrite, forward_fn=forward_fn,
            progress=progress, verify=verify, shard=shard, stop_early=stop_early,
            nonfinite=nonfinite)
