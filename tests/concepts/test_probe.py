"""probe_layers: a planted target becomes readable at the layer that computes it."""

from __future__ import annotations

import pytest
import torch
from sklearn.tree import DecisionTreeClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.activations import ActivationStore
from latentsurgeon.concepts import ProbeReport, probe_layers
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import hook_count


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def product_model() -> nn.Sequential:
    """Layer 0: (x0 + x1, x0 - x1), linear in the input; layer 1 squares them; layer 2 returns
    ((x0 + x1)^2 - (x0 - x1)^2) / 4 = x0 * x1. So sign(x0 * x1) is linearly readable from
    layer 1 on, not before."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), Square(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        model[2].weight.copy_(torch.tensor([[0.25, -0.25]]))
    return model.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(800, 2, generator=g) * 2 - 1
    return x, (x[:, 0] * x[:, 1] > 0).long(), x[:, 0] * x[:, 1]


def test_sign_of_product_readable_only_after_the_layer_that_computes_it(data):
    x, sign, _ = data
    model = product_model()
    report = probe_layers(model, ["0", "1", "2"], x, sign, progress=False)
    assert isinstance(report, ProbeReport)
    assert report.layers == ["0", "1", "2"]
    assert report.score("0") < 0.65  # a linear function of the input: near chance
    assert report.score("1") > 0.95
    assert report.score("1") - report.score("0") > 0.3
    assert report.best_layer in ("1", "2")
    assert report.n_train == 600 and report.n_test == 200
    assert 0.4 < report.chance < 0.6
    assert hook_count(model) == 0


def test_regression_r2(data):
    x, _, product = data
    report = probe_layers(product_model(), ["0", "1"], x, product, task="regression",
                          progress=False)
    assert report.metric == "r2"
    assert report.score("0") < 0.1
    assert report.score("1") > 0.99
    assert report.best_layer == "1"
    assert set(report.table()[0]) == {"layer", "dim", "r2", "mse", "train_r2"}


def test_custom_probe_factory(data):
    x, sign, _ = data
    calls = []

    def factory(layer: str):
        calls.append(layer)
        return DecisionTreeClassifier(max_depth=4, random_state=0)

    report = probe_layers(product_model(), ["0", "1"], x, sign, probe_factory=factory,
                          progress=False)
    assert calls == ["0", "1"]
    assert all(isinstance(p, DecisionTreeClassifier) for p in report.probes.values())
    # a non-linear probe reads the sign from layer 0 too: what probing finds depends on the probe
    assert report.score("0") > 0.8


def test_from_an_existing_store_and_store_path(data, tmp_path):
    x, sign, _ = data
    model = product_model()
    report = probe_layers(model, ["0", "1"], x, sign, store_path=tmp_path / "s", progress=False)
    store = ActivationStore(tmp_path / "s")  # kept
    assert store.layers == ["0", "1"]
    again = probe_layers(None, "1", store, sign, progress=False)
    assert again.layers == ["1"]
    assert again.score("1") == pytest.approx(report.score("1"))
    assert probe_layers(model, None, store, sign, progress=False).layers == ["0", "1"]
    # without a model only names select a store's layers; a class cannot be resolved
    with pytest.raises(InvalidParameterError, match=r"layers: .*names or globs \(str\)"):
        probe_layers(None, nn.Linear, store, sign, progress=False)


def test_conv_layers_are_pooled(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(48, 2)).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(120, 1, 4, 4, generator=g)
    y = (torch.arange(120) % 2).long()
    images[y == 1] += 0.5
    report = probe_layers(model, ["0", "1", "3"], images, y, pooling="mean", progress=False)
    dims = {row["layer"]: row["dim"] for row in report.table()}
    assert dims == {"0": 3, "1": 3, "3": 2}
    flat = probe_layers(model, "0", images, y, pooling="flatten", progress=False)
    assert flat.table()[0]["dim"] == 48


def test_table_format_and_plot(data):
    x, sign, _ = data
    report = probe_layers(product_model(), ["0", "1"], x, sign, progress=False)
    rows = report.table()
    assert [r["layer"] for r in rows] == ["0", "1"]
    assert set(rows[0]) == {"layer", "dim", "accuracy", "balanced_accuracy", "train_accuracy"}
    rows[0]["accuracy"] = -1.0  # a copy
    assert report.rows[0]["accuracy"] != -1.0
    text = report.format()
    assert text == str(report)
    assert "balanced_accuracy" in text and "*" in text.splitlines()[3]
    fig = report.plot()
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "held-out score"
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    assert report.plot(ax=ax) is ax.figure


def test_data_loader_input(data):
    x, sign, _ = data
    loader = DataLoader(TensorDataset(x, sign), batch_size=100)
    report = probe_layers(product_model(), "1", loader, sign, progress=False)
    assert report.score("1") > 0.95


def test_errors(data):
    x, sign, _ = data
    model = product_model()
    shuffled = DataLoader(TensorDataset(x), batch_size=100, shuffle=True)
    with pytest.raises(LatentSurgeonError, match="fixed order"):
        probe_layers(model, "1", shuffled, sign, progress=False)
    with pytest.raises(InvalidParameterError, match="task must be one of"):
        probe_layers(model, "1", x, sign, task="ranking", progress=False)
    with pytest.raises(InvalidParameterError, match="test_size must be"):
        probe_layers(model, "1", x, sign, test_size=0.0, progress=False)
    with pytest.raises(InvalidParameterError, match="pooling must be"):
        probe_layers(model, "1", x, sign, pooling="sum", progress=False)
    with pytest.raises(InvalidParameterError, match="batch_size must be"):
        probe_layers(model, "1", x, sign, batch_size=0, progress=False)
    with pytest.raises(ShapeMismatchError, match="labels has 10"):
        probe_layers(model, "1", x, sign[:10], progress=False)
    with pytest.raises(InvalidParameterError, match=r"labels: .*two classes; got only \[0.0\]"):
        probe_layers(model, "1", x, torch.zeros(800), progress=False)
    with pytest.raises(LatentSurgeonError, match="needs a model"):
        probe_layers(None, "1", x, sign, progress=False)


def test_layers_are_reported_in_execution_order():
    # named_modules() lists a container before its children; its output comes after them.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 4), nn.ReLU()), nn.Linear(4, 2)).eval()
    x = torch.randn(100, 2)
    y = (x[:, 0] > 0).long()
    report = probe_layers(model, ["0", "0.0", "1"], x, y, progress=False)
    assert report.layers == ["0.0", "0", "1"]


def test_non_finite_inputs_and_targets(data, tmp_path):
    x, sign, product = data
    model = product_model()
    broken = x.clone()
    broken[10, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="layer"):
        probe_layers(model, "1", broken, sign, progress=False)
    bad_targets = product.clone()
    bad_targets[3] = float("inf")
    with pytest.raises(NonFiniteError, match="labels"):
        probe_layers(model, "1", x, bad_targets, task="regression", progress=False)


def test_earlier_order_and_targets_spelling_give_the_same_report_with_a_warning(data):
    x, sign, _ = data
    model = product_model()
    new = probe_layers(model, ["0", "1"], x, sign, progress=False)
    with pytest.warns(FutureWarning) as record:
        old = probe_layers(model, x, sign, ["0", "1"], progress=False)
        keyword = probe_layers(model, ["0", "1"], x, targets=sign, progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert "positional arguments in the order (model, data, targets, layers)" in messages
    assert "targets= is deprecated; use labels=" in messages
    assert old.rows == new.rows == keyword.rows
