"""Content fingerprints: of a model's weights, of a batch of data, of a file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """blake2b over every parameter and buffer (name, dtype, shape, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in sorted(model.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(_tensor_bytes(value))
    return digest.hexdigest()


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """blake2b of a tensor's dtype, shape and values."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def combine(fingerprints: list[str]) -> str:
    """One fingerprint for an ordered list of fingerprints."""
    return hashlib.blake2b("".join(fingerprints).encode(), digest_size=16).hexdigest()


def file_fingerprint(path: Path, chunk: int = 1 << 22) -> str:
    """blake2b of a file's bytes, read in chunks (constant memory)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
