"""Sharded extraction: each process of a ``torch.distributed`` job extracts one block of the data.

The work is split by whole batches of the single-process batch sequence: with ``B`` batches of
``batch_size`` samples, rank ``r`` of ``W`` takes batches ``[r*B//W, (r+1)*B//W)``, so every batch is
computed with exactly the composition and shape a single process would give it (CPU kernels round
differently for different batch shapes; a split by samples would change the last bits). Each rank
writes its block as an ordinary (resumable, verified) store under ``path/shards/``; once every rank
is done, rank 0 merges the shards, in order, into the store at ``path`` and writes its manifest. The
merged store is bit-identical to the one a single process writes, so every reader works on it
unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, RandomSampler, Subset

from latentsurgeon._io import write_json_atomic
from latentsurgeon.activations.batching import as_loader, loader_length
from latentsurgeon.activations.fingerprint import combine, file_fingerprint
from latentsurgeon.activations.store_format import FORMAT_VERSION, MANIFEST
from latentsurgeon.activations.store_reader import StoreReader
from latentsurgeon.errors import StoreError

logger = logging.getLogger("latentsurgeon")
SHARDS = "shards"


def current_shard() -> tuple[int, int]:
    """``(rank, world_size)`` of the running ``torch.distributed`` job, ``(0, 1)`` outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_path(path: Path, rank: int, world: int) -> Path:
    return Path(path) / SHARDS / f"rank-{rank:03d}-of-{world:03d}"


def batch_block(n_samples: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Sample range ``[start, end)`` of rank ``rank``'s block of whole batches (see module doc)."""
    n_batches = -(-n_samples // batch_size)
    first, last = rank * n_batches // world, (rank + 1) * n_batches // world
    return min(first * batch_size, n_samples), min(last * batch_size, n_samples)


def shard_loader(data: Any, batch_size: int, rank: int, world: int) -> DataLoader:
    """The loader of rank ``rank``'s block of whole batches of ``data`` (same batch size and
    workers), so each batch holds the samples it holds in a single-process run."""
    loader = as_loader(data, batch_size)
    if isinstance(loader.sampler, RandomSampler) or loader.batch_size is None:
        raise StoreError("Sharded extraction needs data in a fixed order with a fixed batch size "
                         "(no shuffling loader, no custom batch sampler).")
    if loader.drop_last:
        raise StoreError("Sharded extraction cannot use a loader with drop_last=True (the dropped "
                         "samples would depend on the number of ranks).")
    start, end = batch_block(loader_length(loader), loader.batch_size, rank, world)
    return DataLoader(Subset(loader.dataset, range(start, end)), batch_size=loader.batch_size,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn)


def shards_fingerprint(manifests: list[dict]) -> str:
    """One fingerprint of a list of shard manifests: their weights, data and file contents."""
    parts = []
    for manifest in manifests:
        files = [entry["fingerprint"] for _, entry in sorted(manifest["layers"].items())]
        parts.append(combine([manifest["model_fingerprint"], manifest["data_fingerprint"], *files]))
    return combine(parts)


def merge_shards(path: str | Path, world: int, *, chunk: int = 4096) -> None:
    """Concatenate the complete shard stores of a ``world``-process extraction into ``path``.

    Streams rows in chunks (constant memory); the manifest is written last, atomically.

    Raises:
        StoreError: a shard is missing, damaged, or was extracted with another model, layers,
            pooling or dtype than the others.
    """
    path = Path(path)
    shards = [StoreReader(shard_path(path, r, world)) for r in range(world)]
    first = shards[0].manifest["config"]
    for rank, shard in enumerate(shards[1:], start=1):
        config = shard.manifest["config"]
        for key in ("layers", "pooling", "dtype", "model_fingerprint"):
            if config[key] != first[key]:
                raise StoreError(f"Shard {rank} at {shard.path} was extracted with another "
                                 f"{key.replace('_', ' ')} than shard 0.")
    total = sum(s.n_samples for s in shards)
    if any(not isinstance(s.manifest.get("batch_fingerprints"), list) for s in shards):
        raise StoreError("A shard's manifest lacks its batch fingerprints (written by an older "
                         "version); extract the shards again with overwrite=True.")
    batch_fps = [fp for s in shards for fp in s.manifest["batch_fingerprints"]]
    fingerprint = shards_fingerprint([s.manifest for s in shards])
    # New files under new names; the manifest, replaced atomically, switches to them, and only
    # then are the old ones removed: until the merge is complete the old store stays readable.
    before = {p.name for p in path.glob("*.npy")}
    layers = {}
    for layer in first["layers"]:
        entry = shards[0].manifest["layers"][layer]
        file = entry["file"]
        if file in before:
            file = f"{Path(file).stem}.{fingerprint[:12]}.npy"
        shape = (total, *entry["shape"][1:])
        out = np.lib.format.open_memmap(path / file, mode="w+", dtype=np.dtype(entry["dtype"]),
                                        shape=shape)
        row = 0
        for shard in shards:
            array = shard[layer]
            for start in range(0, len(array), chunk):
                block = array[start:start + chunk]
                out[row:row + len(block)] = block
                row += len(block)
        out.flush()
        del out
        layers[layer] = {"file": file, "shape": list(shape), "dtype": entry["dtype"],
                         "pooling": entry["pooling"], "bytes": (path / file).stat().st_size,
                         "fingerprint": file_fingerprint(path / file)}
    manifest = {
        "format": FORMAT_VERSION,
        "complete": True,
        "config": {**first, "n_samples": total},
        "layers": layers,
        "n_samples": total,
        "model_fingerprint": first["model_fingerprint"],
        "data_fingerprint": combine(batch_fps),
        "batch_fingerprints": batch_fps,
        "shards": [str(s.path.relative_to(path)) for s in shards],
        "shards_fingerprint": fingerprint,
        "created": shards[-1].manifest.get("created", ""),
    }
    nonfinite: dict[str, list[int]] = {}
    offset = 0
    for shard in shards:
        for layer, rows in shard.manifest.get("nonfinite", {}).items():
            nonfinite.setdefault(layer, []).extend(offset + int(r) for r in rows)
        offset += shard.n_samples
    if nonfinite:
        manifest["nonfinite"] = nonfinite
    write_json_atomic(path / MANIFEST, manifest)
    kept = {entry["file"] for entry in layers.values()}
    for name in before - kept:
        (path / name).unlink(missing_ok=True)
    logger.info("merged %d shards (%d samples) into %s", world, total, path)


def in_process_group() -> bool:
    """Whether a ``torch.distributed`` process group is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    import torch.distributed as dist

    if in_process_group():
        dist.barrier()
