"""scikit-learn's digits with concepts computed from each image's pixels.

The concepts are deterministic functions of one image, so they vary within a class (a 4 with or
without a closed top, a thin or a wide 0):

* ``ink r{i}c{j}`` (16 concepts): the image has more ink in cell ``(i, j)`` of a 4 x 4 grid of
  4 x 4-pixel cells than the median bundled digit has in that cell (mean intensity, the medians
  taken once over all 1797 digits), so each is present in about half of the images;
* ``loop``: the stroke encloses at least one hole (pixels <= 0.4 not 4-connected to the border);
* ``two loops``: it encloses at least two separate holes.

Nothing is downloaded: the digits ship with scikit-learn (:func:`load_digits16`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.data.digits import N_CLASSES, load_digits16, stratified_split
from latentsurgeon.data.toy_concepts import ConceptData, ConceptSplit
from latentsurgeon.errors import ShapeMismatchError

__all__ = ["DIGIT_CONCEPT_NAMES", "concept_digits", "count_holes", "digit_concepts"]

GRID = 4
INK_THRESHOLD = 0.4  # pixels above it are stroke, at or below it background (for the loops)
DIGIT_CONCEPT_NAMES = [f"ink r{i}c{j}" for i in range(GRID) for j in range(GRID)] + [
    "loop", "two loops"]


def _cell_ink(images: torch.Tensor) -> torch.Tensor:
    """Mean intensity per grid cell: ``(N, 1, 16, 16) -> (N, GRID * GRID)``."""
    return F.avg_pool2d(images, kernel_size=images.shape[-1] // GRID).flatten(1)


@functools.lru_cache(maxsize=1)
def _median_cell_ink() -> torch.Tensor:
    images, _ = load_digits16()
    return _cell_ink(images).median(0).values


def _grow(mask: torch.Tensor) -> torch.Tensor:
    """``mask (N, H, W)`` or its 4-neighbours (boolean shifts: much faster than a convolution)."""
    p = F.pad(mask, (1, 1, 1, 1), value=False)
    return mask | p[:, 1:-1, :-2] | p[:, 1:-1, 2:] | p[:, :-2, 1:-1] | p[:, 2:, 1:-1]


def _neighbour_min(labels: torch.Tensor) -> torch.Tensor:
    """Minimum over the 4-neighbourhood (and the pixel itself) of ``(N, H, W)``."""
    p = F.pad(labels, (1, 1, 1, 1), value=float("inf"))
    return torch.minimum(
        torch.minimum(labels, torch.minimum(p[:, 1:-1, :-2], p[:, 1:-1, 2:])),
        torch.minimum(p[:, :-2, 1:-1], p[:, 2:, 1:-1]))


def count_holes(images: torch.Tensor, threshold: float = INK_THRESHOLD) -> torch.Tensor:
    """Number of holes in each image's stroke: ``(N, 1, H, W) -> (N,)`` int64.

    A hole is a 4-connected component of background pixels (``<= threshold``) that does not
    reach the border. Computed for the whole batch at once: the background reachable from the
    border grows by dilation until it stops changing, then the remaining background pixels are
    labelled by propagating the smallest pixel index through each component; a component is
    counted at the pixel whose index survives.
    """
    background = images[:, 0] <= threshold
    n, h, w = background.shape
    padded = F.pad(background, (1, 1, 1, 1), value=True)  # a background frame touches every border
    reach = torch.zeros_like(padded)
    reach[:, 0, :] = reach[:, -1, :] = reach[:, :, 0] = reach[:, :, -1] = True
    for _ in range((h + 2) * (w + 2)):  # each pass reaches one more step; a path is never longer
        grown = _grow(reach) & padded
        if torch.equal(grown, reach):
            break
        reach = grown
    hole = (padded & ~reach)[:, 1:-1, 1:-1]
    index = torch.arange(h * w, dtype=torch.float32).view(1, h, w).expand(n, h, w)
    labels = torch.where(hole, index, torch.full_like(index, float("inf")))
    for _ in range(h * w):
        spread = torch.where(hole, _neighbour_min(labels), labels)
        if torch.equal(spread, labels):
            break
        labels = spread
    return (hole & (labels == index)).sum((1, 2))


def digit_concepts(images: torch.Tensor) -> torch.Tensor:
    """The :data:`DIGIT_CONCEPT_NAMES` concepts of 16 x 16 digit images.

    Args:
        images: ``(N, 1, 16, 16)`` intensities in ``[0, 1]`` (as :func:`load_digits16` gives).

    Returns:
        ``(N, 18)`` float32 in ``{0, 1}``.

    Raises:
        ShapeMismatchError: images of another shape.
    """
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 16, 16):
        raise ShapeMismatchError(
            f"digit_concepts needs (N, 1, 16, 16) images, got shape {tuple(images.shape)}.")
    ink = _cell_ink(images) > _median_cell_ink()
    holes = count_holes(images)
    return torch.cat([ink, (holes >= 1).unsqueeze(1), (holes >= 2).unsqueeze(1)], 1).float()


@functools.lru_cache(maxsize=1)
def _bundled() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = load_digits16()
    return images, labels, digit_concepts(images)


def concept_digits(*, seed: int = 0, n_test: int = 360) -> ConceptData:
    """The bundled digits as a concept data set: 16 x 16 images, 18 pixel concepts, 10 classes.

    Args:
        seed: drives the stratified train/test split (the concepts do not depend on it).
        n_test: test images (stratified by class); the other ``1797 - n_test`` are for training.

    Returns:
        A :class:`ConceptData` with inputs ``(N, 1, 16, 16)``, concepts ``(N, 18)`` and labels
        ``(N,)`` in ``0..9``.
    """
    validate_params({"seed": seed, "n_test": n_test},
                    {"seed": Interval(int, 0, None), "n_test": Interval(int, 10, 1787)},
                    owner="concept_digits()")
    images, labels, concepts = _bundled()  # indexing below copies: callers get fresh tensors
    train_idx, test_idx = stratified_split(labels, n_test, torch.Generator().manual_seed(seed))
    split = lambda idx: ConceptSplit(images[idx], labels[idx], concepts[idx])  # noqa: E731
    return ConceptData("digits", split(train_idx), split(test_idx), list(DIGIT_CONCEPT_NAMES),
                       n_classes=N_CLASSES, params={"seed": int(seed)})
