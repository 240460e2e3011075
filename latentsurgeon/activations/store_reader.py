"""Reading an activation store: :class:`StoreReader`, the base of :class:`ActivationStore`.

A store is written by :meth:`ActivationStore.extract` (:mod:`latentsurgeon.activations.store_writer`)
and laid out as :mod:`latentsurgeon.activations.store_format` says. Peak memory while writing is one
batch of activations, whatever the dataset size; a killed extraction resumes at the last committed
batch with bit-identical arrays; ``overwrite=True`` replaces a store atomically. A store whose files
were altered, or that belongs to other weights or other data, is refused with
:class:`~latentsurgeon.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations.fingerprint import file_fingerprint, model_fingerprint
from latentsurgeon.activations.store_format import (
    MANIFEST,
    PROGRESS,
    check_manifest,
    read_json,
)
from latentsurgeon.errors import StoreError

__all__ = ["StoreReader"]


class StoreReader:
    """A complete, verified store opened for reading (what :class:`ActivationStore` reads with).

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
        return f"{type(self).__name__}({str(self.path)!r}, n_samples={self.n_samples}, layers={self.layers})"
