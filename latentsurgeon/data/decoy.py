"""Decoy digits: scikit-learn's digits with a planted shortcut, its masks and artifact labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.data.digits import N_CLASSES, load_digits16, stratified_split
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = [
    "CORNERS",
    "KINDS",
    "PATTERNS",
    "DecoyDigits",
    "DecoySplit",
    "decoy_digits",
    "default_watermark",
    "default_watermark_position",
    "watermark_pattern",
    "paste_swatch",
    "paste_watermark",
    "swatch_gray",
]

KINDS = ("watermark", "swatch")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
#: The watermark shapes :func:`watermark_pattern` draws ("square" is the default hollow square).
PATTERNS = ("square", "cross", "plus", "bar", "checker")
N_DIGITS = 1797


def _share(flags: torch.Tensor) -> float:
    # Exact Python division: float32 means print as 0.08923076838254929 in a CLI.
    return int(flags.sum()) / flags.numel() if flags.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# Splits and the dataset object
# ---------------------------------------------------------------------------------------------


@dataclass
class DecoySplit:
    """One split of a decoy dataset.

    Attributes:
        images: ``(N, 1, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64 class labels.
        artifact: ``(N,)`` bool, True where the sample carries the artifact.
        masks: ``(N, H, W)`` bool, exactly the pasted pixels (all False where
            ``artifact`` is False).
    """

    images: torch.Tensor
    labels: torch.Tensor
    artifact: torch.Tensor
    masks: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ShapeMismatchError(
                f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}"
            )
        n, _, h, w = self.images.shape
        expected = {
            "labels": (n,),
            "artifact": (n,),
            "masks": (n, h, w),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ShapeMismatchError(f"{name} must have shape {shape}, got {got}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def dataset(self) -> TensorDataset:
        """``TensorDataset(images, labels)``."""
        return TensorDataset(self.images, self.labels)

    def loader(self, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A ``DataLoader`` over ``(images, labels)``.

        Shuffling draws from a private generator seeded with ``seed``, so the order is the
        same on every call and does not touch (or depend on) torch's global RNG.
        """
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            self.dataset(), batch_size=batch_size, shuffle=shuffle, generator=generator
        )

    def __repr__(self) -> str:
        return (
            f"DecoySplit(n={len(self)}, image_shape={tuple(self.images.shape[1:])}, "
            f"artifact={int(self.artifact.sum())})"
        )


@dataclass
class DecoyDigits:
    """Digits with a planted shortcut (see :func:`decoy_digits`).

    Attributes:
        kind: ``"watermark"`` or ``"swatch"``.
        train: training images with the shortcut planted.
        train_clean: the same training images (same order) without any artifact.
        test: clean test images.
        poisoned: the same test images (same order) carrying the artifact.
        shortcut_class: the class the watermark is planted on; None for swatches.
        seed: the seed everything was drawn from.
        params: the settings used to build the artifact (pattern, position, sizes,
            fraction), so that other code can paste the identical artifact on new inputs.
    """

    kind: str
    train: DecoySplit
    train_clean: DecoySplit
    test: DecoySplit
    poisoned: DecoySplit
    shortcut_class: int | None
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts and fractions as plain Python values (JSON-serialisable)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "seed": self.seed,
            "shortcut_class": self.shortcut_class,
            "image_size": int(self.train.images.shape[-1]),
            "n_train": len(self.train),
            "n_test": len(self.test),
            "n_classes": N_CLASSES,
            "train_class_counts": torch.bincount(self.train.labels, minlength=N_CLASSES).tolist(),
            "test_class_counts": torch.bincount(self.test.labels, minlength=N_CLASSES).tolist(),
            "train_artifact": int(self.train.artifact.sum()),
            "train_artifact_fraction": _share(self.train.artifact),
            "poisoned_artifact_fraction": _share(self.poisoned.artifact),
        }
        if self.shortcut_class is not None:
            in_class = self.train.labels == self.shortcut_class
            out["shortcut_class_artifact_fraction"] = _share(self.train.artifact[in_class])
            out["other_classes_artifact_fraction"] = _share(self.train.artifact[~in_class])
        for key, value in self.params.items():
            out[key] = value.tolist() if isinstance(value, torch.Tensor) else value
        return out

    def correction_data(self) -> DecoySplit:
        """The training split as every correction reads it: images, labels, artifact flags and
        masks of where the shortcut sits.

        For the watermark the masks mark its one fixed region on *every* training image (RRR
        penalises input gradients there whether or not an image carries it: the recipe measured
        in ``docs/correct.md``; the split's own masks mark only the watermarked images). For
        swatches, whose corner varies per image, they are the split's own masks.
        """
        train = self.train
        if self.kind != "watermark":
            return train
        region = self.poisoned.masks[0]  # every poisoned test image carries the watermark
        masks = region.expand(len(train), *region.shape).clone()
        return DecoySplit(train.images, train.labels, train.artifact, masks)

    def __repr__(self) -> str:
        return (
            f"DecoyDigits(kind={self.kind!r}, seed={self.seed}, "
            f"shortcut_class={self.shortcut_class}, train={len(self.train)}, "
            f"test={len(self.test)})"
        )


# ---------------------------------------------------------------------------------------------
# Pasting artifacts (vectorised over the batch)
# ---------------------------------------------------------------------------------------------


def default_watermark(patch_size: int = 3) -> torch.Tensor:
    """A ``(patch_size, patch_size)`` hollow square: a frame of 1.0 around 0.0.

    For 3x3 this is eight white pixels around a black centre. The structure matters: the
    pattern is not a uniform blob a digit stroke could imitate, and pasting it changes
    pixels whether the spot was blank or inked. (Sizes 1 and 2 have no inside: all ones.)
    """
    _check_int("patch_size", patch_size, low=1)
    pattern = torch.ones(patch_size, patch_size)
    pattern[1:-1, 1:-1] = 0.0
    return pattern


def watermark_pattern(name: str = "square", patch_size: int = 3) -> torch.Tensor:
    """A ``(patch_size, patch_size)`` watermark of one of :data:`PATTERNS`: ``"square"`` (the
    hollow square of :func:`default_watermark`), ``"cross"`` (both diagonals), ``"plus"`` (the
    middle row and column), ``"bar"`` (the middle row only, a horizontal dash) or
    ``"checker"`` (alternating pixels, the top-left one black: at 3x3 the four edge centres)."""
    if name not in PATTERNS:
        raise InvalidParameterError(
            f"pattern must be one of {', '.join(PATTERNS)}; got {name!r}")
    _check_int("patch_size", patch_size, low=1)
    if name == "square":
        return default_watermark(patch_size)
    idx = torch.arange(patch_size)
    rows, cols = idx[:, None], idx[None, :]
    mid = patch_size // 2
    if name == "cross":
        shape = (rows == cols) | (rows + cols == patch_size - 1)
    elif name == "plus":
        shape = (rows == mid) | (cols == mid)
    elif name == "bar":
        shape = (rows == mid).expand(patch_size, patch_size)
    else:
        shape = (rows + cols) % 2 == 1
    return shape.float()


def default_watermark_position(image_size: int, patch_size: int) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the default watermark: near the bottom-left corner.

    At 16x16 with a 3x3 patch this is rows 11..13, cols 1..3, a region where the digits
    have little ink (mean intensity ~0.07). Measured with ``DigitCNN`` (15 epochs, Adam
    1e-3, batch 64, seeds 0..5), the hollow square there costs 21 to 34 points of
    accuracy on poisoned test data, most of it (19 to 29 points) predictions flipped to
    the shortcut class; a model trained on clean digits loses 5 to 9 points on the same
    poisoned images (the patch covers some strokes). The same pattern at the bottom-right
    (rows 12..14) overwrites strokes and mostly damages digits instead, and touching the
    image border (col 0 or row 15) gives a shortcut the network often ignores (gaps of 6
    to 24 points).
    """
    return (max(0, image_size - patch_size - 2), min(1, image_size - patch_size))


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ShapeMismatchError(f"images must be a (N, C, H, W) tensor, got {shape}")


def paste_watermark(
    images: torch.Tensor,
    *,
    pattern: torch.Tensor | None = None,
    position: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the same pattern at the same place on every image.

    Args:
        images: ``(N, C, H, W)`` float images; not modified.
        pattern: ``(h, w)`` values in ``[0, 1]`` written into every channel; default
            :func:`default_watermark` ``(3)``.
        position: ``(row, col)`` of the pattern's top-left pixel; default
            :func:`default_watermark_position`.

    Returns:
        ``(pasted, masks)``: a new ``(N, C, H, W)`` tensor and ``(N, H, W)`` bool masks that
        are True on the whole pasted region (including pattern pixels that happen to equal
        the pixel they replace).
    """
    _check_images(images)
    n, _, height, width = images.shape
    if pattern is None:
        pattern = default_watermark(3)
    pattern = torch.as_tensor(pattern)
    if pattern.dim() != 2:
        raise ShapeMismatchError(f"pattern must be (h, w), got shape {tuple(pattern.shape)}")
    if pattern.numel() and (pattern.min() < 0 or pattern.max() > 1):
        raise InvalidParameterError("pattern values must lie in [0, 1]")
    ph, pw = pattern.shape
    if position is None:
        position = default_watermark_position(height, ph)
    row, col = (int(v) for v in position)
    if row < 0 or col < 0 or row + ph > height or col + pw > width:
        raise InvalidParameterError(
            f"a {ph}x{pw} pattern at position {(row, col)} does not fit in a "
            f"{height}x{width} image (rows 0..{height - ph}, cols 0..{width - pw} allowed)"
        )
    out = images.clone()
    out[:, :, row : row + ph, col : col + pw] = pattern.to(device=images.device, dtype=images.dtype)
    masks = torch.zeros(n, height, width, dtype=torch.bool, device=images.device)
    masks[:, row : row + ph, col : col + pw] = True
    return out, masks


def swatch_gray(labels: torch.Tensor) -> torch.Tensor:
    """Ross et al.'s class code: gray level ``(255 - 25 * y) / 255``, from 1.0 (y=0) down."""
    return (255.0 - 25.0 * labels.to(torch.float32)) / 255.0


def _corner_index(corners: torch.Tensor | int | str | Sequence[int], n: int) -> torch.Tensor:
    if isinstance(corners, str):
        if corners not in CORNERS:
            raise InvalidParameterError(f"unknown corner {corners!r}; valid corners: {', '.join(CORNERS)}")
        corners = CORNERS.index(corners)
    idx = torch.as_tensor(corners, dtype=torch.long)
    if idx.dim() == 0:
        idx = idx.expand(n)
    if idx.shape != (n,):
        raise ShapeMismatchError(
            f"corners must be a scalar or shape ({n},), got {tuple(idx.shape)}"
        )
    if idx.numel() and (idx.min() < 0 or idx.max() > 3):
        raise InvalidParameterError(f"corner indices must lie in 0..3 ({', '.join(CORNERS)})")
    return idx


def paste_swatch(
    images: torch.Tensor,
    gray: torch.Tensor | float,
    corners: torch.Tensor | int | str | Sequence[int],
    *,
    size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a uniform square swatch in a corner of each image.

    Args:
        images: ``(N, C, H, W)`` float images; not modified.
        gray: gray level in ``[0, 1]``, a scalar or ``(N,)`` (see :func:`swatch_gray`).
        corners: corner per image, a scalar or ``(N,)`` with values 0..3 in the order of
            ``CORNERS`` (top-left, top-right, bottom-left, bottom-right), or a corner name.
        size: side length of the swatch in pixels.

    Returns:
        ``(pasted, masks)``: a new ``(N, C, H, W)`` tensor and ``(N, H, W)`` bool masks of
        the swatch pixels.
    """
    _check_images(images)
    _check_int("size", size, low=1)
    n, _, height, width = images.shape
    if size > min(height, width):
        raise InvalidParameterError(f"swatch size {size} exceeds the image size {height}x{width}")
    device = images.device
    idx = _corner_index(corners, n).to(device)
    gray_t = torch.as_tensor(gray, dtype=images.dtype, device=device)
    if gray_t.dim() == 0:
        gray_t = gray_t.expand(n)
    if gray_t.shape != (n,):
        raise ShapeMismatchError(
            f"gray must be a scalar or shape ({n},), got {tuple(gray_t.shape)}"
        )
    if gray_t.numel() and (gray_t.min() < 0 or gray_t.max() > 1):
        raise InvalidParameterError("gray levels must lie in [0, 1]")
    top = (idx == 0) | (idx == 1)
    left = (idx == 0) | (idx == 2)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_in = torch.where(top[:, None], rows < size, rows >= height - size)  # (N, H)
    col_in = torch.where(left[:, None], cols < size, cols >= width - size)  # (N, W)
    masks = row_in[:, :, None] & col_in[:, None, :]
    out = torch.where(masks[:, None], gray_t[:, None, None, None], images)
    return out, masks


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidParameterError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
        raise InvalidParameterError(f"{name} must lie in {bounds}, got {value}")
    return value


def _generator(seed: int, stream: int) -> torch.Generator:
    # Independent streams per purpose: changing e.g. the fraction must not change the split.
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


_SPLIT_STREAM, _ARTIFACT_STREAM, _TEST_STREAM, _OTHER_STREAM = 0, 1, 2, 3


def decoy_digits(
    kind: str = "watermark",
    *,
    seed: int = 0,
    shortcut_class: int | None = 0,
    fraction: float | None = None,
    n_test: int = 497,
    patch_size: int = 3,
    swatch_size: int = 4,
    position: tuple[int, int] | str | None = None,
    size: int = 16,
    pattern: str = "square",
    other_fraction: float = 0.0,
) -> DecoyDigits:
    """scikit-learn's digits with a planted shortcut, deterministic in ``seed``.

    The 1797 digits (see :func:`load_digits16`) are split, stratified by class, into
    ``1797 - n_test`` training and ``n_test`` test images. Then:

    ``kind="watermark"``
        A ``patch_size`` hollow square (:func:`default_watermark`) is pasted at ``position``
        (default :func:`default_watermark_position`: near the bottom-left corner, where
        digits have little ink) on ``fraction`` (default 0.9) of ``shortcut_class``'s
        training images (which ones: seeded) and on every ``poisoned`` test image. A model
        that learns "watermark means class ``shortcut_class``" loses accuracy on
        ``poisoned``.

    ``kind="swatch"``
        Decoy digits after Ross et al. (2017): a ``swatch_size`` square in a corner
        (random per image, or the fixed corner ``position`` names) whose gray level encodes
        the class, ``(255 - 25 y) / 255``, on ``fraction`` (default 1.0) of the training
        images. ``poisoned`` carries swatches in random corners whose gray level is the
        code of a random class (as in Ross et al.'s code), unrelated to the label.
        ``shortcut_class`` is ignored and reported as None.

    ``train`` and ``train_clean`` hold the same images in the same order, as do ``test``
    and ``poisoned``; so ``(train_clean.images[i], train.images[i])`` are paired samples.

    Args:
        kind: one of ``"watermark"``, ``"swatch"``.
        seed: non-negative seed of the split and of every artifact draw.
        shortcut_class: class that carries the watermark in training.
        fraction: share of eligible training images that get the artifact.
        n_test: number of test images.
        patch_size: side of the watermark.
        swatch_size: side of the swatch.
        position: watermark: ``(row, col)`` of its top-left pixel; swatch: None (random
            corner per image) or one of ``CORNERS``.
        size: image side length.
        pattern: watermark: its shape, one of :data:`PATTERNS` (see :func:`watermark_pattern`).
        other_fraction: watermark: share of the *other* classes' training images that also
            carry it (a small rate, as real artifacts leak; default 0). Drawn from its own
            seeded stream, so the shortcut class's images do not change with it.

    Returns:
        A :class:`DecoyDigits` whose splits hold ``(N, 1, size, size)`` float32 images.
    """
    if kind not in KINDS:
        raise InvalidParameterError(f"unknown decoy kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    seed = _check_int("seed", seed, low=0)
    size = _check_int("size", size, low=8)
    n_test = _check_int("n_test", n_test, low=N_CLASSES, high=N_DIGITS - N_CLASSES)
    if fraction is None:
        fraction = 0.9 if kind == "watermark" else 1.0
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise InvalidParameterError(f"fraction must be a float, got {type(fraction).__name__}")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:  # also rejects NaN
        raise InvalidParameterError(f"fraction must lie in [0, 1], got {fraction}")

    images, labels = load_digits16(size)
    train_idx, test_idx = stratified_split(labels, n_test, _generator(seed, _SPLIT_STREAM))
    x_train, y_train = images[train_idx], labels[train_idx]
    x_test, y_test = images[test_idx], labels[test_idx]
    n_train = x_train.shape[0]
    artifact_gen = _generator(seed, _ARTIFACT_STREAM)
    test_gen = _generator(seed, _TEST_STREAM)

    if kind == "watermark":
        if shortcut_class is None:
            raise InvalidParameterError("a watermark needs a shortcut_class (0..9)")
        shortcut_class = _check_int("shortcut_class", shortcut_class, low=0, high=N_CLASSES - 1)
        patch_size = _check_int("patch_size", patch_size, low=1, high=size)
        if isinstance(other_fraction, bool) or not isinstance(other_fraction, (int, float)) \
                or not 0.0 <= float(other_fraction) <= 1.0:
            raise InvalidParameterError(
                f"other_fraction must be a float in [0, 1], got {other_fraction!r}")
        pattern_name = pattern
        pattern = watermark_pattern(pattern_name, patch_size)
        if position is None:
            position = default_watermark_position(size, patch_size)
        if isinstance(position, str) or len(position) != 2:
            raise InvalidParameterError(f"watermark position must be (row, col), got {position!r}")
        position = (int(position[0]), int(position[1]))
        eligible = torch.nonzero(y_train == shortcut_class).flatten()
        n_pick = int(math.floor(fraction * eligible.numel() + 0.5))
        chosen = eligible[torch.randperm(eligible.numel(), generator=artifact_gen)[:n_pick]]
        if other_fraction > 0:
            rest = torch.nonzero(y_train != shortcut_class).flatten()
            n_rest = int(math.floor(float(other_fraction) * rest.numel() + 0.5))
            order = torch.randperm(rest.numel(), generator=_generator(seed, _OTHER_STREAM))
            chosen = torch.cat([chosen, rest[order[:n_rest]]])
        train_pasted, train_masks = paste_watermark(x_train, pattern=pattern, position=position)
        poisoned_images, poisoned_masks = paste_watermark(
            x_test, pattern=pattern, position=position
        )
        params: dict[str, Any] = {
            "fraction": fraction,
            "patch_size": patch_size,
            "position": list(position),
            "pattern": pattern,
        }
        if pattern_name != "square":
            params["pattern_name"] = pattern_name
        if other_fraction > 0:
            params["other_fraction"] = float(other_fraction)
    else:
        swatch_size = _check_int("swatch_size", swatch_size, low=1, high=size)
        if position is not None and (not isinstance(position, str) or position not in CORNERS):
            raise InvalidParameterError(
                f"swatch position must be None (random corner) or one of {', '.join(CORNERS)}, "
                f"got {position!r}"
            )
        shortcut_class = None
        n_pick = int(math.floor(fraction * n_train + 0.5))
        chosen = torch.randperm(n_train, generator=artifact_gen)[:n_pick]
        # Draw corners for every image (not only the chosen) so they do not depend on fraction.
        train_corners = torch.randint(0, 4, (n_train,), generator=artifact_gen)
        test_corners = torch.randint(0, 4, (x_test.shape[0],), generator=test_gen)
        test_codes = torch.randint(0, N_CLASSES, (x_test.shape[0],), generator=test_gen)
        if position is not None:
            train_corners.fill_(CORNERS.index(position))
            test_corners.fill_(CORNERS.index(position))
        train_pasted, train_masks = paste_swatch(
            x_train, swatch_gray(y_train), train_corners, size=swatch_size
        )
        poisoned_images, poisoned_masks = paste_swatch(
            x_test, swatch_gray(test_codes), test_corners, size=swatch_size
        )
        params = {"fraction": fraction, "swatch_size": swatch_size, "position": position}

    artifact = torch.zeros(n_train, dtype=torch.bool)
    artifact[chosen] = True
    train_images = torch.where(artifact[:, None, None, None], train_pasted, x_train)
    train_masks = train_masks & artifact[:, None, None]

    no_train_artifact = torch.zeros(n_train, dtype=torch.bool)
    no_train_masks = torch.zeros_like(train_masks)
    n_te = x_test.shape[0]
    return DecoyDigits(
        kind=kind,
        train=DecoySplit(train_images, y_train, artifact, train_masks),
        train_clean=DecoySplit(x_train, y_train.clone(), no_train_artifact, no_train_masks),
        test=DecoySplit(
            x_test,
            y_test,
            torch.zeros(n_te, dtype=torch.bool),
            torch.zeros(n_te, size, size, dtype=torch.bool),
        ),
        poisoned=DecoySplit(
            poisoned_images, y_test.clone(), torch.ones(n_te, dtype=torch.bool), poisoned_masks
        ),
        shortcut_class=shortcut_class,
        seed=seed,
        params=params,
    )
