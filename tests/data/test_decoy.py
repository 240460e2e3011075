"""Decoy digits: determinism, shapes, exact masks, artifact placement, argument errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from latentsurgeon.data import (
    CORNERS,
    DecoyDigits,
    DecoySplit,
    decoy_digits,
    default_watermark,
    load_digits16,
    paste_swatch,
    paste_watermark,
    swatch_gray,
)
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError

SPLITS = ("train", "train_clean", "test", "poisoned")


@pytest.fixture(scope="module")
def wm() -> DecoyDigits:
    return decoy_digits("watermark", seed=0)


@pytest.fixture(scope="module")
def sw() -> DecoyDigits:
    return decoy_digits("swatch", seed=0)


def _assert_same(a: DecoyDigits, b: DecoyDigits) -> None:
    for name in SPLITS:
        sa, sb = getattr(a, name), getattr(b, name)
        for field in ("images", "labels", "artifact", "masks"):
            assert torch.equal(getattr(sa, field), getattr(sb, field)), (name, field)


# --- the base data ------------------------------------------------------------------------------


def test_load_digits16_shapes_and_values():
    images, labels = load_digits16()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    assert images.max() == 1.0  # 16/16 pixels survive the bilinear resize
    assert set(labels.tolist()) == set(range(10))
    raw = load_digits()
    assert torch.equal(labels, torch.tensor(raw.target))
    # Upsampling is bilinear over the scaled 8x8 scans: the mean intensity is kept.
    scaled = torch.tensor(raw.images, dtype=torch.float32) / 16
    assert torch.allclose(images.mean(dim=(1, 2, 3)), scaled.mean(dim=(1, 2)), atol=0.02)
    # Fresh tensors: a caller mutating one result cannot corrupt the next.
    images.zero_()
    assert load_digits16()[0].max() == 1.0


def test_load_digits16_native_size_is_exact():
    images, _ = load_digits16(size=8)
    raw = torch.tensor(load_digits().images, dtype=torch.float32) / 16
    assert torch.equal(images[:, 0], raw)


def test_split_sizes_and_stratification(wm):
    assert len(wm.train) == 1300 and len(wm.test) == 497
    assert len(wm.train_clean) == 1300 and len(wm.poisoned) == 497
    _, labels = load_digits16()
    full = torch.bincount(labels, minlength=10)
    train = torch.bincount(wm.train.labels, minlength=10)
    test = torch.bincount(wm.test.labels, minlength=10)
    assert torch.equal(train + test, full)
    expected = full.double() * 497 / 1797
    assert ((test.double() - expected).abs() < 1).all()


def test_train_and_test_are_disjoint(wm):
    images, _ = load_digits16()
    flat = images.flatten(1)

    # Index every original image by its bytes (a few digits are duplicated in the data,
    # so compare multiplicities, not mere membership).
    def counts(x):
        out: dict[bytes, int] = {}
        for row in x.flatten(1).numpy():
            out[row.tobytes()] = out.get(row.tobytes(), 0) + 1
        return out

    full, tr, te = counts(flat), counts(wm.train_clean.images), counts(wm.test.images)
    for key in set(tr) | set(te):
        assert tr.get(key, 0) + te.get(key, 0) <= full[key]
    assert sum(tr.values()) + sum(te.values()) == sum(full.values())


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["watermark", "swatch"])
def test_same_seed_bit_identical(kind):
    _assert_same(decoy_digits(kind, seed=3), decoy_digits(kind, seed=3))


def test_different_seed_changes_selection(wm):
    other = decoy_digits("watermark", seed=1)
    assert not torch.equal(wm.train.labels, other.train.labels)
    assert not torch.equal(wm.train.artifact, other.train.artifact)
    sw0, sw1 = decoy_digits("swatch", seed=0), decoy_digits("swatch", seed=1)
    assert not torch.equal(sw0.poisoned.masks, sw1.poisoned.masks)


def test_artifact_draw_does_not_move_the_split(wm):
    # Independent random streams: the split depends on the seed only.
    other = decoy_digits("watermark", seed=0, fraction=0.5)
    assert torch.equal(wm.train_clean.images, other.train_clean.images)
    assert torch.equal(wm.test.images, other.test.images)
    assert not torch.equal(wm.train.artifact, other.train.artifact)


# --- shapes, dtypes, ranges --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["watermark", "swatch"])
def test_split_shapes_dtypes_ranges(kind, wm, sw):
    data = wm if kind == "watermark" else sw
    for name in SPLITS:
        split = getattr(data, name)
        n = len(split)
        assert split.images.shape == (n, 1, 16, 16) and split.images.dtype == torch.float32
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
        assert split.artifact.shape == (n,) and split.artifact.dtype == torch.bool
        assert split.masks.shape == (n, 16, 16) and split.masks.dtype == torch.bool
        assert split.images.min() >= 0 and split.images.max() <= 1
        assert not split.masks[~split.artifact].any()
    assert torch.equal(data.train.labels, data.train_clean.labels)
    assert torch.equal(data.test.labels, data.poisoned.labels)
    assert not data.train_clean.artifact.any() and not data.test.artifact.any()
    assert data.poisoned.artifact.all()


def test_other_image_size():
    data = decoy_digits("watermark", size=20)
    assert data.train.images.shape[1:] == (1, 20, 20)
    assert data.train.masks.shape[1:] == (20, 20)


# --- watermark ---------------------------------------------------------------------------------


def _check_exact_masks(with_art: DecoySplit, without: DecoySplit, expected_values) -> None:
    """Changed pixels lie inside the mask; the mask holds exactly the expected values."""
    changed = (with_art.images != without.images).any(dim=1)
    assert not (changed & ~with_art.masks).any(), "a pixel outside the mask changed"
    # Every artifact sample was visibly changed (the pattern is not invisible on digits).
    assert changed[with_art.artifact].flatten(1).any(dim=1).all()
    assert not changed[~with_art.artifact].any()
    img = with_art.images[:, 0]
    for i in torch.nonzero(with_art.artifact).flatten().tolist():
        assert torch.equal(img[i][with_art.masks[i]], expected_values(i)), i


def test_watermark_masks_cover_exactly_the_pasted_pixels(wm):
    pattern = default_watermark(3)
    row, col = wm.params["position"]
    values = pattern.flatten()
    _check_exact_masks(wm.train, wm.train_clean, lambda i: values)
    _check_exact_masks(wm.poisoned, wm.test, lambda i: values)
    assert (wm.train.masks[wm.train.artifact].flatten(1).sum(1) == 9).all()
    assert wm.train.masks[wm.train.artifact][:, row : row + 3, col : col + 3].all()
    assert torch.equal(torch.tensor(wm.summary()["pattern"]), pattern)


def test_watermark_pattern_is_not_constant():
    pattern = default_watermark(3)
    assert pattern.min() == 0 and pattern.max() == 1


def test_watermark_fraction_on_shortcut_class_only(wm):
    in_class = wm.train.labels == wm.shortcut_class
    n_class = int(in_class.sum())
    share = wm.train.artifact[in_class].float().mean().item()
    assert abs(share - 0.9) <= 1 / n_class
    assert not wm.train.artifact[~in_class].any()
    summary = wm.summary()
    assert summary["shortcut_class_artifact_fraction"] == pytest.approx(share)
    assert summary["other_classes_artifact_fraction"] == 0.0


@pytest.mark.parametrize("fraction, expected", [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5)])
def test_watermark_fraction_extremes(fraction, expected):
    data = decoy_digits("watermark", shortcut_class=3, fraction=fraction)
    in_class = data.train.labels == 3
    assert data.train.artifact[in_class].float().mean().item() == pytest.approx(expected, abs=0.01)
    assert not data.train.artifact[~in_class].any()
    assert data.poisoned.artifact.all()


def test_every_poisoned_image_carries_the_watermark(wm):
    assert wm.poisoned.artifact.all()
    assert (wm.poisoned.masks.flatten(1).sum(1) == 9).all()
    pattern = default_watermark(3)
    row, col = wm.params["position"]
    patch = wm.poisoned.images[:, 0, row : row + 3, col : col + 3]
    assert torch.equal(patch, pattern.expand_as(patch))


def test_watermark_custom_position_and_patch_size():
    data = decoy_digits("watermark", position=(2, 5), patch_size=4)
    assert data.poisoned.masks[:, 2:6, 5:9].all()
    assert int(data.poisoned.masks[0].sum()) == 16


# --- swatch --------------------------------------------------------------------------------------


def _swatch_values(split: DecoySplit) -> torch.Tensor:
    """The (uniform) gray level inside each sample's mask."""
    values = []
    for i in range(len(split)):
        inside = split.images[i, 0][split.masks[i]]
        assert inside.numel() == 16
        assert torch.all(inside == inside[0])
        values.append(inside[0])
    return torch.stack(values)


def test_swatch_gray_encodes_class_in_train(sw):
    assert sw.shortcut_class is None
    assert sw.train.artifact.all()
    gray = _swatch_values(sw.train)
    assert torch.allclose(gray, (255 - 25 * sw.train.labels.float()) / 255)
    assert torch.equal(gray, swatch_gray(sw.train.labels))
    _check_exact_masks(sw.train, sw.train_clean, lambda i: gray[i].expand(16))


def test_swatch_is_uncorrelated_with_the_label_at_test(sw):
    gray = _swatch_values(sw.poisoned)
    labels = sw.poisoned.labels.float()
    corr = np.corrcoef(gray.numpy(), labels.numpy())[0, 1]
    assert abs(corr) < 0.15
    # Reading the class off the gray level works on train, not on poisoned test data.
    decoded = torch.round((255 - gray * 255) / 25).long()
    assert (decoded == sw.poisoned.labels).float().mean() < 0.2
    assert set(decoded.tolist()) == set(range(10))  # gray levels are codes of random classes
    _check_exact_masks(sw.poisoned, sw.test, lambda i: gray[i].expand(16))


def test_swatch_corners_are_random_squares(sw):
    masks = sw.train.masks
    corner_masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    corner_masks[0, :4, :4] = True
    corner_masks[1, :4, 12:] = True
    corner_masks[2, 12:, :4] = True
    corner_masks[3, 12:, 12:] = True
    which = (masks[:, None] == corner_masks[None]).flatten(2).all(dim=2)  # (N, 4)
    assert (which.sum(dim=1) == 1).all(), "every mask is exactly one corner square"
    counts = which.sum(dim=0).float() / len(masks)
    assert (counts > 0.2).all() and (counts < 0.3).all()


def test_swatch_fixed_corner_and_size():
    data = decoy_digits("swatch", position="bottom_right", swatch_size=3)
    assert data.train.masks[:, 13:, 13:].all()
    assert int(data.train.masks.flatten(1).sum(1).max()) == 9


# --- paste helpers -------------------------------------------------------------------------------


def test_paste_watermark_is_vectorised_and_pure():
    images = torch.rand(5, 1, 16, 16)
    before = images.clone()
    pattern = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    out, masks = paste_watermark(images, pattern=pattern, position=(3, 7))
    assert torch.equal(images, before), "input modified"
    assert masks.shape == (5, 16, 16) and masks.dtype == torch.bool
    assert masks[:, 3:5, 7:9].all() and int(masks.sum()) == 5 * 4
    assert torch.equal(out[:, 0, 3:5, 7:9], pattern.expand(5, 2, 2))
    assert torch.equal(out[~masks[:, None].expand_as(out)], images[~masks[:, None].expand_as(out)])
    # Multi-channel input: the pattern goes into every channel.
    out3, _ = paste_watermark(torch.zeros(2, 3, 16, 16), pattern=pattern, position=(0, 0))
    assert torch.equal(out3[:, :, :2, :2], pattern.expand(2, 3, 2, 2))


def test_paste_watermark_default_matches_decoy(wm):
    out, masks = paste_watermark(wm.test.images)
    assert torch.equal(out, wm.poisoned.images)
    assert torch.equal(masks, wm.poisoned.masks)


def test_paste_swatch_corners_and_gray():
    images = torch.zeros(4, 1, 16, 16)
    out, masks = paste_swatch(images, torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.arange(4))
    assert torch.all(out[0, 0, :4, :4] == 0.1) and torch.all(out[1, 0, :4, 12:] == 0.2)
    assert torch.all(out[2, 0, 12:, :4] == 0.3) and torch.all(out[3, 0, 12:, 12:] == 0.4)
    assert (masks.flatten(1).sum(1) == 16).all()
    assert torch.equal(out[:, 0] != 0, masks)
    out2, masks2 = paste_swatch(images, 0.5, "top_right", size=2)
    assert torch.all(out2[:, 0, :2, 14:] == 0.5) and int(masks2.sum()) == 4 * 4
    assert CORNERS[1] == "top_right"


def test_paste_errors():
    images = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="does not fit"):
        paste_watermark(images, position=(15, 15))
    with pytest.raises(ShapeMismatchError):
        paste_watermark(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="corner"):
        paste_swatch(images, 0.5, 4)
    with pytest.raises(ValueError, match="valid corners"):
        paste_swatch(images, 0.5, "middle")
    with pytest.raises(ValueError, match="gray"):
        paste_swatch(images, 1.5, 0)
    with pytest.raises(ShapeMismatchError):
        paste_swatch(images, torch.zeros(3), 0)


# --- argument errors -----------------------------------------------------------------------------


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="watermark, swatch"):
        decoy_digits("sticker")


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match="fraction"):
        decoy_digits("watermark", fraction=fraction)


@pytest.mark.parametrize("cls", [-1, 10])
def test_shortcut_class_out_of_range(cls):
    with pytest.raises(ValueError, match="shortcut_class"):
        decoy_digits("watermark", shortcut_class=cls)


def test_other_argument_errors():
    with pytest.raises(ValueError, match="n_test"):
        decoy_digits(n_test=1797)
    with pytest.raises(ValueError, match="seed"):
        decoy_digits(seed=-1)
    with pytest.raises(ValueError, match="does not fit"):
        decoy_digits(position=(14, 14))
    with pytest.raises(ValueError, match="swatch position"):
        decoy_digits("swatch", position=(0, 0))
    with pytest.raises(ValueError):
        decoy_digits(shortcut_class=None)
    with pytest.raises(TypeError):
        decoy_digits(shortcut_class=1.5)


# --- the split object ---------------------------------------------------------------------------


def test_split_dataset_and_loader(wm):
    split = wm.train
    ds = split.dataset()
    assert len(ds) == len(split) == 1300
    x, y = ds[0]
    assert torch.equal(x, split.images[0]) and y == split.labels[0]
    first = next(iter(split.loader(batch_size=32)))
    assert torch.equal(first[0], split.images[:32])
    a = torch.cat([b[1] for b in split.loader(shuffle=True, seed=1)])
    b = torch.cat([b[1] for b in split.loader(shuffle=True, seed=1)])
    c = torch.cat([b[1] for b in split.loader(shuffle=True, seed=2)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, split.labels.sort().values)


def test_split_validates_shapes():
    with pytest.raises(ShapeMismatchError, match="masks"):
        DecoySplit(
            torch.zeros(3, 1, 16, 16),
            torch.zeros(3, dtype=torch.long),
            torch.zeros(3, dtype=torch.bool),
            torch.zeros(3, 8, 8, dtype=torch.bool),
        )
    assert issubclass(ShapeMismatchError, LatentSurgeonError)


def test_summary_is_json_ready(wm, sw):
    for data in (wm, sw):
        summary = data.summary()
        json.dumps(summary)
        assert summary["n_train"] == 1300 and summary["n_test"] == 497
        assert summary["kind"] == data.kind
        assert summary["poisoned_artifact_fraction"] == 1.0
    assert wm.summary()["train_artifact"] == int(wm.train.artifact.sum())
    assert sw.summary()["train_artifact_fraction"] == 1.0


def test_correction_data_marks_the_watermark_region_on_every_training_image():
    data = decoy_digits("watermark", seed=0)
    split = data.correction_data()
    region = data.poisoned.masks[0]
    assert split.images is data.train.images and split.labels is data.train.labels
    assert torch.equal(split.artifact, data.train.artifact)
    assert split.masks.shape == data.train.masks.shape
    assert bool((split.masks == region).all()) and int(region.sum()) == 9
    # the split's own masks mark only the watermarked images; the region is where it can be
    assert torch.equal(split.masks[data.train.artifact], data.train.masks[data.train.artifact])
    swatch = decoy_digits("swatch", seed=0)
    assert swatch.correction_data() is swatch.train


# -- the discovery grid's options: pattern and a rate in other classes ---------------------------
def test_every_pattern_is_pasted_exactly_and_the_default_is_unchanged():
    from latentsurgeon.data import PATTERNS, watermark_pattern

    base = decoy_digits(seed=3)
    same = decoy_digits(seed=3, pattern="square")
    assert torch.equal(base.train.images, same.train.images)
    shapes = set()
    for name in PATTERNS:
        data = decoy_digits(seed=3, pattern=name, fraction=0.4, position=(2, 2))
        pattern = watermark_pattern(name, 3)
        carried = data.train.images[data.train.artifact][:, 0, 2:5, 2:5]
        assert torch.equal(carried, pattern.expand_as(carried))
        shapes.add(tuple(pattern.flatten().tolist()))
    assert len(shapes) == len(PATTERNS)


def test_other_fraction_plants_the_watermark_in_other_classes_only_on_its_own_stream():
    plain = decoy_digits(seed=1, fraction=0.3, shortcut_class=4)
    leaky = decoy_digits(seed=1, fraction=0.3, shortcut_class=4, other_fraction=0.05)
    in_class = plain.train.labels == 4
    assert torch.equal(plain.train.artifact[in_class], leaky.train.artifact[in_class])
    share = leaky.summary()["other_classes_artifact_fraction"]
    assert abs(share - 0.05) < 0.005 and plain.summary()["other_classes_artifact_fraction"] == 0


@pytest.mark.parametrize("kwargs", [{"pattern": "star"}, {"other_fraction": 1.5},
                                    {"other_fraction": True}])
def test_bad_pattern_options_are_refused(kwargs):
    from latentsurgeon.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError):
        decoy_digits(seed=0, **kwargs)
