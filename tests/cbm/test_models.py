"""The concept models: output structure, the estimator contract, seeded training through the one
loop, the three CBM schemes, CEM's mixing and RandInt, the black box, bad input."""

from __future__ import annotations

import pytest
import torch
from sklearn.base import clone

import latentsurgeon.cbm.models as models_module
from latentsurgeon.cbm import (
    BlackBoxModel,
    ConceptBottleneckModel,
    ConceptEmbeddingModel,
    ConceptOutput,
    GroundTruthIntervention,
    UniformPolicy,
    intervention,
)
from latentsurgeon.data import toy_concepts
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    NotFittedError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import hooked
from latentsurgeon.metrics import accuracy

FAST = {"epochs": 5, "hidden": (16,), "head_hidden": 8}


@pytest.fixture(scope="module")
def trig():
    return toy_concepts("trigonometry", n_train=300, n_test=200, seed=0)


@pytest.mark.parametrize("cls", [ConceptBottleneckModel, ConceptEmbeddingModel])
def test_output_structure_and_the_named_concept_layer(cls, trig):
    model = cls(7, 3, 2, **FAST).fit(trig.train)
    x = trig.test.inputs
    seen = {}
    with hooked(model, "concepts", forward=lambda n, m, i, o: seen.setdefault("out", o)), \
            torch.no_grad():
        out = model(x)
    assert isinstance(out, ConceptOutput)
    assert out.logits.shape == (200, 2) and out.concept_logits.shape == (200, 3)
    assert torch.equal(seen["out"], out.concept_logits)  # the layer's output is the logits
    # predict_task runs what follows the concept layer
    inputs = (model.embeddings(model.encoder(x)),) if cls is ConceptEmbeddingModel else ()
    with torch.no_grad():
        assert torch.allclose(model.predict_task(out.concept_logits, *inputs), out.logits)
    assert 0.0 <= accuracy(model, trig.test) <= 1.0  # the one accuracy function reads .logits
    assert not model.training


def test_estimator_contract(trig, tmp_path):
    model = ConceptBottleneckModel(7, 3, 2, head_kind="mlp", scheme="sequential", **FAST)
    params = model.get_params()
    assert params["scheme"] == "sequential" and params["hidden"] == (16,)
    assert model.set_params(lr=0.01) is model and model.lr == 0.01
    # an architecture parameter set after construction takes effect at fit
    wider = ConceptBottleneckModel(7, 3, 2, **FAST).set_params(hidden=(8, 4)).fit(trig.train)
    assert [m.out_features for m in wider.encoder if hasattr(m, "out_features")] == [8, 4]
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    # the same seed builds the same initial weights
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(),
                                                 model.state_dict().values(), strict=True))
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "m.pt")
    assert model.fit(trig.train) is model
    model.save(tmp_path / "m.pt")
    loaded = ConceptBottleneckModel.load(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(loaded(trig.test.inputs).logits, model(trig.test.inputs).logits)
    assert loaded.history_ == model.history_ and loaded.get_params() == model.get_params()
    with pytest.raises(LatentSurgeonError, match="ConceptEmbeddingModel.load|not a"):
        ConceptEmbeddingModel.load(tmp_path / "m.pt")
    with pytest.raises(InvalidParameterError, match="head"):
        ConceptBottleneckModel(7, 3, 2, head_kind="deep")
    with pytest.raises(InvalidParameterError, match="scheme"):
        ConceptBottleneckModel(7, 3, 2, scheme="hybrid")


def test_training_is_seeded_restarts_and_leaves_the_global_rng(trig):
    state = torch.get_rng_state()
    a = ConceptEmbeddingModel(7, 3, 2, seed=3, **FAST).fit(trig.train)
    assert torch.equal(torch.get_rng_state(), state)
    b = ConceptEmbeddingModel(7, 3, 2, seed=3, **FAST).fit(trig.train)
    c = ConceptEmbeddingModel(7, 3, 2, seed=4, **FAST).fit(trig.train)
    weights = lambda m: torch.cat([p.flatten() for p in m.parameters()])  # noqa: E731
    assert torch.equal(weights(a), weights(b)) and not torch.equal(weights(a), weights(c))
    a.fit(trig.train)  # a second fit starts from the seeded initialisation again
    assert torch.equal(weights(a), weights(b))
    # the unfitted model holds that initialisation; seed=None draws a fresh one every time
    unfitted = ConceptEmbeddingModel(7, 3, 2, seed=3, **FAST)
    a.set_params(epochs=1)._reinitialise()
    assert torch.equal(weights(unfitted), weights(a))
    fresh = ConceptEmbeddingModel(7, 3, 2, seed=None, **FAST)
    first = weights(fresh).clone()
    fresh._reinitialise()
    assert not torch.equal(first, weights(fresh))


def test_every_scheme_trains_through_the_one_loop(trig, monkeypatch):
    calls = []
    real = models_module.train

    def spy(model, data, loss_fn, **kwargs):
        calls.append((kwargs["desc"], kwargs["params"]))
        return real(model, data, loss_fn, **kwargs)

    monkeypatch.setattr(models_module, "train", spy)
    runs = {}
    for scheme in ("joint", "sequential", "independent"):
        calls.clear()
        runs[scheme] = ConceptBottleneckModel(7, 3, 2, scheme=scheme, **FAST).fit(trig.train)
        expected = ["cbm joint"] if scheme == "joint" else ["cbm concepts", "cbm head"]
        assert [desc for desc, _ in calls] == expected
        assert set(runs[scheme].history_) == ({"joint"} if scheme == "joint"
                                              else {"concepts", "head"})
    calls.clear()
    ConceptEmbeddingModel(7, 3, 2, **FAST).fit(trig.train)
    BlackBoxModel(7, 2, **FAST).fit(trig.train)
    assert [desc for desc, _ in calls] == ["cem joint", "black box"]
    # sequential and independent share the first stage (same seed, data, loss) exactly, and
    # their second stage leaves the concept predictor alone
    seq, ind = runs["sequential"], runs["independent"]
    predictor = lambda m: [*m.encoder.parameters(), *m.concepts.parameters()]  # noqa: E731
    assert all(torch.equal(p, q) for p, q in zip(predictor(seq), predictor(ind), strict=True))
    assert not torch.equal(seq.task_head[0].weight, ind.task_head[0].weight)
    assert not all(torch.equal(p, q) for p, q in zip(predictor(runs["joint"]), predictor(ind),
                                                      strict=True))


def test_independent_head_is_trained_on_the_true_concepts():
    # xor with an MLP head: a head trained on the true concepts predicts them perfectly
    data = toy_concepts("xor", n_train=600, n_test=200, seed=1)
    model = ConceptBottleneckModel(2, 2, 2, head_kind="mlp", scheme="independent", epochs=40,
                                   seed=1).fit(data.train)
    with torch.no_grad():
        logits = model.task_head(data.test.concepts)
    assert float((logits.argmax(1) == data.test.labels).float().mean()) == 1.0


def test_cem_mixes_the_two_embeddings_by_the_concept_probability(trig):
    model = ConceptEmbeddingModel(7, 3, 2, embedding_size=4, **FAST)
    emb = torch.randn(5, 3, 2, 4)
    assert torch.allclose(model.mix(torch.ones(5, 3), emb), emb[:, :, 0].flatten(1))
    assert torch.allclose(model.mix(torch.zeros(5, 3), emb), emb[:, :, 1].flatten(1))
    half = model.mix(torch.full((5, 3), 0.5), emb)
    assert torch.allclose(half, emb.mean(2).flatten(1))
    assert model.task_head[0].in_features == 3 * 4


def test_randint_makes_the_cem_follow_interventions():
    """On xor (complete concepts) a CEM trained with RandInt obeys its concepts: flipping them
    flips nearly every prediction."""
    data = toy_concepts("xor", n_train=800, n_test=400, seed=0)
    model = ConceptEmbeddingModel(2, 2, 2, epochs=25, seed=0).fit(data.train)
    flipped = GroundTruthIntervention(1 - data.test.concepts, space="probs")
    with intervention(model, "concepts", flipped, UniformPolicy()):
        assert accuracy(model, data.test, batch_size=400) < 0.1
    assert accuracy(model, data.test) > 0.9


def test_black_box_has_no_concept_layer(trig):
    model = BlackBoxModel(7, 2, **FAST).fit(trig.train)  # a ConceptSplit's concepts are ignored
    assert not hasattr(model, "concepts")
    with torch.no_grad():
        assert model(trig.test.inputs).shape == (200, 2)
    cbm = ConceptBottleneckModel(7, 3, 2, head_kind="mlp", **FAST)
    assert [m.out_features for m in model.encoder if hasattr(m, "out_features")] == \
        [m.out_features for m in cbm.encoder if hasattr(m, "out_features")]


def test_bad_data_is_refused(trig):
    x, y, c = trig.train
    model = ConceptBottleneckModel(7, 3, 2, **FAST)
    with pytest.raises(ShapeMismatchError, match="7 input values"):
        model.fit(x[:, :5], y, c)
    with pytest.raises(InvalidParameterError, match=r"labels must lie in \[0, 1\]"):
        model.fit(x, y + 1, c)
    with pytest.raises(ShapeMismatchError, match="concepts must have shape"):
        model.fit(x, y, c[:, :2])
    with pytest.raises(InvalidParameterError, match="probabilities"):
        model.fit(x, y, c * 2)
    with pytest.raises(InvalidParameterError, match="concept labels"):
        model.fit(x, y)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        model.fit(bad, y, c)
    with pytest.raises(InvalidParameterError, match="epochs"):
        model.set_params(epochs=0).fit(trig.train)


@pytest.mark.parametrize("cls", [ConceptBottleneckModel, ConceptEmbeddingModel, BlackBoxModel])
def test_a_loaded_model_behaves_exactly_as_the_saved_one(cls, trig, tmp_path):
    from latentsurgeon._estimator import Estimator

    args = (7, 2) if cls is BlackBoxModel else (7, 3, 2)
    model = cls(*args, **FAST, seed=3).fit(trig.train)
    model.save(tmp_path / "m.pt")
    for loaded in (cls.load(tmp_path / "m.pt"), Estimator.load(tmp_path / "m.pt"),
                   models_module._ConceptModelBase.load(tmp_path / "m.pt")):
        assert type(loaded) is cls and not loaded.training
        assert loaded.history_ == model.history_ and loaded.get_params() == model.get_params()
        with torch.no_grad():
            a, b = model(trig.test.inputs), loaded(trig.test.inputs)
        for x, y in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b],
                        strict=True):
            assert torch.equal(x, y)
        # fitting the loaded one again gives the model fitting the saved one's recipe gives
        refit = cls.load(tmp_path / "m.pt").fit(trig.train)
        assert all(torch.equal(p, q) for p, q in zip(refit.state_dict().values(),
                                                     model.state_dict().values(), strict=True))


def test_a_generator_seed_is_reproducible_and_int_seeds_are_unchanged(trig):
    def fitted(seed):
        return ConceptBottleneckModel(7, 3, 2, **FAST, seed=seed).fit(trig.train)

    a = fitted(torch.Generator().manual_seed(11))
    b = fitted(torch.Generator().manual_seed(11))
    c = fitted(torch.Generator().manual_seed(12))
    weights = [list(m.state_dict().values()) for m in (a, b, c)]
    assert all(torch.equal(p, q) for p, q in zip(weights[0], weights[1], strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(weights[0], weights[2], strict=True))
    # the constructor leaves the caller's generator alone; each fit draws from it
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    model = ConceptBottleneckModel(7, 3, 2, **FAST, seed=generator)
    assert torch.equal(generator.get_state(), state)
    model.fit(trig.train)
    assert not torch.equal(generator.get_state(), state)
    assert isinstance(model.history_["joint"]["seed"], int)  # the int the run drew
    # an int seed initialises every layer right after torch.manual_seed(seed), as before
    seeded = ConceptBottleneckModel(7, 3, 2, **FAST, seed=4)
    with torch.random.fork_rng():
        ref = ConceptBottleneckModel(7, 3, 2, **FAST, seed=None)
        torch.manual_seed(4)
        for m in [m for m in ref.modules() if m is not ref and hasattr(m, "reset_parameters")]:
            m.reset_parameters()
    assert all(torch.equal(p, q) for p, q in zip(seeded.state_dict().values(),
                                                 ref.state_dict().values(), strict=True))


def test_earlier_spellings_head_and_inputs_build_and_fit_the_same_model(xor_small):
    new = ConceptBottleneckModel(xor_small.n_features, xor_small.n_concepts, 2, head_kind="mlp",
                                 **FAST).fit(xor_small.train)
    with pytest.warns(FutureWarning) as record:
        old = ConceptBottleneckModel(xor_small.n_features, xor_small.n_concepts, 2, head="mlp",
                                     **FAST)
        train = xor_small.train
        old.fit(inputs=train.inputs, labels=train.labels, concepts=train.concepts)
    messages = " ".join(str(w.message) for w in record)
    assert "head= is deprecated; use head_kind=" in messages
    assert "inputs= is deprecated; use data=" in messages
    assert old.head_kind == "mlp" and old.get_params()["head_kind"] == "mlp"
    for a, b in zip(new.state_dict().values(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b)
