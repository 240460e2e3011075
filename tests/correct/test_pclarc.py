"""P-ClArC: fitting variants, attach/applied/export, save/load, and the quality goal on decoy digits."""

from __future__ import annotations

import io
import time

import pytest
import torch

from latentsurgeon.activations import capture
from latentsurgeon.concepts import CAV
from latentsurgeon.correct import ClarcProjection, PClarc
from latentsurgeon.errors import LatentSurgeonError, LayerNotFoundError, NotFittedError
from latentsurgeon.hooks import hook_count
from latentsurgeon.hooks.clarc import clarc_projection
from latentsurgeon.metrics import gap_closed, shortcut_gap
from latentsurgeon.models import DigitCNN

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace


def small_split(watermark, n=1300):
    train = watermark.train
    return train.images[:n], train.labels[:n], train.artifact[:n]


@pytest.fixture
def fitted(base_model, watermark):
    return PClarc("features", progress=False).fit(base_model, watermark.train)


def test_fit_learns_direction_and_reference(fitted, base_model, watermark):
    assert fitted.direction_.shape == (512,)
    assert float(fitted.direction_.norm()) == pytest.approx(1.0, abs=1e-5)
    assert fitted.pooling_ == "flatten" and fitted.input_shape_ == [32, 4, 4]
    # default cav_samples="artifact_classes": fitted within class 0, where the watermark occurs
    with capture(base_model, "features") as cap:
        base_model(watermark.train.images)
    acts = cap["features"].reshape(len(watermark.train), -1)
    in_class = watermark.train.labels == watermark.shortcut_class
    clean = in_class & ~watermark.train.artifact
    torch.testing.assert_close(fitted.mean_clean_, acts[clean].mean(0), rtol=1e-4, atol=1e-4)
    assert fitted.cav_scores_["accuracy"] > 0.9


def test_fit_from_cav_or_activations_gives_the_same(fitted, base_model, watermark):
    train = watermark.train
    with capture(base_model, "features") as cap:
        base_model(train.images)
    acts = cap["features"]
    from_acts = PClarc("features").fit(None, activations=acts, artifact_labels=train.artifact,
                                       labels=train.labels)
    torch.testing.assert_close(from_acts.direction_, fitted.direction_)
    cav = CAV().fit(acts, train.artifact, sample_mask=train.labels == 0)
    from_cav = PClarc("features", cav=cav).fit(None)
    torch.testing.assert_close(from_cav.direction_, fitted.direction_)
    images, labels, artifact = train.images, train.labels, train.artifact
    from_tuple = PClarc("features", progress=False).fit(base_model, (images, labels, artifact))
    torch.testing.assert_close(from_tuple.direction_, fitted.direction_)


def test_cav_samples_all_and_class_index(base_model, watermark):
    images, labels, artifact = small_split(watermark)
    every = PClarc("features", cav_samples="all", progress=False).fit(
        base_model, (images, labels), artifact)
    class0 = PClarc("features", cav_samples=0, progress=False).fit(
        base_model, (images, labels), artifact)
    assert not torch.allclose(every.direction_, class0.direction_)
    with pytest.raises(LatentSurgeonError, match="cav_samples"):
        PClarc("features", cav_samples="most").fit(base_model, (images, labels), artifact)


def test_attach_applied_and_hook_cleanup(fitted, base_model, watermark):
    x = watermark.poisoned.images[:20]
    plain = base_model(x)
    group = fitted.attach(base_model)
    hooked = base_model(x)
    group.remove()
    group.remove()
    assert hook_count(base_model) == 0
    feats = base_model.features(x)
    expected = base_model.classifier(clarc_projection(feats, fitted.direction_, fitted.mean_clean_))
    torch.testing.assert_close(hooked, expected)
    with fitted.applied(base_model):
        torch.testing.assert_close(base_model(x), hooked)
    assert hook_count(base_model) == 0
    torch.testing.assert_close(base_model(x), plain)


def test_export_is_hook_free_and_survives_save_state_dict_and_trace(fitted, base_model, watermark):
    x = watermark.poisoned.images[:32]
    with fitted.applied(base_model):
        hooked = base_model(x)
    exported = fitted.export(base_model)
    assert hook_count(exported) == 0 and hook_count(base_model) == 0
    assert isinstance(exported.features[1], ClarcProjection)
    torch.testing.assert_close(exported(x), hooked)
    # the original model is untouched
    assert not isinstance(base_model.features[0], torch.nn.Sequential)
    # torch.save of the whole module
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(reloaded(x), hooked)
    # state_dict into a fresh export (of an untrained model with another correction)
    fresh = PClarc("features", alpha=0.3).fit(None, activations=torch.randn(40, 32, 4, 4),
                                              artifact_labels=torch.arange(40) % 2)
    other = fresh.export(DigitCNN())
    other.load_state_dict(exported.state_dict())
    torch.testing.assert_close(other(x), hooked)
    # tracing
    traced = torch.jit.trace(exported, x)
    torch.testing.assert_close(traced(x), hooked)


def test_export_of_an_attached_model_does_not_project_twice(fitted, base_model, watermark):
    x = watermark.poisoned.images[:8]
    with fitted.applied(base_model):
        hooked = base_model(x)
        exported = fitted.export(base_model)
    torch.testing.assert_close(exported(x), hooked)


def test_save_load_round_trip(tmp_path, fitted, base_model, watermark):
    path = tmp_path / "pclarc.pt"
    fitted.save(path)
    loaded = PClarc.load(path)
    for attr in ("direction_", "mean_clean_", "mean_concept_"):
        torch.testing.assert_close(getattr(loaded, attr), getattr(fitted, attr))
    x = watermark.poisoned.images[:16]
    torch.testing.assert_close(loaded.export(base_model)(x), fitted.export(base_model)(x))
    # a CAV object given to the constructor is stored through its vectors
    cav = CAV().fit(torch.randn(30, 512), torch.arange(30) % 2)
    with_cav = PClarc("features", cav=cav).fit(None)
    with_cav.save(path)
    again = PClarc.load(path)
    assert again.cav is None and with_cav.cav is cav
    torch.testing.assert_close(again.direction_, cav.direction_)


def test_errors_say_what_is_expected(base_model, watermark):
    with pytest.raises(NotFittedError):
        PClarc("features").attach(base_model)
    with pytest.raises(LayerNotFoundError, match="features"):
        PClarc("featurez").fit(base_model, watermark.train)
    with pytest.raises(LatentSurgeonError, match="artifact labels"):
        PClarc("features", progress=False).fit(base_model, watermark.train.images)
    with pytest.raises(LatentSurgeonError, match="cav"):
        PClarc("features").fit(None)
    with pytest.raises(LatentSurgeonError, match="fitted"):
        PClarc("features", cav=CAV()).fit(None)
    # a CAV of another layer is refused when the model runs
    wrong = PClarc("features.3", cav=CAV().fit(torch.randn(30, 7), torch.arange(30) % 2)).fit(None)
    with pytest.raises(LatentSurgeonError, match="7 entries"), wrong.applied(base_model):
        base_model(watermark.test.images[:2])
    assert hook_count(base_model) == 0


def test_channel_pooled_cav_is_applied_in_channel_space(base_model, watermark):
    images, labels, artifact = small_split(watermark)
    pc = PClarc("features", pooling="max", progress=False).fit(base_model, (images, labels, artifact))
    assert pc.direction_.shape == (32,)
    x = watermark.poisoned.images[:8]
    feats = base_model.features(x)
    expected = base_model.classifier(
        clarc_projection(feats, pc.direction_, pc.mean_clean_, pooling="max"))
    torch.testing.assert_close(pc.export(base_model)(x), expected)


def test_quality_closes_80_percent_at_2_points(fitted, base_model, base_gap, watermark):
    """The goal: >= 80% of the gap closed, <= 2 points of clean accuracy lost."""
    start = time.perf_counter()
    PClarc("features", progress=False).fit(base_model, watermark.train)
    assert time.perf_counter() - start < 10
    after = shortcut_gap(fitted.export(base_model), watermark.test, watermark.poisoned)
    assert gap_closed(base_gap, after) >= 0.8
    assert base_gap["clean_acc"] - after["clean_acc"] <= 0.02


def test_fit_paired_uses_the_same_images_with_and_without_the_artifact(base_model, watermark):
    a = watermark.train.artifact
    pc = PClarc("features", progress=False).fit_paired(
        base_model, watermark.train.images[a], watermark.train_clean.images[a])
    with capture(base_model, "features", accumulate=True) as cap:
        base_model(watermark.train.images[a])
        base_model(watermark.train_clean.images[a])
    acts = cap["features"].flatten(1)
    n = int(a.sum())
    diff = (acts[:n] - acts[n:]).mean(0)
    torch.testing.assert_close(pc.direction_, diff / diff.norm(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pc.mean_clean_, acts[n:].mean(0), rtol=1e-4, atol=1e-5)
    # from activations directly
    again = PClarc("features").fit_paired(None, acts[:n].reshape(n, 32, 4, 4),
                                          acts[n:].reshape(n, 32, 4, 4))
    torch.testing.assert_close(again.direction_, pc.direction_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["flatten", "mean", "max"])
def test_projection_leaves_clean_samples_in_place_and_moves_artifact_ones(pooling):
    """Whatever the CAV's pooling, the clean samples' mean stays where it was and the artifact
    samples' pooled projection moves to the clean one (a max-pooled direction used with the mean
    of per-channel maxima as reference pushed every position up instead)."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 300, 4, 6, 6
    acts = torch.relu(torch.randn(n, c, h, w, generator=g))
    artifact = torch.arange(n) % 3 == 0
    acts[artifact, 1, :2, :2] += 3.0  # the artifact: channel 1, top-left corner
    model = torch.nn.Sequential(torch.nn.Identity())
    pc = PClarc("0", pooling=pooling, cav_samples="all", progress=False).fit(
        None, activations=acts, artifact_labels=artifact)
    with torch.no_grad(), pc.applied(model):
        out = model(acts)
    clean_shift = (out[~artifact] - acts[~artifact]).mean(0).abs().mean()
    artifact_shift = (out[artifact] - acts[artifact]).mean(0).abs().mean()
    assert clean_shift < 0.15 * artifact_shift
    cav_space = {"flatten": lambda a: a.flatten(1), "mean": lambda a: a.mean((2, 3)),
                 "max": lambda a: a.mean((2, 3))}[pooling]
    v = pc.direction_
    before = (cav_space(acts[artifact]) @ v).mean() - (cav_space(acts[~artifact]) @ v).mean()
    after = (cav_space(out[artifact]) @ v).mean() - (cav_space(out[~artifact]) @ v).mean()
    assert abs(after) < 0.05 * abs(before)
