"""One way to turn what users pass (tensors, datasets, loaders) into batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from latentsurgeon.errors import LatentSurgeonError

DataLike = Any  # Tensor | tuple[Tensor, ...] | Dataset | DataLoader


def as_loader(data: DataLike, batch_size: int = 64, *, shuffle: bool = False,
              seed: int | None = None) -> DataLoader:
    """A ``DataLoader`` over ``data``: a loader is returned as is; a tensor or a tuple of tensors
    becomes a ``TensorDataset``; a ``Dataset`` is wrapped with ``batch_size``."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, torch.Tensor):
        data = TensorDataset(data)
    elif isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        lengths = {len(t) for t in data}
        if len(lengths) != 1:
            raise LatentSurgeonError(
                f"Tensors given together must have the same length; got lengths {sorted(lengths)}."
            )
        data = TensorDataset(*data)
    elif hasattr(data, "dataset") and callable(data.dataset):  # e.g. DecoySplit
        data = data.dataset()
    if not isinstance(data, Dataset):
        raise TypeError(
            "Expected a Tensor, a tuple of Tensors, a Dataset or a DataLoader; "
            f"got {type(data).__name__}."
        )
    generator = None
    if shuffle:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


def batch_inputs(batch: Any) -> Any:
    """The model input of a batch: the first element of a tuple/list batch, else the batch."""
    if isinstance(batch, (tuple, list)) and not isinstance(batch, torch.Tensor):
        return batch[0]
    return batch


def loader_length(loader: DataLoader) -> int:
    """Number of samples one pass over ``loader`` yields (sized datasets only)."""
    if isinstance(loader.dataset, IterableDataset):
        raise LatentSurgeonError(
            "This needs to know the number of samples in advance; an IterableDataset has no length."
        )
    if loader.batch_size is None:
        if loader.batch_sampler is None:  # automatic batching off: each item is a whole batch
            raise LatentSurgeonError(
                "This needs to know the number of samples in advance; a DataLoader with "
                "batch_size=None (each item a whole batch) does not say it. Pass the Dataset of "
                "samples with a batch_size, or a DataLoader that batches them."
            )
        return sum(len(b) for b in loader.batch_sampler)  # type: ignore[arg-type]
    n = len(loader.sampler)  # type: ignore[arg-type]
    return (n // loader.batch_size) * loader.batch_size if loader.drop_last else n


_CPU = torch.device("cpu")


def model_device(model: torch.nn.Module,
                 default: torch.device | None = _CPU) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``default`` for a model with
    neither (CPU unless told otherwise; ``None`` lets callers leave inputs where they are)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return default


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors of a dict/sequence, to ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs
