"""Property: every read-only analysis entry point, called on a random small model (tabular or
image, in-place ReLU or not, BatchNorm, Dropout, a residual add) with random, sometimes non-finite,
inputs either succeeds or raises one of our errors, and leaves the model bit-identical: hooks,
``training`` and ``requires_grad`` flags, parameter and buffer values and identities."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from latentsurgeon.errors import LatentSurgeonError

from ._harness import assert_same_state, model_state


class Residual(nn.Module):
    def __init__(self, width: int, inplace: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        out += x  # the torchvision style: an in-place add after the layer
        return self.act(out)


@st.composite
def models(draw):
    image = draw(st.booleans())
    width = draw(st.integers(2, 6))
    inplace = draw(st.booleans())
    layers: list[nn.Module] = []
    if image:
        channels = draw(st.integers(1, 3))
        layers += [nn.Conv2d(channels, width, 3, padding=1)]
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(width))
        layers += [nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                   nn.Linear(4 * width, width)]
        shape = (channels, 6, 6)
    else:
        features = draw(st.integers(2, 6))
        layers += [nn.Linear(features, width), nn.ReLU(inplace=inplace)]
        shape = (features,)
    if draw(st.booleans()):
        layers.append(nn.Dropout(0.5))
    if draw(st.booleans()):
        layers.append(Residual(width, inplace))
    n_classes = draw(st.integers(2, 4))
    layers.append(nn.Linear(width, n_classes))
    torch.manual_seed(draw(st.integers(0, 1000)))
    model = nn.Sequential(*layers)
    model.train(draw(st.booleans()))
    if draw(st.booleans()):
        next(model.parameters()).requires_grad_(False)
    n = draw(st.integers(4, 12))
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    if draw(st.integers(0, 4)) == 0:
        x[draw(st.integers(0, n - 1))].view(-1)[0] = draw(st.sampled_from(
            [float("nan"), float("inf")]))
    labels = torch.randint(0, n_classes, (n,), generator=torch.Generator().manual_seed(3))
    layer = draw(st.sampled_from([str(i) for i in range(len(layers) - 1)]))
    return model, x, labels, layer, n_classes


def _calls(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, layer: str, n_classes: int):
    from captum.attr import Saliency

    from latentsurgeon.activations import ActivationStore, capture, layer_outputs
    from latentsurgeon.concepts import probe_layers, tcav
    from latentsurgeon.explain import NearestNeighbours, SimplEx, TracIn, label_free_attribution
    from latentsurgeon.hooks import preserve_model_state, resolve_layers
    from latentsurgeon.intervene import SteeringVector, patch
    from latentsurgeon.metrics import accuracy, artifact_relevance

    half = len(x) // 2

    def capture_run():
        with torch.no_grad(), capture(model, layer, copy=True) as cap:
            model.eval()  # the user's own forward; capture restores the mode on exit
            model(x)
        return cap[layer]

    def store():
        with tempfile.TemporaryDirectory() as tmp:
            return ActivationStore.extract(model, x, layer, Path(tmp) / "s", pooling="max",
                                           batch_size=3, progress=False).n_samples

    def steering():
        sv = SteeringVector(layer).fit(model, x[:half], x[half:], batch_size=3)
        with preserve_model_state(model), sv.applied(model), torch.no_grad():
            model.eval()  # the user's own forward, in eval mode, restored afterwards
            return model(x)

    return {
        "resolve_layers": lambda: resolve_layers(model, "*"),
        "capture": capture_run,
        "layer_outputs": lambda: layer_outputs(model, layer, x, batch_size=5),
        "store": store,
        "patch": lambda: patch(model, layer, x, x.flip(0), lambda out: out[:, 0].mean(),
                               batch_size=4, progress=False),
        "steering": steering,
        "accuracy": lambda: accuracy(model, (x, labels), batch_size=5),
        "artifact_relevance": lambda: artifact_relevance(model, x, torch.ones_like(x[0]),
                                                         target=0, batch_size=5),
        "label_free_attribution": lambda: label_free_attribution(model, x, Saliency,
                                                                 layer=layer, progress=False),
        "nearest_neighbours": lambda: NearestNeighbours("cosine", layer).scores(
            model, x[:half], x[half:]),
        "simplex": lambda: SimplEx(layer).scores(model, x[:half], x[half:]),
        "tracin": lambda: TracIn("current", "cross_entropy", test_loss="predicted").scores(
            model, (x[:half], labels[:half]), x[half:]),
        "probe_layers": lambda: probe_layers(model, layer, x, labels, progress=False),
        "tcav": lambda: tcav(model, layer, x[:half], 0, x[half:], random=x, n_runs=2, set_size=2,
                             progress=False),
    }


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models())
def test_analysis_entry_points_leave_random_models_untouched(drawn):
    model, x, labels, layer, n_classes = drawn
    before = model_state(model)
    for name, call in _calls(model, x, labels, layer, n_classes).items():
        try:
            call()
        except LatentSurgeonError:
            pass  # refusing is fine; anything else (a raw traceback) fails the test
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc
        try:
            assert_same_state(model, before)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def _explain_calls(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, layer: str):
    """The explain entry points, as a user calls them (also on empty or odd-dtype inputs)."""
    from captum.attr import IntegratedGradients, Saliency

    from latentsurgeon.explain import (
        InfluenceFunctions,
        NearestNeighbours,
        SimplEx,
        TracIn,
        label_free_attribution,
        label_free_attribution_per_unit,
        representations,
        top_examples_by_method,
    )

    half = max(len(x) // 2, 1)
    train, test = (x[:half], labels[:half]), (x[half:], labels[half:])
    return {
        "representations": lambda: representations(model, layer, x, progress=False),
        "label_free_attribution (saliency)": lambda: label_free_attribution(
            model, x, Saliency, layer=layer, progress=False),
        "label_free_attribution (integrated gradients)": lambda: label_free_attribution(
            model, x, IntegratedGradients, layer=layer, n_steps=4, progress=False),
        "label_free_attribution_per_unit": lambda: label_free_attribution_per_unit(
            model, x, Saliency, layer=layer, units=[0], progress=False),
        "nearest_neighbours": lambda: NearestNeighbours("cosine", layer).scores(
            model, x[:half], x[half:]),
        "simplex": lambda: SimplEx(layer, max_iter=20).scores(model, x[:half], x[half:]),
        "tracin": lambda: TracIn("current", "cross_entropy").scores(model, train, test),
        "influence": lambda: InfluenceFunctions("cross_entropy", damping=0.1).scores(
            model, train, test),
        "top_examples_by_method": lambda: top_examples_by_method(
            model, layer, train, x[half:], k=1, methods=("nearest_neighbours", "tracin")),
    }


@st.composite
def odd_inputs(draw):
    """A random small model in float32, float64 or bfloat16, with inputs of another floating
    dtype, of another width, or with no samples at all."""
    model, x, labels, layer, n_classes = draw(models())
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    model = model.to(dtype)
    kind = draw(st.sampled_from(["same", "float64 inputs", "empty", "wrong width"]))
    if kind == "float64 inputs":
        x = x.double()
    elif kind == "empty":
        x, labels = x[:0], labels[:0]
    elif kind == "wrong width":
        x = torch.randn(len(x), *x.shape[1:-1], x.shape[-1] + 1)
    return model, x, labels, layer


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(odd_inputs())
def test_explain_entry_points_on_odd_dtypes_shapes_and_empty_data(drawn):
    model, x, labels, layer = drawn
    before = model_state(model)
    for name, call in _explain_calls(model, x, labels, layer).items():
        try:
            call()
        except LatentSurgeonError:
            pass
        except Exception as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{name} on {model_dtype(model)} with inputs "
                                 f"{tuple(x.shape)} {x.dtype} raised {type(exc).__name__}: "
                                 f"{exc}") from exc
        try:
            assert_same_state(model, before)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
