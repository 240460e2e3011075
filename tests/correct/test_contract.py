"""The contract every correction shares: fit -> self, attach/applied, export, save/load, state;
the scikit-learn parameter contract (get_params/set_params/clone, validation at fit), the
seed systems' spellings, one fit signature, and the device rule."""

from __future__ import annotations

import copy
import inspect
import io
import warnings

import pytest
import torch
from sklearn.base import clone
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon._aliases import ALIASES
from latentsurgeon.concepts import CAV
from latentsurgeon.correct import (
    REGISTRY,
    AClarc,
    Correction,
    ExplanationRegularization,
    PClarc,
    RRClarc,
    correction_entry,
    default_settings,
)
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ModelMismatchError
from latentsurgeon.hooks import HookGroup, hook_count
from latentsurgeon.models import DigitCNN

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace

NAMES = list(REGISTRY)


def make(name: str, **kw):
    """The registry's correction ``name`` (its tuned settings), one epoch where it trains."""
    entry = correction_entry(name)
    quick = {"epochs": 1} if entry.modifies_weights and "epochs" not in kw else {}
    return entry.build(progress=False, **quick, **kw)


def fit(correction, model, watermark):
    return correction.fit(model, watermark.correction_data())


@pytest.mark.parametrize("name", NAMES)
def test_contract(name, base_model, watermark, tmp_path):
    correction = make(name)
    assert correction.get_params()  # constructor stores parameters only
    assert not correction.is_fitted()
    base_model.train()
    assert fit(correction, base_model, watermark) is correction
    assert hook_count(base_model) == 0
    # every correction leaves the mode as it was: fit changes weights, nothing else
    assert base_model.training
    base_model.eval()
    x = watermark.poisoned.images[:32]
    group = correction.attach(base_model)
    assert isinstance(group, HookGroup)
    hooked = base_model(x)
    group.remove()
    group.remove()
    assert hook_count(base_model) == 0
    with correction.applied(base_model):
        torch.testing.assert_close(base_model(x), hooked)
    exported = correction.export(base_model)
    assert hook_count(exported) == 0
    torch.testing.assert_close(exported(x), hooked)
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), hooked)
    with pytest.raises(ModelMismatchError, match="model has other weights"):
        correction.export(DigitCNN())
    with pytest.warns(UserWarning, match="other weights"):
        fresh = correction.export(DigitCNN(), allow_other_weights=True)
    fresh.load_state_dict(exported.state_dict())
    torch.testing.assert_close(fresh(x), hooked)
    torch.testing.assert_close(torch.jit.trace(exported, x)(x), hooked)
    path = tmp_path / f"{name}.pt"
    correction.save(path)
    loaded = type(correction).load(path)
    assert loaded.get_params() == correction.get_params()
    for key, value in correction.learned_state().items():
        assert_same(getattr(loaded, key), value)


def assert_same(a, b):
    if isinstance(b, torch.Tensor):
        torch.testing.assert_close(a, b)
    elif isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in b:
            assert_same(a[key], b[key])
    else:
        assert a == b


@pytest.mark.parametrize("name", NAMES)
def test_get_params_set_params_and_clone(name):
    cav = CAV(method="mass_mean", pooling="mean") if name != "rrr" else None
    correction = make(name, **({"cav": cav} if cav is not None else {}))
    params = correction.get_params(deep=False)
    assert list(params) == [p for p in inspect.signature(type(correction)).parameters]
    twin = clone(correction)
    assert type(twin) is type(correction) and twin is not correction
    deep = twin.get_params(deep=True)
    for key, value in params.items():
        if key == "cav" and cav is not None:
            assert isinstance(deep["cav"], CAV) and deep["cav"] is not cav
            assert deep["cav__pooling"] == "mean"
        else:
            assert deep[key] == value, key
    assert twin.set_params(batch_size=7) is twin and twin.batch_size == 7
    if cav is not None:
        twin.set_params(cav__method="svm")
        assert twin.cav.method == "svm" and cav.method == "mass_mean"
    with pytest.raises(InvalidParameterError, match="has no parameter 'n_layers'"):
        twin.set_params(n_layers=3)


BAD = [
    # (correction, parameter, bad value, expected words)
    ("pclarc", "alpha", -1.0, "alpha must be a number in [0, inf]"),
    ("pclarc", "alpha", float("nan"), "alpha must be"),
    ("pclarc", "pooling", "none", "pooling must be one of 'flatten'"),
    ("pclarc", "cav_method", "lda", "cav_method must be one of"),
    ("pclarc", "cav_samples", -2, "cav_samples must be"),
    ("pclarc", "batch_size", 0, "batch_size must be an int in [1, inf]"),
    ("pclarc", "gradient", "detach", "gradient must be one of 'exact'"),
    ("pclarc", "cav", "features", "cav must be None or a CAV"),
    ("pclarc", "device", "gpu7", "device must be None, a device string"),
    ("pclarc", "progress", "yes", "progress must be a bool"),
    ("pclarc", "layers", [], "layers must be None or a layer name"),
    ("aclarc", "augment_fraction", 1.5, "augment_fraction must be a number in [0, 1]"),
    ("aclarc", "epochs", -1, "epochs must be an int in [0, inf]"),
    ("aclarc", "lr", 0.0, "lr must be a number in (0, inf)"),
    ("aclarc", "optimizer", "lbfgs", "optimizer must be 'adam', 'adamw', 'sgd'"),
    ("aclarc", "trainable", "head", "trainable must be 'above', 'all'"),
    ("aclarc", "seed", -1, "seed must be None, an int >= 0 or a torch.Generator; got -1"),
    ("aclarc", "seed", 1.5, "seed must be None, an int >= 0 or a torch.Generator; got 1.5"),
    ("aclarc", "head", 1.5, "head must be"),
    ("aclarc", "criterion", 3, "criterion must be None or a callable"),
    ("rrclarc", "lambda_rr", -1.0, "lambda_rr must be a number in [0, inf]"),
    ("rrclarc", "loss", "l3", "loss must be one of 'l2', 'l1', 'cosine'"),
    ("rrclarc", "masking", "top", "masking must be one of 'max_logit'"),
    ("rrclarc", "target", -1, "target must be None or an int in [0, inf]"),
    ("rrr", "lambda_rrr", -0.1, "lambda_rrr must be a number in [0, inf]"),
    ("rrr", "masking", "all", "masking must be one of 'true_label', 'sum_log_probs'"),
    ("rrr", "normalize", "yes", "normalize must be a bool"),
    ("rrr", "epochs", 2.5, "epochs must be an int"),
    ("rrr", "seed", "0", "seed must be None, an int >= 0 or a torch.Generator"),
]


@pytest.mark.parametrize("name,param,value,words", BAD)
def test_every_parameter_is_validated_at_fit(name, param, value, words, base_model, watermark):
    correction = make(name)
    correction.set_params(**{param: value})  # the constructor and set_params store only
    assert getattr(correction, param) is value
    before = copy.deepcopy(base_model.state_dict())
    with pytest.raises(InvalidParameterError) as info:
        fit(correction, base_model, watermark)
    assert words in str(info.value)
    assert type(correction).__name__ in str(info.value) or param in str(info.value)
    for key, tensor in base_model.state_dict().items():
        assert torch.equal(tensor, before[key]), key
    assert hook_count(base_model) == 0


@pytest.mark.parametrize("name", ["p-clarc", "a-clarc", "rr-clarc"])
def test_soft_artifact_labels_are_refused(name, base_model, watermark):
    soft = watermark.train.artifact.float() * 0.6
    with pytest.raises(InvalidParameterError, match="0/1"):
        make(name).fit(base_model, (watermark.train.images, watermark.train.labels), soft)
    acts = torch.randn(len(soft), 512)
    with pytest.raises(InvalidParameterError, match="0/1"):
        PClarc("features").fit(None, activations=acts, artifact_labels=soft)


def test_one_fit_signature_for_every_clarc():
    signatures = {cls: list(inspect.signature(cls.fit).parameters)
                  for cls in (PClarc, AClarc, RRClarc)}
    expected = ["self", "model", "data", "artifact_labels", "labels", "activations"]
    assert all(params == expected for params in signatures.values()), signatures


def test_every_correction_is_in_the_registry_and_fits_model_then_data():
    import latentsurgeon.correct as correct

    public = {obj for name in correct.__all__ if isinstance(obj := getattr(correct, name), type)
              and issubclass(obj, Correction) and obj is not Correction}
    assert public == {entry.cls for entry in REGISTRY.values()}
    for entry in REGISTRY.values():
        assert list(inspect.signature(entry.cls.fit).parameters)[:3] == ["self", "model", "data"]
        assert entry.modifies_weights == (entry.cls is not PClarc)
        assert entry.takes_layer == (entry.cls is not ExplanationRegularization)
    assert correction_entry("P-ClArC") is REGISTRY["p-clarc"]
    assert correction_entry("rr_clarc") is REGISTRY["rr-clarc"]


def test_registry_entries_build_fresh_copies_and_refuse_unknown_overrides():
    entry = REGISTRY["p-clarc"]
    first = entry.build()
    first.alpha = 3.0
    assert entry.build().alpha == 1.0 and entry.settings["alpha"] == 1.0
    with pytest.raises(TypeError):
        entry.settings["alpha"] = 2.0  # read-only
    with pytest.raises(InvalidParameterError, match="has no parameter seed"):
        entry.build(seed=3)
    with pytest.raises(InvalidParameterError, match="has no parameter layer"):
        REGISTRY["rrr"].build(layer="features")
    with pytest.raises(InvalidParameterError, match="name must be one of p-clarc"):
        correction_entry("lrp")


@pytest.mark.parametrize("name", NAMES)
def test_corrected_is_fit_then_export_and_leaves_the_model_alone(name, base_model, watermark):
    before = copy.deepcopy(base_model.state_dict())
    x = watermark.poisoned.images[:16]
    corrected = make(name).corrected(base_model, watermark.correction_data())
    assert corrected is not base_model and not corrected.training
    assert hook_count(corrected) == 0
    for key, tensor in base_model.state_dict().items():
        assert torch.equal(tensor, before[key]), key
    twin = copy.deepcopy(base_model)
    by_hand = make(name).fit(twin, watermark.correction_data())
    with torch.no_grad():
        torch.testing.assert_close(corrected(x), by_hand.export(twin)(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_a_correction_refuses_other_weights(name, base_model, watermark):
    """The fingerprint of the weights a correction applies to is recorded at fit: a model of the
    same architecture with other weights (for a training correction: the model before its
    fine-tuning) is refused by attach, applied and export, or warned about on request."""
    model = copy.deepcopy(base_model)
    correction = fit(make(name), model, watermark)
    assert isinstance(correction.fingerprint_, str)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    state = copy.deepcopy(other.state_dict())
    for call in (correction.attach, correction.export,
                 lambda m: correction.applied(m).__enter__()):
        with pytest.raises(ModelMismatchError) as info:
            call(other)
        assert "model has other weights" in str(info.value)
        assert correction.fingerprint_[:16] in str(info.value)
    assert hook_count(other) == 0
    for key, tensor in other.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    if correction.modifies_weights:  # the weights before fine-tuning lack the correction
        with pytest.raises(ModelMismatchError, match="fine-tuned"):
            correction.export(base_model)
    with pytest.warns(UserWarning, match="other weights"):
        correction.attach(other, allow_other_weights=True).remove()
    correction.attach(model).remove()  # its own weights: no error, no warning


def test_a_correction_fitted_without_a_model_is_not_checked(base_model, watermark):
    acts = torch.randn(60, 32, 4, 4)
    artifact = torch.arange(60) % 2 == 0
    pc = PClarc("features").fit(None, activations=acts, artifact_labels=artifact)
    assert pc.fingerprint_ is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pc.attach(base_model).remove()


def test_rrr_keeps_the_positional_form_and_the_old_keyword(nets):
    x, y, _ = nets.tiny_data()
    masks = torch.zeros_like(x)
    masks[:, :2] = 1
    model = nn.Sequential(nn.Linear(5, 3))
    a, b, c = (copy.deepcopy(model) for _ in range(3))
    ExplanationRegularization(epochs=1, batch_size=8, progress=False).fit(a, x, y, masks)
    from latentsurgeon.activations.batching import Samples

    ExplanationRegularization(epochs=1, batch_size=8, progress=False).fit(
        b, Samples(x, labels=y, masks=masks))
    with pytest.warns(FutureWarning, match="images= is deprecated; use data="):
        ExplanationRegularization(epochs=1, batch_size=8, progress=False).fit(
            c, images=x, labels=y, shortcut_masks=masks)
    for other in (b, c):
        for pa, pb in zip(a.parameters(), other.parameters(), strict=True):
            assert torch.equal(pa, pb)


def test_seed_system_spellings_are_supported_aliases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # supported aliases do not warn
        assert PClarc(layer_name="features").layer == "features"
        assert PClarc(cav_layers=["a", "b"]).layers == ["a", "b"]
        assert AClarc(layer_names=["a"]).layers == ["a"]
        assert RRClarc(layer_name="x", target_class=3).target == 3
        rrr = ExplanationRegularization(n_epochs=4, random_state=9)
    assert (rrr.epochs, rrr.seed) == (4, 9)
    assert ALIASES["RRClarc"]["target_class"] == "target"
    assert ALIASES["ExplanationRegularization"]["target"] == "masking"
    with pytest.raises(InvalidParameterError, match="not both"):
        ExplanationRegularization(epochs=3, n_epochs=4)


@pytest.mark.parametrize("name", ["a-clarc", "rr-clarc"])
def test_trained_clarc_accepts_loaders_and_device(name, base_model, watermark):
    split = watermark.train
    loader = DataLoader(TensorDataset(split.images, split.labels, split.artifact), batch_size=100)
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    cls = AClarc if name == "a-clarc" else RRClarc
    cls("features", epochs=1, device="cpu", progress=False).fit(a, loader)
    cls("features", epochs=1, progress=False).fit(b, split)
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_fit_does_not_move_a_model_that_trains_where_it_is(name, base_model, watermark):
    """device=None: the CAV extraction, the parameter search and the training run where the
    model is; nothing calls model.to()."""
    moves = []
    original = base_model.to

    def spy(*args, **kwargs):
        moves.append((args, kwargs))
        return original(*args, **kwargs)

    base_model.to = spy
    fit(make(name), base_model, watermark)
    assert moves == []


def test_data_without_artifact_labels_is_refused(base_model, watermark):
    with pytest.raises(LatentSurgeonError, match="artifact labels"):
        AClarc("features", progress=False).fit(
            base_model, (watermark.train.images, watermark.train.labels))
    with pytest.raises(LatentSurgeonError, match="class labels"):
        RRClarc("features", progress=False).fit(base_model, watermark.train.images)


def test_default_settings_build_every_correction():
    for name, cls in (("pclarc", PClarc), ("aclarc", AClarc), ("rrclarc", RRClarc),
                      ("rrr", ExplanationRegularization),
                      ("rrr_finetune", ExplanationRegularization)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the settings use the canonical names
            assert isinstance(cls(**default_settings(name)), cls)
    assert default_settings("P-ClArC") == default_settings("pclarc")
    settings = default_settings("pclarc")
    settings["alpha"] = 5.0
    assert default_settings("pclarc")["alpha"] == 1.0  # a fresh copy every time
    with pytest.raises(InvalidParameterError, match="one of pclarc"):
        default_settings("lrp")


def test_a_model_with_all_parameters_frozen_is_refused(nets):
    x, y, artifact = nets.tiny_data()
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(LatentSurgeonError, match="requires_grad=False"):
        AClarc("1", epochs=1, cav_samples="all", progress=False).fit(model, (x, y, artifact))
    assert not any(p.requires_grad for p in model.parameters())
