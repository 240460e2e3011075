"""scikit-learn's bundled digits, upsampled to 16x16, and a seeded stratified split."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from latentsurgeon.errors import InvalidParameterError

__all__ = ["load_digits16", "stratified_split", "N_CLASSES"]

N_CLASSES = 10


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported lazily: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.ascontiguousarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.ascontiguousarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits16(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 scikit-learn digits, upsampled and scaled to ``[0, 1]``.

    The 8x8 scans (values 0..16) are divided by 16 and resized bilinearly
    (``align_corners=False``). Nothing is downloaded: the data ship with scikit-learn.

    Args:
        size: side length of the output images (16 by default, hence the name).

    Returns:
        ``images`` of shape ``(1797, 1, size, size)``, float32 in ``[0, 1]``, and
        ``labels`` of shape ``(1797,)``, int64 in ``0..9``. Fresh tensors on every call.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise InvalidParameterError(f"size must be an int >= 8, got {size!r}")
    raw_images, raw_labels = _raw_digits()
    images = torch.tensor(raw_images).unsqueeze(1) / 16.0
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    # Bilinear weights are convex, so this only removes float rounding at the ends.
    images = images.clamp_(0.0, 1.0).contiguous()
    return images, torch.tensor(raw_labels)


def stratified_split(
    labels: torch.Tensor, n_test: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into train and test, keeping class proportions.

    Each class gives ``floor(n_c * n_test / N)`` samples to the test split; the remaining
    test slots go to the classes with the largest fractional parts (ties: lower class
    first), so the test split has exactly ``n_test`` samples. Implemented with torch's
    generator rather than scikit-learn so that the split is a function of the seed only.

    Args:
        labels: ``(N,)`` integer class labels.
        n_test: number of test samples.
        generator: source of randomness (seeded by the caller).

    Returns:
        ``(train_idx, test_idx)``, both sorted int64 index tensors.
    """
    labels = labels.long()
    n = labels.numel()
    classes, counts = torch.unique(labels, return_counts=True)
    if not 0 < n_test < n:
        raise InvalidParameterError(f"n_test must lie in 1..{n - 1}, got {n_test}")
    exact = counts.double() * n_test / n
    quota = exact.floor().long()
    short = n_test - int(quota.sum())
    if short > 0:
        # Stable sort keeps lower classes first among equal remainders.
        order = torch.sort(-(exact - quota.double()), stable=True).indices
        quota[order[:short]] += 1
    if bool((quota < 1).any()) or bool((quota > counts - 1).any()):
        raise InvalidParameterError(
            f"n_test={n_test} leaves some class without a training or a test sample; "
            f"choose n_test between about {len(classes)} and {n - len(classes)}"
        )
    train_parts, test_parts = [], []
    for cls, q in zip(classes.tolist(), quota.tolist(), strict=True):  # one iteration per class
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        test_parts.append(idx[:q])
        train_parts.append(idx[q:])
    train_idx = torch.sort(torch.cat(train_parts)).values
    test_idx = torch.sort(torch.cat(test_parts)).values
    return train_idx, test_idx
