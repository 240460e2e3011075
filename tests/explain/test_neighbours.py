"""NearestNeighbours: closed-form scores and rankings, any batch size, stores, lfxai's defects."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.activations import ActivationStore
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.explain import NearestNeighbours, top_examples

from .conftest import images, make_ae

HAS_LFXAI = importlib.util.find_spec("lfxai") is not None


def reps(n: int, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def closed_form(test: np.ndarray, train: np.ndarray, metric: str) -> np.ndarray:
    out = np.empty((len(test), len(train)))
    for i, a in enumerate(test):
        for j, b in enumerate(train):
            if metric == "cosine":
                out[i, j] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            else:
                out[i, j] = 1.0 / np.sum((a - b) ** 2)
    return out


@pytest.mark.parametrize("metric", ["inverse_distance", "cosine"])
@pytest.mark.parametrize("batch_size", [1, 7, 40])
def test_scores_and_ranking_match_the_closed_form(metric, batch_size):
    train, test = reps(40), reps(13, seed=1)
    scores = NearestNeighbours(metric, batch_size=batch_size).scores(None, train, test)
    expected = closed_form(test.numpy(), train.numpy(), metric)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-12, atol=0)
    ranking = np.argsort(-expected, axis=1, kind="stable")[:, :5]
    assert np.array_equal(top_examples(scores, 5).numpy(), ranking)


def test_representations_from_a_model_layer_and_from_a_store(tmp_path):
    ae = make_ae()
    x_train, x_test = images(21), images(8, seed=3)
    with torch.no_grad():
        z_train, z_test = ae.encoder(x_train), ae.encoder(x_test)
    direct = NearestNeighbours("cosine").scores(None, z_train, z_test)
    through = NearestNeighbours("cosine", "encoder").scores(ae, x_train, x_test)
    torch.testing.assert_close(through, direct, rtol=0, atol=1e-14)
    store = ActivationStore.extract(ae, x_train, "encoder", tmp_path / "s", dtype="float64",
                                    progress=False)
    test_store = ActivationStore.extract(ae, x_test, "encoder", tmp_path / "t",
                                         dtype="float64", progress=False)
    from_store = NearestNeighbours("cosine").fit(None, store).explain(test_store)
    torch.testing.assert_close(from_store, direct, rtol=0, atol=1e-14)


def test_every_test_point_is_scored_including_the_last_partial_batch():
    """lfxai's attribute loops over int(n_test / batch_size) batches and leaves the rest at 0."""
    train, test = reps(30), reps(11, seed=1)
    scores = NearestNeighbours(batch_size=4).scores(None, train, test)
    assert bool((scores > 0).all())
    if HAS_LFXAI:
        from lfxai.explanations.examples import NearestNeighbours as LfxaiNN

        encoder = torch.nn.Identity()
        peer = LfxaiNN(torch.nn.Module(), X_train=train)
        peer.model.encoder = encoder
        theirs = peer.attribute(test, list(range(30)), batch_size=4)
        assert bool((theirs[8:] == 0).all())  # the defect this test guards against
        torch.testing.assert_close(scores[:8], theirs[:8].double(), rtol=1e-6, atol=0)


def test_an_identical_representation_gets_the_largest_finite_score():
    train = reps(6)
    scores = NearestNeighbours().scores(None, train, train[2:3])
    assert bool(torch.isfinite(scores).all())
    assert int(scores.argmax()) == 2


def test_contract_errors_and_save_load(tmp_path):
    from sklearn.base import clone

    nn_ = NearestNeighbours("cosine", batch_size=3)
    assert clone(nn_).get_params() == nn_.get_params()
    with pytest.raises(InvalidParameterError, match="metric"):
        NearestNeighbours("manhattan").fit(None, reps(4))
    fitted = nn_.fit(None, reps(9))
    with pytest.raises(ShapeMismatchError):
        fitted.explain(reps(2, d=4))
    fitted.save(tmp_path / "nn.pt")
    loaded = NearestNeighbours.load(tmp_path / "nn.pt")
    torch.testing.assert_close(loaded.explain(reps(3, seed=5)), fitted.explain(reps(3, seed=5)))
    # fitted on representations, it has no model to re-attach
    with pytest.raises(InvalidParameterError, match="fitted without a model"):
        NearestNeighbours.load(tmp_path / "nn.pt", model=nn.Linear(2, 2))
