"""ActivationStore: layer activations over a dataset, in memory-mapped files on disk.

:meth:`ActivationStore.extract` writes a store (:mod:`latentsurgeon.activations.store_writer`);
``ActivationStore(path)`` opens one (:class:`~latentsurgeon.activations.store_reader.StoreReader`:
every read and check). The layout is :mod:`latentsurgeon.activations.store_format`'s. Peak memory
while writing is one batch of activations, whatever the dataset size; a killed extraction resumes
at the last committed batch with bit-identical arrays; ``overwrite=True`` replaces a store
atomically. A store whose files were altered, or that belongs to other weights or other data, is
refused with :class:`~latentsurgeon.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon.activations.batching import DataLike
from latentsurgeon.activations.store_format import FORMAT_VERSION, MANIFEST, PROGRESS
from latentsurgeon.activations.store_reader import StoreReader
from latentsurgeon.activations.store_writer import extract_store
from latentsurgeon.hooks.resolve import LayerSelector

__all__ = ["FORMAT_VERSION", "MANIFEST", "PROGRESS", "ActivationStore"]


class ActivationStore(StoreReader):
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
        written = extract_store(
            model, data, layers, path, pooling=pooling, batch_size=batch_size, device=device,
            dtype=dtype, resume=resume, overwrite=overwrite, forward_fn=forward_fn,
            progress=progress, verify=verify, shard=shard, stop_early=stop_early,
            nonfinite=nonfinite)
        return cls(written, verify=False)
