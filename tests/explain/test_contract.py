"""What every example explainer shares: the estimator contract, ranking helpers, no np.product."""

from __future__ import annotations

import pytest
import torch
from sklearn.base import clone

from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    ModelMismatchError,
    NotFittedError,
    ShapeMismatchError,
)
from latentsurgeon.explain import (
    InfluenceFunctions,
    NearestNeighbours,
    SimplEx,
    TracIn,
    flagged_share,
    top_examples,
    top_examples_by_method,
)
from latentsurgeon.explain._base import ExampleExplainer

from .conftest import make_classifier, tabular


def explainers():
    return [NearestNeighbours("cosine", "1"), SimplEx("1"),
            TracIn("current", "cross_entropy", params="2"),
            InfluenceFunctions("cross_entropy", damping=1.0)]


@pytest.mark.parametrize("explainer", explainers(), ids=lambda e: type(e).__name__)
def test_estimator_contract(explainer, tmp_path):
    model = make_classifier()
    train, test = tabular(14), tabular(5, seed=3)
    params = explainer.get_params()
    assert clone(explainer).get_params() == params
    assert not explainer.is_fitted()
    with pytest.raises(NotFittedError):
        explainer.explain(test)
    assert explainer.fit(model, train) is explainer
    scores = explainer.explain(test)
    assert scores.shape == (5, 14) and bool(torch.isfinite(scores).all())
    torch.testing.assert_close(type(explainer)(**params).scores(model, train, test),
                               scores, rtol=0, atol=0)
    explainer.save(tmp_path / "e.pt")
    loaded = type(explainer).load(tmp_path / "e.pt")
    assert loaded.get_params().keys() == params.keys()
    assert loaded.n_train_ == 14
    # without its model it says how to load it; with it, it gives the saved one's scores
    with pytest.raises(LatentSurgeonError, match=r"load\(path, model=model\)"):
        loaded.explain(test)
    for again in (type(explainer).load(tmp_path / "e.pt", model=model),
                  ExampleExplainer.load(tmp_path / "e.pt", model=model)):
        assert type(again) is type(explainer)
        torch.testing.assert_close(again.explain(test), scores, rtol=0, atol=0)
        again.save(tmp_path / "again.pt")  # and saves again
        torch.testing.assert_close(
            type(explainer).load(tmp_path / "again.pt", model=model).explain(test), scores,
            rtol=0, atol=0)
    loaded.save(tmp_path / "twice.pt")  # loaded without the model, it still saves what it has
    torch.testing.assert_close(type(explainer).load(tmp_path / "twice.pt", model=model).explain(
        test), scores, rtol=0, atol=0)
    other = make_classifier(seed=1)
    with pytest.raises(ModelMismatchError, match="other weights"):
        type(explainer).load(tmp_path / "e.pt", model=other)


def test_set_params_is_validated_at_fit():
    model = make_classifier()
    explainer = NearestNeighbours().set_params(metric="cosine", batch_size=0)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        explainer.fit(model, tabular(4))


def test_top_examples_ranks_with_deterministic_ties():
    scores = torch.tensor([[0.1, 0.5, 0.5, -1.0], [3.0, 2.0, 1.0, 0.0]])
    assert top_examples(scores, 3).tolist() == [[1, 2, 0], [0, 1, 2]]
    assert top_examples(scores, 2, largest=False).tolist() == [[3, 0], [3, 2]]
    with pytest.raises(InvalidParameterError, match="k"):
        top_examples(scores, 5)
    with pytest.raises(ShapeMismatchError):
        top_examples(scores[0], 1)


def test_flagged_share():
    top = torch.tensor([[0, 1], [2, 2]])
    assert flagged_share(top, torch.tensor([True, False, True])) == 0.75
    with pytest.raises(ShapeMismatchError):
        flagged_share(top, torch.tensor([True, False]))


def test_top_examples_by_method_agrees_with_each_explainer():
    model = make_classifier()
    train, test = tabular(20), tabular(4, seed=3)
    tops = top_examples_by_method(model, "0", train, test, k=3)
    assert set(tops) == {"nearest_neighbours", "simplex", "tracin", "tracin_normalized"}
    expected = {
        "nearest_neighbours": NearestNeighbours("cosine", "0"),
        "simplex": SimplEx("0"),
        "tracin": TracIn("current", "cross_entropy", test_loss="predicted", params="0"),
        "tracin_normalized": TracIn("current", "cross_entropy", test_loss="predicted",
                                    params="0", normalize=True),
    }
    for name, explainer in expected.items():
        assert torch.equal(tops[name], top_examples(explainer.scores(model, train, test),
                                                    3)), name
    with pytest.raises(InvalidParameterError, match="methods"):
        top_examples_by_method(model, "0", train, test, methods=["lime"])
