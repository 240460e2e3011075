"""``latentsurgeon.compat.tdhook``: tdhook's latent methods on latentsurgeon.

The behaviours tdhook's own test suite asserts (``tests/latent/test_activation_caching.py``,
``test_activation_patching.py``, ``test_steering_vectors.py``, ``test_probing.py`` of tdhook
0.1.3 to 0.3), re-derived and checked against the adapters, with exact values where tdhook's
tests only check shapes; the usage in this repository's benchmark (``bench/cases/
capture_tdhook.py``) with only its import changed; and, where tdhook itself is installed, the
adapters against tdhook on the same model. Every test runs with dict records; with
``tensordict`` installed also with TensorDicts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.activations import capture
from latentsurgeon.compat.tdhook import (
    ActivationAddition,
    ActivationCaching,
    ActivationPatching,
    MeanDifferenceClassifier,
    Probe,
    ProbeManager,
    Probing,
    SteeringVectors,
    key_pattern_selector,
)
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, LayerNotFoundError
from latentsurgeon.hooks import hook_count, resolve_layers

try:
    from tensordict import TensorDict
except ImportError:
    TensorDict = None


class TestModel(nn.Module):
    """tdhook's test model (its conftest): three linear layers and a shared ReLU."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(10, 20)
        self.linear2 = nn.Linear(20, 20)
        self.linear3 = nn.Linear(20, 5)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.linear1(x))
        x = self.activation(self.linear2(x))
        return self.linear3(x)


@pytest.fixture
def model() -> TestModel:
    torch.manual_seed(0)
    return TestModel()


@pytest.fixture(params=["dict", "tensordict"])
def record(request):
    """Build an input record: a dict, or a TensorDict of batch size ``n`` where installed."""
    if request.param == "dict":
        return lambda fields, n: dict(fields)
    if TensorDict is None:
        pytest.skip("tensordict is not installed (optional extra)")
    return lambda fields, n: TensorDict(fields, batch_size=[n])


def _get(data, *key):
    """Read a nested key from a TensorDict or a nested dict."""
    if TensorDict is not None and isinstance(data, TensorDict):
        return data[key]
    for part in key:
        data = data[part]
    return data


def _hidden(model: TestModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h1 = model.linear1(x)
    h2 = model.linear2(model.activation(h1))
    return h1, h2


X = torch.randn(2, 10, generator=torch.Generator().manual_seed(1))
Y = torch.randn(2, 10, generator=torch.Generator().manual_seed(2))


# -- key_pattern: tdhook's regex, matched at the start of names -----------------------------------
NAMES = ["linear1", "linear10", "block.linear1", "features.0", "features.3", "Head", "h.1.attn"]


@pytest.mark.parametrize("pattern", ["linear1", "linear1$", "linear1|linear2", r"features\.(0|3)$",
                                     "(?i)head", ".*attn", "block", r"h\.\d", "x?linear"])
def test_key_pattern_selector_selects_what_re_match_selects(pattern):
    selector = key_pattern_selector(pattern)
    assert selector.startswith("re:")
    compiled = re.compile(selector[3:])
    assert [n for n in NAMES if compiled.fullmatch(n)] == \
        [n for n in NAMES if re.match(pattern, n)]


def test_key_pattern_matches_at_the_start_of_names():
    model = nn.Sequential()
    for name in ("linear1", "linear10", "xlinear1"):
        model.add_module(name, nn.Linear(2, 2))
    assert list(resolve_layers(model, key_pattern_selector("linear1"))) == ["linear1", "linear10"]
    assert list(resolve_layers(model, key_pattern_selector("linear1$"))) == ["linear1"]


# -- ActivationCaching ----------------------------------------------------------------------------
class TestActivationCaching:
    def test_relative_false_keys_are_tdhooks_wrapped_names(self, model):
        with ActivationCaching(r"td_module\.module\.linear2", relative=False).prepare(model) as h:
            h(X)
        assert list(h.hooking_context.cache.keys()) == ["td_module.module.linear2"]

    def test_relative_keys_and_the_true_outputs(self, model):
        with ActivationCaching("linear").prepare(model) as h:
            out = h(X)
        cache = h.hooking_context.cache
        assert sorted(cache.keys()) == ["linear1", "linear2", "linear3"]
        h1, h2 = _hidden(model, X)
        torch.testing.assert_close(cache["linear1"], h1)
        torch.testing.assert_close(cache["linear2"], h2)
        torch.testing.assert_close(out, model(X))
        assert cache["linear2"].requires_grad  # stored as tdhook stores it: in the graph

    def test_record_input_gets_outputs_and_a_cache_snapshot(self, model, record):
        context = ActivationCaching("linear2$")
        first = record({"input": torch.ones(2, 10)}, 2)
        with context.prepare(model) as h:
            result = h(first)
        assert result is first
        torch.testing.assert_close(_get(result, "output"), model(torch.ones(2, 10)))
        kept = _get(result, "cache", "linear2").clone()
        with context.prepare(model) as h:  # a later context clears its cache, not the snapshot
            h(record({"input": torch.zeros(2, 10)}, 2))
        torch.testing.assert_close(_get(first, "cache", "linear2"), kept)

    def test_clear_cache(self, model):
        cache: dict = {}
        with ActivationCaching("linear1$", cache=cache, clear_cache=False).prepare(model) as h:
            h(X)
        with ActivationCaching("linear2$", cache=cache, clear_cache=False).prepare(model) as h:
            h(X)
        assert sorted(cache) == ["linear1", "linear2"]
        with ActivationCaching("linear3$", cache=cache).prepare(model) as h:
            h(X)
        assert sorted(cache) == ["linear3"]

    def test_directions_and_nested_keys(self, model):
        x = X.clone().requires_grad_()
        directions = ["fwd", "fwd_pre", "bwd", "bwd_pre"]
        with ActivationCaching("linear2$", directions=directions).prepare(model) as h:
            h(x).sum().backward()
        cache = h.hooking_context.cache
        h1, h2 = _hidden(model, X)
        grad_out = torch.autograd.grad(model.linear3(model.activation(h2)).sum(), h2)[0]
        torch.testing.assert_close(_get(cache, "fwd", "linear2"), h2)
        torch.testing.assert_close(_get(cache, "fwd_pre", "linear2"), model.activation(h1))
        torch.testing.assert_close(_get(cache, "bwd_pre", "linear2"), grad_out)
        torch.testing.assert_close(_get(cache, "bwd", "linear2"), grad_out @ model.linear2.weight)
        with ActivationCaching("linear2$", use_nested_keys=True).prepare(model) as h:
            h(X)
        assert _get(h.hooking_context.cache, "fwd", "linear2").shape == (2, 20)

    def test_callback_gets_tdhooks_arguments_and_its_value_is_stored(self, model):
        seen = []

        def callback(module, args, output, key, direction):
            seen.append((type(module).__name__, len(args), key, direction))
            return output[:, :3]

        with ActivationCaching("linear2$", callback=callback).prepare(model) as h:
            h(X)
        assert seen == [("Linear", 1, "linear2", "fwd")]
        assert h.hooking_context.cache["linear2"].shape == (2, 3)

    def test_a_callback_returning_no_tensor_is_refused(self, model):
        with ActivationCaching("linear2$", callback=lambda **kw: 3).prepare(model) as h:
            with pytest.raises(LatentSurgeonError, match="tensor or a TensorDict"):
                h(X)
        assert hook_count(model) == 0

    def test_in_place_relu_does_not_overwrite_the_stored_output(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
        x = torch.randn(8, 4)
        with ActivationCaching("0$").prepare(model) as h:
            h(x)
        torch.testing.assert_close(h.hooking_context.cache["0"], model[0](x))

    def test_lifecycle(self, model):
        context = ActivationCaching("linear1$").prepare(model)
        with context as h:
            assert hook_count(model) == 1
            with pytest.raises(LatentSurgeonError, match="twice"):
                context.__enter__()
            with h.disable_context_hooks():
                assert hook_count(model) == 0
            assert hook_count(model) == 1
        assert hook_count(model) == 0
        with pytest.raises(LatentSurgeonError, match="left"):
            h(X)
        with pytest.raises(RuntimeError), ActivationCaching("linear1$").prepare(model):
            raise RuntimeError("inside")
        assert hook_count(model) == 0
        hooked = ActivationCaching("linear1$").prepare(model, return_context=False)
        hooked(X)
        assert "linear1" in hooked.hooking_context.cache
        hooked.restore()
        assert hook_count(model) == 0

    def test_key_pattern_is_mutable(self):
        method = ActivationCaching("linear1")
        method.key_pattern = "linear2"
        assert method.key_pattern == "linear2"

    def test_a_pattern_matching_nothing_raises(self, model):
        with pytest.raises(LayerNotFoundError, match="nothing"):
            ActivationCaching("conv").prepare(model).__enter__()
        assert hook_count(model) == 0


def test_tensordict_memmap_of_the_cache(model, tmp_path):
    pytest.importorskip("tensordict")
    from tensordict import MemoryMappedTensor

    cache = TensorDict()
    with ActivationCaching("linear2", cache=cache).prepare(model) as h:
        h(X)
    assert isinstance(cache.memmap(str(tmp_path / "cache"))["linear2"], MemoryMappedTensor)


def test_the_benchmark_usage_runs_with_only_its_import_changed():
    """``bench/cases/capture_tdhook.py``'s peer code, with ``from latentsurgeon.compat.tdhook
    import ActivationCaching`` instead of ``from tdhook.latent import ActivationCaching``."""
    pytest.importorskip("tensordict")
    from latentsurgeon.models import DigitCNN

    source = (Path(__file__).resolve().parents[2] / "bench" / "cases" / "capture_tdhook.py")
    assert "from tdhook.latent import ActivationCaching" in source.read_text()
    torch.manual_seed(0)
    model = DigitCNN().eval()
    batches = list(torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(0)).split(8))
    layers, pattern = ["features.0", "features.3"], r"features\.(0|3)$"
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with torch.no_grad(), ActivationCaching(pattern).prepare(model) as hooked:
        for b in batches:
            out = hooked(TensorDict({"input": b}, batch_size=[len(b)]))
            for name in layers:
                parts[name].append(out["cache", name])
    with torch.no_grad(), capture(model, layers, accumulate=True) as cap:
        for b in batches:
            model(b)
    for name in layers:
        torch.testing.assert_close(torch.cat(parts[name]), cap.activations[name])


# -- ActivationPatching -----------------------------------------------------------------------------
def _first_unit_patch(output, output_to_patch, **_):
    output[:, 0] = output_to_patch[:, 0]
    return output


def _patched_reference(model, clean, corrupted, modules):
    """The patched run computed by hand: unit 0 of each module's output from the clean run."""
    def run(x, source=None):
        outs = {}
        h = model.linear1(x)
        outs["linear1"] = h
        h = model.linear2(model.activation(h))
        if source is not None and "linear2" in modules:
            h = h.clone()
            h[:, 0] = source["linear2"][:, 0]
        outs["linear2"] = h
        h = model.linear3(model.activation(h))
        if source is not None and "linear3" in modules:
            h = h.clone()
            h[:, 0] = source["linear3"][:, 0]
        outs["linear3"] = h
        return h, outs

    with torch.no_grad():
        _, clean_outs = run(clean)
        return run(corrupted, clean_outs)[0]


@pytest.mark.parametrize("modules", [("linear2",), ("linear2", "linear3")])
def test_activation_patching(model, record, modules):
    context = ActivationPatching(list(modules), patch_fn=_first_unit_patch)
    with context.prepare(model) as h:
        data = h(record({"input": X, ("patched", "input"): Y}, 2))
    patched = _get(data, "patched", "output")
    assert patched.shape == (2, 5)
    assert not torch.allclose(_get(data, "output"), patched)
    torch.testing.assert_close(_get(data, "output"), model(X).detach())
    torch.testing.assert_close(patched, _patched_reference(model, X, Y, modules))


def test_patching_without_patch_fn_copies_the_clean_activation(model):
    with ActivationPatching(["linear2"]).prepare(model) as h:
        clean, patched = h(X, Y)
    torch.testing.assert_close(patched, clean)  # everything after linear2 sees the clean run


def test_patch_key_and_plain_nested_records(model):
    with ActivationPatching(["linear2"], patch_key="other").prepare(model) as h:
        data = h({"input": X, "other": {"input": Y}})
    assert data["other"]["output"].shape == (2, 5)


# -- SteeringVectors and ActivationAddition ---------------------------------------------------------
@pytest.mark.parametrize("modules", [("linear2",), ("linear2", "linear3")])
def test_steering_vectors(model, record, modules):
    keys = []

    def steer_fn(output, module_key, **_):
        keys.append(module_key)
        output[:, 0] = 0
        return output

    with SteeringVectors(list(modules), steer_fn=steer_fn).prepare(model) as h:
        data = h(record({"input": X}, 2))
    assert _get(data, "output").shape == (2, 5)
    assert sorted(keys) == sorted(modules)
    with torch.no_grad():
        h2 = model.linear2(model.activation(model.linear1(X)))
        h2[:, 0] = 0
        out = model.linear3(model.activation(h2))
        if "linear3" in modules:
            out[:, 0] = 0
    torch.testing.assert_close(_get(data, "output").detach(), out)
    assert hook_count(model) == 0


def test_a_steer_fn_returning_none_keeps_the_output(model):
    with SteeringVectors(["linear2"], steer_fn=lambda **kw: None).prepare(model) as h:
        out = h(X)
    torch.testing.assert_close(out, model(X))


@pytest.mark.parametrize("modules", [("linear1",), ("linear1", "linear2")])
def test_activation_addition(model, record, modules):
    with ActivationAddition(list(modules)).prepare(model) as h:
        data = h(record({("positive", "input"): X, ("negative", "input"): Y}, 2))
    hx, hy = dict(zip(("linear1", "linear2"), _hidden(model, X), strict=True)), \
        dict(zip(("linear1", "linear2"), _hidden(model, Y), strict=True))
    for key in modules:
        vector = _get(data, "steer", key)
        assert vector.shape == (20,)
        torch.testing.assert_close(vector, (hx[key] - hy[key]).mean(0).detach())


def test_activation_addition_keys_and_plain_tensors(model):
    method = ActivationAddition(["linear1"], positive_key="pos", negative_key="neg",
                                steer_key="vectors")
    with method.prepare(model) as h:
        data = h({"pos": {"input": X}, "neg": {"input": Y}})
        plain = h(X, Y)
    torch.testing.assert_close(data["vectors"]["linear1"], plain["linear1"])


# -- Probing ----------------------------------------------------------------------------------------
class ExampleProbe:
    def __init__(self) -> None:
        self.called = 0
        self.kwargs: dict = {}

    def step(self, data, **kwargs) -> None:
        self.called += 1
        self.kwargs = kwargs


@pytest.mark.parametrize("relative, key", [(False, "td_module.module.linear2"),
                                           (True, "linear2")])
def test_simple_probing(model, record, relative, key):
    probes: dict = {}

    def probe_factory(k, direction):
        probes[k] = ExampleProbe()
        return probes[k]

    with Probing(re.escape(key), probe_factory, relative=relative).prepare(model) as h:
        h(record({"input": X}, 2))
    assert list(probes) == [key] and probes[key].called == 1


def test_probing_pattern_and_skipped_containers(record):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    probes: dict = {}

    def probe_factory(k, direction):
        probes[k] = ExampleProbe()
        return probes[k]

    with Probing("0|1", probe_factory).prepare(model) as h:
        h(record({"input": X}, 2))
    assert sorted(probes) == ["0", "1.0", "1.1"]  # "1" is a Sequential: skipped by default
    assert all(p.called == 1 for p in probes.values())


def test_probing_values_follow_the_direction(model):
    seen = {}

    class Keep:
        def __init__(self, direction):
            self.direction = direction

        def step(self, data, **kwargs):
            seen[self.direction] = data

    method = Probing("linear2$", lambda k, d: Keep(d), directions=["fwd", "fwd_pre", "bwd_pre"])
    with method.prepare(model) as h:
        h(X.clone().requires_grad_()).sum().backward()
    assert isinstance(seen["fwd"], torch.Tensor) and seen["fwd"].shape == (2, 20)
    assert isinstance(seen["fwd_pre"], tuple) and isinstance(seen["bwd_pre"], tuple)


def test_linear_probing_with_a_probe_manager(model, record):
    """tdhook's linear-probing recipe: a manager's probe factory, labels and the step type read
    from the input, the mean-difference probe fitted then scored."""
    torch.manual_seed(3)
    x = torch.randn(64, 10)
    y = (x[:, 0] > 0).long()

    def accuracy(predictions, labels):
        return {"accuracy": float((np.asarray(predictions) == np.asarray(labels)).mean())}

    manager = ProbeManager(MeanDifferenceClassifier, {}, accuracy)
    method = Probing("linear1$", manager.probe_factory, additional_keys=["labels", "step_type"])
    with method.prepare(model) as h:
        h(record({"input": x[:48], "labels": y[:48], "step_type": "fit"}, 48))
        h(record({"input": x[48:], "labels": y[48:], "step_type": "predict"}, 16))
    assert set(manager.fit_metrics) == set(manager.predict_metrics) == {"linear1_fwd"}
    assert manager.fit_metrics["linear1_fwd"]["accuracy"] > 0.75
    assert manager.predict_metrics["linear1_fwd"]["accuracy"] > 0.6


# -- probes -----------------------------------------------------------------------------------------
class TestMeanDifferenceClassifier:
    X = np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-2.0, 0.0]])
    y = np.array([1, 1, 0, 0])

    @pytest.mark.parametrize("normalize, coef", [(True, [[1.0, 0.0]]), (False, [[3.0, 0.0]])])
    def test_fit_and_predict(self, normalize, coef):
        classifier = MeanDifferenceClassifier(normalize=normalize)
        classifier.fit(self.X, self.y)  # 2 + 2 samples fit
        assert np.array_equal(classifier.predict(self.X), [True, True, False, False])
        proba = classifier.predict_proba(self.X)
        assert proba.shape == (4, 2) and np.allclose(proba.sum(1), 1.0)
        assert np.allclose(classifier.coef_, coef) and np.allclose(classifier.intercept_, [0.0])
        midpoint = (self.X[:2].mean(0) + self.X[2:].mean(0)) / 2
        assert np.isclose(classifier.predict_proba(midpoint[None])[0, 1], 0.5)

    def test_decision_matches_tdhooks_formula_off_the_origin(self):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(10, 3)) + np.r_[[[2.0, 1.0, 0.0]] * 5, [[0.0] * 3] * 5]
        y = np.r_[np.ones(5), np.zeros(5)].astype(int)
        pos, neg = X[y == 1].mean(0), X[y == 0].mean(0)
        for normalize in (True, False):
            norm = np.linalg.norm(pos - neg) if normalize else 1.0
            coef = (pos - neg) / norm
            intercept = -0.5 * (pos @ pos - neg @ neg) / norm
            classifier = MeanDifferenceClassifier(normalize=normalize).fit(X, y)
            assert np.allclose(classifier.coef_, coef[None])
            assert np.allclose(classifier.intercept_, [intercept])
            expected = 1 / (1 + np.exp(-(X @ coef + intercept)))
            assert np.allclose(classifier.predict_proba(X)[:, 1], expected)

    def test_zero_coef_gives_probability_one_half(self):
        classifier = MeanDifferenceClassifier().fit(np.array([[1.0, -1.0]] * 4), self.y)
        assert np.array_equal(classifier.coef_, [[0.0, 0.0]])
        assert np.allclose(classifier.intercept_, [0.0])
        assert np.allclose(classifier.predict_proba(self.X), 0.5)

    def test_refusals(self):
        with pytest.raises(LatentSurgeonError, match="not fitted"):
            _ = MeanDifferenceClassifier().coef_
        with pytest.raises(LatentSurgeonError, match="not fitted"):
            _ = MeanDifferenceClassifier().intercept_
        with pytest.raises(InvalidParameterError, match="[Mm]ulticlass"):
            MeanDifferenceClassifier().fit(np.zeros((4, 3)), np.eye(2)[[0, 0, 1, 1]])
        for labels in (np.ones(4), np.zeros(4)):
            with pytest.raises(InvalidParameterError, match="both classes"):
                MeanDifferenceClassifier().fit(np.random.randn(4, 3), labels)


class TestProbeAndManager:
    def test_invalid_step_type(self):
        probe = Probe(object(), predict_callback=lambda p, labels: None)
        with pytest.raises(InvalidParameterError, match="step_type must be 'fit' or 'predict'"):
            probe.step(torch.randn(2, 3), labels=torch.zeros(2), step_type="invalid")

    def test_callbacks_see_flattened_predictions(self):
        class Mock:
            def fit(self, X, y):
                self.shape = X.shape

            def predict(self, X):
                return torch.ones(X.shape[0], dtype=torch.long)

        fits, predictions = [], []
        estimator = Mock()
        probe = Probe(estimator, lambda p, labels: predictions.append((p.shape, labels.shape)),
                      lambda p, labels: fits.append((p.shape, labels.shape)))
        data, labels = torch.randn(4, 2, 3), torch.zeros(4, dtype=torch.long)
        probe.step(data, labels=labels, step_type="fit")
        probe.step(data, labels=labels, step_type="predict")
        assert estimator.shape == (4, 6)
        assert fits == predictions == [((4,), (4,))]

    def test_overwrite_and_reset(self):
        class Dummy:
            def fit(self, X, y):
                return None

            def predict(self, X):
                return torch.zeros(X.shape[0], dtype=torch.long)

        manager = ProbeManager(Dummy, {}, lambda p, labels: {"acc": float((p == labels).float()
                                                                          .mean())})
        probe = manager.probe_factory("linear1", "fwd")
        data, labels = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
        probe.step(data, labels=labels, step_type="predict")
        with pytest.raises(LatentSurgeonError, match="Metrics for linear1_fwd already exist"):
            probe.step(data, labels=labels, step_type="predict")
        manager.reset_metrics()
        probe.step(data, labels=labels, step_type="fit")
        with pytest.raises(LatentSurgeonError, match="Metrics for linear1_fwd already exist"):
            probe.step(data, labels=labels, step_type="fit")
        with pytest.raises(LatentSurgeonError, match="already exists"):
            manager.probe_factory("linear1", "fwd")
        assert manager.estimators and manager.fit_metrics and manager.predict_metrics == {}
        manager.reset_estimators()
        manager.reset_metrics()
        assert manager.estimators == manager.fit_metrics == manager.predict_metrics == {}


# -- against tdhook itself, where it is installed ---------------------------------------------------
class TestAgainstTdhook:
    @pytest.fixture(autouse=True)
    def _tdhook(self):
        self.latent = pytest.importorskip("tdhook.latent")

    def test_caching(self, model):
        td = TensorDict({"input": X}, batch_size=[2])
        with self.latent.ActivationCaching("linear").prepare(model) as h:
            h(td.clone())
            theirs = h.hooking_context.cache
        with ActivationCaching("linear").prepare(model) as h:
            h(td.clone())
            ours = h.hooking_context.cache
        assert sorted(ours.keys()) == sorted(theirs.keys())
        for key in theirs.keys():
            torch.testing.assert_close(ours[key], theirs[key])

    def test_patching_steering_and_addition(self, model):
        def fields():
            return TensorDict({"input": X, ("patched", "input"): Y,
                               ("positive", "input"): X, ("negative", "input"): Y},
                              batch_size=[2])

        pairs = [(self.latent.ActivationPatching, ActivationPatching,
                  (["linear2", "linear3"],), {"patch_fn": _first_unit_patch},
                  [("output",), ("patched", "output")]),
                 (self.latent.SteeringVectors, SteeringVectors, (["linear2"],),
                  {"steer_fn": lambda module_key, output: output * 2}, [("output",)]),
                 (self.latent.ActivationAddition, ActivationAddition, (["linear1", "linear2"],),
                  {}, [("steer", "linear1"), ("steer", "linear2")])]
        for theirs_cls, ours_cls, args, kwargs, keys in pairs:
            with theirs_cls(*args, **kwargs).prepare(model) as h:
                theirs = h(fields())
            with ours_cls(*args, **kwargs).prepare(model) as h:
                ours = h(fields())
            for key in keys:
                torch.testing.assert_close(ours[key].detach(), theirs[key].detach())

    def test_mean_difference_classifier(self):
        rng = np.random.default_rng(1)
        X = rng.normal(size=(12, 4))
        y = np.r_[np.ones(6), np.zeros(6)].astype(int)
        X[y == 1] += 1.5
        theirs = self.latent.MeanDifferenceClassifier()
        theirs.fit(X, y)
        ours = MeanDifferenceClassifier().fit(X, y)
        assert np.allclose(ours.coef_, theirs.coef_)
        assert np.allclose(ours.intercept_, theirs.intercept_)
        assert np.allclose(ours.predict_proba(X), theirs.predict_proba(X))


# -- the docs ---------------------------------------------------------------------------------------
def test_the_snippets_of_the_tdhook_section_of_docs_compat_run():
    import sys

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tests"))
    try:
        from _snippets import python_blocks
    finally:
        sys.path.remove(str(root / "tests"))
    page = root / "docs" / "compat.md"
    lines = page.read_text().splitlines()
    start = lines.index("## tdhook: `latentsurgeon.compat.tdhook`") + 1
    stop = next(i for i in range(start, len(lines)) if lines[i].startswith("## "))
    snippets = [s for s in python_blocks(page) if start < s.line <= stop]
    assert snippets
    namespace: dict = {}
    for snippet in snippets:
        snippet.run(namespace)
    assert namespace["data"]["patched"]["output"].shape == (4, 5)
    assert namespace["steered"].shape == (4, 5)
