"""The bad-input corpus of the Python API: every case raises our exception with a message naming
the argument (and, for values, what was expected and what was given), and leaves the model and the
stores exactly as they were (see ``_harness.check``)."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from latentsurgeon.activations import ActivationStore, capture, layer_outputs
from latentsurgeon.cbm import (
    ConceptBottleneckModel,
    GroundTruthIntervention,
    UniformPolicy,
    build_mask,
    intervention,
)
from latentsurgeon.concepts import CAV, LeaceEraser, probe_layers, tcav
from latentsurgeon.correct import (
    REGISTRY,
    AClarc,
    ExplanationRegularization,
    PClarc,
    RRClarc,
    add_clarc_hook,
    correction_entry,
    default_settings,
)
from latentsurgeon.data import beats, decoy_digits, paste_watermark, toy_concepts
from latentsurgeon.errors import (
    DeviceMismatchError,
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
    ModelMismatchError,
    NonFiniteError,
    NotFittedError,
    ShapeMismatchError,
    StoreError,
)
from latentsurgeon.explain import (
    InfluenceFunctions,
    NearestNeighbours,
    SimplEx,
    TracIn,
    label_free_attribution,
    top_examples,
)
from latentsurgeon.hooks import get_layer, hooked, resolve_layers
from latentsurgeon.intervene import SteeringVector, patch
from latentsurgeon.metrics import accuracy, artifact_relevance, gap_closed, shortcut_gap
from latentsurgeon.models import DigitCNN, train_autoencoder, train_classifier

from ._harness import Case, check

DATA = decoy_digits("watermark", seed=0)
X = DATA.test.images[:8]
Y = DATA.test.labels[:8]
MASKS = DATA.poisoned.masks[:8]


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = DigitCNN()
    model.train()  # the state a call must leave alone, not eval
    model.classifier[3].bias.requires_grad_(False)
    return model


MODEL = _model()


def _fitted_elsewhere() -> PClarc:
    """A P-ClArC fitted on a model of MODEL's architecture with other weights."""
    torch.manual_seed(1)
    return PClarc("features", progress=False).fit(DigitCNN(), DATA.train)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "acts"
    ActivationStore.extract(copy.deepcopy(MODEL), DATA.train.images[:64], ["features.0"], path,
                            pooling="max", progress=False)
    return path


def _enter(context):
    with context:
        pass


def _steer(model: nn.Module, steering: SteeringVector) -> None:
    with steering.applied(model):
        model(X)


def _nan(x: torch.Tensor) -> torch.Tensor:
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    return bad


def cases(store) -> list[Case]:
    m = MODEL
    mm = (m,)
    return [
        # -- hooks --------------------------------------------------------------------------------
        Case("hooked without a hook function", lambda: _enter(hooked(m, "features")),
             InvalidParameterError, ["forward=", "got none"], mm),
        Case("hooked with a PyTorch-style hook", lambda: _enter(hooked(
            m, "features", forward=lambda mod, i, o: o)), InvalidParameterError,
             ["forward", "fn(name, module, inputs, output)", "(mod, i, o)"], mm),
        Case("an int as a layer selector", lambda: resolve_layers(m, 3), InvalidParameterError,
             ["layers must be", "3"], mm),
        Case("a misspelt layer", lambda: resolve_layers(m, "featurs"), LayerNotFoundError,
             ["featurs", "did you mean", "'features'"], mm),
        Case("a bad regex", lambda: resolve_layers(m, "re:["), LayerNotFoundError,
             ["re:[", "regular expression"], mm),
        Case("get_layer of a glob", lambda: get_layer(m, "features.*"), LayerNotFoundError,
             ["features.*", "6 layers", "one exact layer name"], mm),
        # -- activations --------------------------------------------------------------------------
        Case("capture of an unknown layer", lambda: _enter(capture(m, "classifer")),
             LayerNotFoundError, ["classifer", "did you mean"], mm),
        Case("layer_outputs with batch_size 0", lambda: layer_outputs(m, "features", X,
                                                                      batch_size=0),
             InvalidParameterError, ["batch_size", ">= 1", "got 0"], mm),
        Case("layer_outputs of a tabular model given rows of another width", lambda: layer_outputs(
            nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "1", torch.rand(5, 6)), ShapeMismatchError,
             ["data: the model cannot take inputs of shape (5, 6)", "cannot be multiplied"]),
        Case("layer_outputs of NaN inputs", lambda: layer_outputs(m, "features", _nan(X)),
             NonFiniteError, ["features", "nan", "rows 1"], mm),
        Case("layer_outputs with an unknown pooling", lambda: layer_outputs(
            m, "features", X, pooling="median"), InvalidParameterError,
             ["pooling", "median", "max"], mm),
        Case("integer images for a float model", lambda: layer_outputs(
            m, "features", (X * 255).long()), InvalidParameterError,
             ["int64", "float"], mm),
        Case("a model on the meta device", lambda: layer_outputs(
            DigitCNN().to("meta"), "features", X), InvalidParameterError, ["meta"]),
        Case("analysis on another device", lambda: layer_outputs(m, "features", X, device="meta"),
             DeviceMismatchError, ["device", "cpu", "meta"], mm),
        Case("store path that is a file", lambda: ActivationStore.extract(
            m, X, "features", store / "manifest.json", progress=False), StoreError,
             ["manifest.json", "existing file"], mm, (store,)),
        Case("overwriting a store with bad inputs", lambda: ActivationStore.extract(
            m, _nan(X), "features.0", store, pooling="max", overwrite=True, progress=False),
             NonFiniteError, ["features.0", "nan"], mm, (store,)),
        Case("reusing a store with another model", lambda: ActivationStore(store, model=DigitCNN()),
             StoreError, ["other weights", "overwrite=true"], (), (store,)),
        Case("extracting into a store of other layers", lambda: ActivationStore.extract(
            m, DATA.train.images[:64], "features.3", store, progress=False), StoreError,
             ["layers", "overwrite=true"], mm, (store,)),
        Case("a store that does not exist", lambda: ActivationStore(store.parent / "nothing"),
             StoreError, ["no activation store", "nothing"]),
        Case("a store dtype", lambda: ActivationStore.extract(
            m, X, "features", store.parent / "dtype", dtype="int8", progress=False),
             InvalidParameterError, ["dtype", "float32", "int8"], mm),
        # -- intervene ----------------------------------------------------------------------------
        Case("patch with an unknown direction", lambda: patch(
            m, "features", X, X, lambda o: o.sum(), direction="up", progress=False),
             InvalidParameterError, ["direction", "clean_to_corrupted", "up"], mm),
        Case("patch of unpaired inputs", lambda: patch(
            m, "features", X, X[:3], lambda o: o.sum(), progress=False), ShapeMismatchError,
             ["paired", "8 source", "3 target"], mm),
        Case("a steering vector of the wrong size", lambda: _steer(
            m, SteeringVector.from_vector("features", torch.ones(7))), ShapeMismatchError,
             ["features", "(32,)", "(7,)"], mm),
        Case("a NaN steering vector", lambda: SteeringVector.from_vector(
            "features", torch.full((32,), float("nan"))), NonFiniteError, ["steering vector"]),
        Case("an unfitted steering vector", lambda: SteeringVector("features").attach(m),
             NotFittedError, ["SteeringVector", "fit()"], mm),
        Case("steering alpha NaN", lambda: SteeringVector("features", alpha=float("nan")).fit(
            m, X, X), InvalidParameterError, ["alpha", "nan"], mm),
        # -- correct ------------------------------------------------------------------------------
        Case("P-ClArC on a misspelt layer", lambda: PClarc("featurs").fit(m, DATA.train),
             LayerNotFoundError, ["featurs", "did you mean"], mm),
        Case("P-ClArC alpha as text", lambda: PClarc("features", alpha="x").fit(m, DATA.train),
             InvalidParameterError, ["alpha", "a number", "'x'"], mm),
        Case("P-ClArC without artifact labels", lambda: PClarc("features").fit(
            m, (DATA.train.images, DATA.train.labels)), Exception, ["artifact labels"], mm),
        Case("soft artifact labels", lambda: PClarc("features").fit(
            m, DATA.train, artifact_labels=torch.full((len(DATA.train),), 0.6)),
             InvalidParameterError, ["artifact", "0.6"], mm),
        Case("A-ClArC negative epochs", lambda: AClarc("features", epochs=-1).fit(m, DATA.train),
             InvalidParameterError, ["epochs", "[0, inf]", "-1"], mm),
        Case("A-ClArC augment_fraction 2", lambda: AClarc(
            "features", augment_fraction=2.0).fit(m, DATA.train), InvalidParameterError,
             ["augment_fraction", "[0, 1]", "2.0"], mm),
        Case("RR-ClArC negative lambda", lambda: RRClarc("features", lambda_rr=-1).fit(
            m, DATA.train), InvalidParameterError, ["lambda_rr", "[0, inf]", "-1"], mm),
        Case("RR-ClArC unknown masking", lambda: RRClarc("features", masking="min_logit").fit(
            m, DATA.train), InvalidParameterError, ["masking", "max_logit", "min_logit"], mm),
        Case("RR-ClArC target_logit without a target", lambda: RRClarc(
            "features", masking="target_logit").fit(m, DATA.train), InvalidParameterError,
             ["target_logit", "target"], mm),
        Case("RRR negative lambda", lambda: ExplanationRegularization(lambda_rrr=-1).fit(
            m, DATA.train), InvalidParameterError, ["lambda_rrr", "-1"], mm),
        Case("RRR labels out of range", lambda: ExplanationRegularization(epochs=1).fit(
            m, X, torch.full((8,), 11), MASKS), InvalidParameterError,
             ["labels", "[0, 9]", "11"], mm),
        Case("RRR masks of another count", lambda: ExplanationRegularization(epochs=1).fit(
            m, X, Y, torch.zeros(3, 1, 16, 16)), ShapeMismatchError, ["shortcut_masks", "(3, 1, 16, 16)"],
             mm),
        Case("a zero ClArC direction", lambda: add_clarc_hook(
            m, torch.zeros(512), torch.zeros(512), "features"), InvalidParameterError,
             ["cav", "non-zero", "norm 0"], mm),
        Case("settings of an unknown method", lambda: default_settings("lrp"),
             InvalidParameterError, ["method", "pclarc", "lrp"]),
        Case("a registry correction of an unknown name", lambda: correction_entry("lrp"),
             InvalidParameterError, ["name", "p-clarc", "lrp"]),
        Case("a registry override the class lacks", lambda: REGISTRY["p-clarc"].build(seed=1),
             InvalidParameterError, ["PClarc", "no parameter seed"]),
        Case("corrected() without data", lambda: PClarc("features").corrected(m, None),
             LatentSurgeonError, ["model and data"], mm),
        Case("a correction attached to other weights", lambda: _fitted_elsewhere().attach(m),
             ModelMismatchError, ["model has other weights", "expected fingerprint", "got"], mm),
        Case("a correction exported from other weights", lambda: _fitted_elsewhere().export(m),
             ModelMismatchError, ["model has other weights", "allow_other_weights"], mm),
        Case("check_weights of a non-model", lambda: _fitted_elsewhere().check_weights("cnn"),
             InvalidParameterError, ["model", "nn.Module", "str"]),
        # -- metrics ------------------------------------------------------------------------------
        Case("accuracy without labels", lambda: accuracy(m, X), Exception, ["labels"], mm),
        Case("accuracy on another device", lambda: accuracy(m, DATA.test, device="meta"),
             DeviceMismatchError, ["device", "cpu", "meta"], mm),
        Case("accuracy of unmatched labels", lambda: accuracy(m, (X, Y[:3])), ShapeMismatchError,
             ["8 inputs", "3 labels"], mm),
        Case("accuracy of empty data", lambda: accuracy(m, (X[:0], Y[:0])),
             InvalidParameterError, ["no samples"], mm),
        Case("accuracy of wrongly shaped images", lambda: accuracy(
            m, (torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))), ShapeMismatchError,
             ["(N, 1, 16, 16)", "(4, 3, 16, 16)"], mm),
        Case("shortcut_gap of NaN images", lambda: shortcut_gap(
            m, (_nan(X), Y), (X, Y)), NonFiniteError, ["nan"], mm),
        Case("artifact relevance without masks", lambda: artifact_relevance(m, X), Exception,
             ["artifact_relevance", "masks"], mm),
        Case("artifact relevance with a target out of range", lambda: artifact_relevance(
            m, X, MASKS, target=14), InvalidParameterError, ["target", "14"], mm),
        Case("artifact relevance with every mask empty", lambda: artifact_relevance(
            m, X, torch.zeros_like(MASKS)), InvalidParameterError,
             ["artifact_relevance", "no sample has a share", "masks are empty"], mm),
        Case("artifact relevance with an unknown method", lambda: artifact_relevance(
            m, X, MASKS, method="lrp"), InvalidParameterError, ["method", "input_x_gradient",
                                                                 "lrp"], mm),
        Case("gap_closed of something else", lambda: gap_closed({}, {}), InvalidParameterError,
             ["before", "clean_acc"]),
        # -- models -------------------------------------------------------------------------------
        Case("training with negative epochs", lambda: train_classifier(m, DATA.train, epochs=-1),
             InvalidParameterError, ["epochs", "[0, inf]", "-1"], mm),
        Case("training with lr 0", lambda: train_classifier(m, DATA.train, epochs=1, lr=0),
             InvalidParameterError, ["lr", "(0, inf)", "0"], mm),
        Case("training with batch_size 0", lambda: train_classifier(
            m, DATA.train, epochs=1, batch_size=0), InvalidParameterError,
             ["batch_size", "[1, inf]", "0"], mm),
        Case("training labels out of range", lambda: train_classifier(
            m, (X, torch.full((8,), 12)), epochs=1, progress=False), InvalidParameterError,
             ["labels", "[0, 9]", "12"], mm),
        Case("training on NaN inputs", lambda: train_classifier(
            m, (_nan(X), Y), epochs=1, progress=False), NonFiniteError,
             ["loss", "nan", "restored"], mm),
        Case("training with an unknown optimizer", lambda: train_classifier(
            m, DATA.train, epochs=1, optimizer="adagrad"), InvalidParameterError,
             ["optimizer", "adam", "adagrad"], mm),
        Case("training on a string", lambda: train_classifier(m, "digits", epochs=1),
             InvalidParameterError, ["data", "str"], mm),
        Case("an autoencoder recipe on a classifier", lambda: train_autoencoder(
            m, X, epochs=1, progress=False), ShapeMismatchError, ["(8, 1, 16, 16)", "(8, 10)"],
             mm),
        # -- data ---------------------------------------------------------------------------------
        Case("an unknown decoy kind", lambda: decoy_digits("ruler"), InvalidParameterError,
             ["kind", "watermark", "ruler"]),
        Case("a shortcut class out of range", lambda: decoy_digits(shortcut_class=12),
             InvalidParameterError, ["shortcut_class", "0..9", "12"]),
        Case("a decoy fraction above 1", lambda: decoy_digits(fraction=1.5),
             InvalidParameterError, ["fraction", "[0, 1]", "1.5"]),
        Case("a watermark on 3-D images", lambda: paste_watermark(torch.rand(3, 16, 16)),
             ShapeMismatchError, ["(N, C, H, W)", "(3, 16, 16)"]),
        Case("an unknown toy concept set", lambda: toy_concepts("circle"),
             InvalidParameterError, ["name", "xor", "circle"]),
        Case("beats with a negative count", lambda: beats(-5), InvalidParameterError,
             ["n", "-5"]),
        # -- explain ------------------------------------------------------------------------------
        Case("nearest neighbours with an unknown metric", lambda: NearestNeighbours(
            "manhattan").fit(None, torch.rand(5, 3)), InvalidParameterError,
             ["metric", "cosine", "manhattan"]),
        Case("representations of two sizes", lambda: NearestNeighbours().fit(
            None, torch.rand(5, 3)).explain(torch.rand(2, 4)), ShapeMismatchError, ["4", "3"]),
        Case("an unfitted explainer", lambda: NearestNeighbours().explain(torch.rand(2, 4)),
             NotFittedError, ["NearestNeighbours", "fit()"]),
        Case("SimplEx with a negative tolerance", lambda: SimplEx(tol=-1).fit(
            None, torch.rand(5, 3)),
             InvalidParameterError, ["tol", "[0, inf]", "-1"]),
        Case("TracIn without checkpoints", lambda: TracIn([], "cross_entropy").fit(
            m, DATA.train), Exception, ["checkpoint", "zeros"], mm),
        Case("TracIn with an unknown loss", lambda: TracIn("current", "hinge").fit(
            m, DATA.train), InvalidParameterError, ["loss", "cross_entropy", "hinge"], mm),
        Case("TracIn of NaN training images", lambda: TracIn("current", "cross_entropy").fit(
            m, (_nan(X), Y)), NonFiniteError, ["training gradients", "nan"], mm),
        Case("influence with negative damping", lambda: InfluenceFunctions(
            "cross_entropy", damping=-1).fit(m, DATA.train), InvalidParameterError,
             ["damping", "-1"], mm),
        Case("label-free attribution with a method name", lambda: label_free_attribution(
            m, X, "integrated_gradients"), InvalidParameterError, ["method", "captum", "str"], mm),
        Case("label-free attribution at an unknown layer", lambda: label_free_attribution(
            m, X, IntegratedGradients, layer="featurs", progress=False), LayerNotFoundError,
             ["featurs", "did you mean"], mm),
        Case("top examples beyond the training set", lambda: top_examples(torch.rand(3, 4), 7),
             InvalidParameterError, ["k", "4", "7"]),
        # -- concepts -----------------------------------------------------------------------------
        Case("tcav of a class the model does not have", lambda: tcav(
            m, "features", X, 12, X, random=X, n_runs=2, set_size=4, progress=False),
             InvalidParameterError, ["target=12", "10 outputs"], mm),
        Case("tcav of NaN concept inputs", lambda: tcav(
            m, "features", X, 0, _nan(X), random=X, n_runs=2, set_size=4, progress=False),
             NonFiniteError, ["concept inputs", "nan", "samples 1"], mm),
        Case("tcav with a significance above 1", lambda: tcav(
            m, "features", X, 0, X, random=X, n_runs=2, set_size=4, significance=1.5, progress=False),
             InvalidParameterError, ["significance", "(0, 1)", "1.5"], mm),
        Case("tcav with sets too small to hold out", lambda: tcav(
            m, "features", X, 0, X[:2], random=X, n_runs=2, set_size=2, progress=False),
             InvalidParameterError, ["test_size", "2 concept", "2 negative"], mm),
        Case("tcav at a misspelt layer", lambda: tcav(
            m, "featurs", X, 0, X, random=X, n_runs=2, set_size=4, progress=False),
             LayerNotFoundError, ["featurs", "did you mean"], mm),
        Case("a CAV of an unknown method", lambda: CAV(method="svm2").fit(
            torch.rand(10, 4), torch.arange(10) % 2), InvalidParameterError,
             ["method", "logistic", "svm2"]),
        Case("a CAV from soft labels", lambda: CAV().fit(torch.rand(10, 4), torch.rand(10)),
             InvalidParameterError, ["labels", "0/1", "soft labels"]),
        Case("a CAV with a negative C", lambda: CAV(C=-1.0).fit(
            torch.rand(10, 4), torch.arange(10) % 2), InvalidParameterError, ["C must", "-1.0"]),
        Case("LEACE with a label per sample missing", lambda: LeaceEraser().fit(
            torch.rand(10, 4), torch.arange(9) % 2), ShapeMismatchError,
             ["labels", "9 entries", "10 samples"]),
        Case("LEACE of NaN activations", lambda: LeaceEraser().fit(
            torch.rand(10, 4).index_fill(0, torch.tensor([1]), float("nan")), torch.arange(10) % 2),
             NonFiniteError, ["activations", "nan", "samples 1"]),
        Case("LEACE with an unknown pooling", lambda: LeaceEraser(pooling="median").fit(
            torch.rand(10, 4), torch.arange(10) % 2), InvalidParameterError,
             ["pooling", "channel", "median"]),
        Case("LEACE attached without a layer it knows", lambda: LeaceEraser().fit(
            torch.rand(10, 4), torch.arange(10) % 2).attach(m), InvalidParameterError,
             ["layer is needed", "fit(..., layer="], mm),
        Case("probes with a target missing", lambda: probe_layers(
            m, "features", X, torch.arange(7) % 2, progress=False), ShapeMismatchError,
             ["labels", "7 entries", "8 samples"], mm),
        # -- cbm ----------------------------------------------------------------------------------
        Case("a CBM with an unknown scheme", lambda: ConceptBottleneckModel(
            4, 2, 2, scheme="greedy").fit(torch.rand(10, 4), torch.randint(0, 2, (10,)),
                                          torch.rand(10, 2)), InvalidParameterError,
             ["scheme", "joint", "greedy"]),
        Case("a mask quantile above 1", lambda: build_mask(torch.rand(3, 4), quantile=2.0),
             InvalidParameterError, ["quantile", "[0, 1]", "2.0"]),
        Case("an intervention on a missing concept layer", lambda: _enter(intervention(
            m, "concepts", GroundTruthIntervention(), UniformPolicy())), LayerNotFoundError,
             ["concepts"], mm),
    ]


def _case_names() -> list[str]:
    return [c.name for c in cases(None)]


@pytest.mark.parametrize("name", _case_names())
def test_bad_input_is_refused_clearly_and_changes_nothing(name, store):
    case = next(c for c in cases(store) if c.name == name)
    check(case)


def test_the_corpus_covers_enough_cases():
    assert len(_case_names()) >= 60
    assert len(set(_case_names())) == len(_case_names())
