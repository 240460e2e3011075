"""The on-disk format of an activation store, shared by its reader and its writer.

Layout of a store directory::

    manifest.json      written last, atomically: the store is complete when (and only when) it exists
    progress.json      during extraction: configuration, samples done, per-batch fingerprints
    000-features.0.npy one ``.npy`` file per layer, shape ``(n_samples, *pooled_shape)``
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentsurgeon.activations.fingerprint import combine, tensor_fingerprint
from latentsurgeon.errors import StoreError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}


def file_name(index: int, layer: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", layer) or "root"
    return f"{index:03d}-{safe}.npy"


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path) as handle:
            payload = json.load(handle)
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise StoreError(f"The {what} {path} is damaged or unreadable ({exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise StoreError(f"The {what} {path} is not a latentsurgeon store (format {FORMAT_VERSION}).")
    return payload


def check_manifest(path: Path, manifest: dict) -> None:
    """Raise :class:`StoreError` (not ``KeyError``) when a manifest lacks a field readers need."""
    fields = {"layers": dict, "n_samples": int, "model_fingerprint": str,
              "data_fingerprint": str, "config": dict}
    entry_fields = {"file": str, "shape": list, "dtype": str, "bytes": int, "fingerprint": str,
                    "pooling": str}
    config_fields = ("layers", "pooling", "dtype", "model_fingerprint", "n_samples")
    bad = [k for k, t in fields.items() if not isinstance(manifest.get(k), t)]
    if not bad:
        bad += [k for k in config_fields if k not in manifest["config"]]
        if not bad and (not isinstance(manifest["config"]["layers"], list)
                        or sorted(manifest["config"]["layers"]) != sorted(manifest["layers"])):
            bad.append("config.layers")
        for layer, entry in manifest["layers"].items():
            if not isinstance(entry, dict):
                bad.append(layer)
                continue
            bad += [f"{layer}.{k}" for k, t in entry_fields.items()
                    if not isinstance(entry.get(k), t)]
        nonfinite = manifest.get("nonfinite", {})
        if not isinstance(nonfinite, dict) or any(
                not isinstance(v, list) for v in nonfinite.values()):
            bad.append("nonfinite")
    if bad:
        raise StoreError(f"The manifest of the store at {path} is damaged (bad or missing fields: "
                         f"{', '.join(bad)}). Extract it again with overwrite=True.")


def batch_fingerprint(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return tensor_fingerprint(inputs)
    if isinstance(inputs, Mapping):
        return combine([k + tensor_fingerprint(v) for k, v in sorted(inputs.items())
                        if isinstance(v, torch.Tensor)])
    return combine([tensor_fingerprint(v) for v in inputs if isinstance(v, torch.Tensor)])


def rows_checksum(arrays: Mapping[str, np.ndarray], start: int, end: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name][start:end]).tobytes())
    return digest.hexdigest()
