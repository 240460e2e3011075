"""``latentsurgeon.compat.detoxai`` against detoxai's behaviours.

detoxai's own test suite (DetoxAI/detoxai, tests/) covers metrics and reject-option
classification only; nothing there exercises ``detoxai.methods.clarcs``. The behaviours below are
therefore re-derived from its documented API (../shared/reference/detoxai-clarcs-api.txt) and
its code (the hook formulas, the return types, the defaults, the order of calls its
``run_correction`` makes), written as our own expectations. Where we differ on purpose the test
says so and docs/compat.md gives the reason.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.errors import InvalidParameterError, LayerNotFoundError, NotFittedError
from latentsurgeon.hooks import hook_count

pytestmark = pytest.mark.usefixtures("one_thread")

N, C, S = 48, 1, 8  # samples, channels, image side


def make_data(seed: int = 0) -> TensorDataset:
    """Class 1 is mostly marked by a bright 2x2 corner patch (the artifact, flag 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, C, S, S, generator=g) * 0.5
    y = torch.arange(N) % 2
    artifact = ((y == 1) & (torch.rand(N, generator=g) < 0.8)) | (torch.rand(N, generator=g) < 0.1)
    x[artifact, :, :2, :2] = 1.0
    return TensorDataset(x, y, artifact.long())


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(C, 3, 3, padding=1), relu=nn.ReLU(),
                                     flat=nn.Flatten(), fc=nn.Linear(3 * S * S, 2)))


@pytest.fixture
def loader() -> DataLoader:
    return DataLoader(make_data(), batch_size=16)


def flat_relu(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.relu(model.conv(x)).flatten(1)


def detoxai_clarc(a: torch.Tensor, v: torch.Tensor, z: torch.Tensor, alpha: float) -> torch.Tensor:
    """detoxai's clarc_hook formula on flattened activations, with its stabilize."""
    v, z = v.reshape(-1) + 1e-8, z.reshape(-1)[None] + 1e-8
    return a - (torch.outer(v, v) @ (a - z).T).T * alpha


# -- the hooks module ----------------------------------------------------------------------------
def test_stabilize_adds_epsilon():
    from latentsurgeon.compat.detoxai.hooks import stabilize

    x = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(stabilize(x), x + 1e-8)
    torch.testing.assert_close(stabilize(x, epsilon=0.5), x + 0.5)


def test_mass_mean_probe_hook_is_a_raw_pytorch_hook_shifting_the_flat_output():
    from latentsurgeon.compat.detoxai.hooks import mass_mean_probe_hook

    model, x = make_model(), make_data().tensors[0][:5]
    probe = torch.randn(3 * S * S)
    before = model.relu(model.conv(x))
    handle = model.relu.register_forward_hook(mass_mean_probe_hook(probe, 0.5))
    after = model.relu(model.conv(x))
    handle.remove()
    torch.testing.assert_close(after, before - 0.5 * probe.reshape(3, S, S))


def test_add_mass_mean_probe_hook_returns_a_list_of_handles_one_per_layer():
    from latentsurgeon.compat.detoxai.hooks import add_mass_mean_probe_hook

    model, x = make_model(), make_data().tensors[0][:5]
    plain = model(x)
    hooks = add_mass_mean_probe_hook(model, torch.ones(3 * S * S), ["relu", "flat"], alpha=0.1)
    assert isinstance(hooks, list) and len(hooks) == 2 and hook_count(model) == 2
    for h in hooks:
        h.remove()
    assert hook_count(model) == 0
    expected = model.fc(model.flat(model.relu(model.conv(x))) - 0.2)  # two shifts of 0.1
    hooks = add_mass_mean_probe_hook(model, torch.ones(3 * S * S), ["relu", "flat"], alpha=0.1)
    torch.testing.assert_close(model(x), expected)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(model(x), plain)


def test_clarc_hook_matches_detoxai_formula_for_a_unit_cav():
    from latentsurgeon.compat.detoxai.hooks import clarc_hook

    model, x = make_model(), make_data().tensors[0]
    a = flat_relu(model, x).detach()
    v = torch.randn(1, a.shape[1])
    v = v / v.norm()  # detoxai's compute_cav returns (1, D) unit vectors
    z = a[:10].mean(0)
    handle = model.relu.register_forward_hook(clarc_hook(v, z, 0.7))
    out = flat_relu(model, x)
    handle.remove()
    torch.testing.assert_close(out, detoxai_clarc(a, v, z, 0.7), atol=1e-5, rtol=1e-5)
    # alpha 1: every sample's component along v is the reference's
    handle = model.relu.register_forward_hook(clarc_hook(v, z, 1.0))
    out = flat_relu(model, x)
    handle.remove()
    torch.testing.assert_close(out @ v[0], (z @ v[0]).expand(len(x)), atol=1e-5, rtol=1e-5)


def test_clarc_hook_normalises_the_cav_where_detoxai_does_not():
    """Deliberate difference: a CAV of norm 3 is the same projection here; detoxai scales the
    correction by 9 (its mass-mean probe is not normalised)."""
    from latentsurgeon.compat.detoxai.hooks import clarc_hook

    model, x = make_model(), make_data().tensors[0]
    a = flat_relu(model, x).detach()
    v = torch.randn(a.shape[1])
    v = v / v.norm()
    z = a.mean(0)
    outs = []
    for scale in (1.0, 3.0):
        handle = model.relu.register_forward_hook(clarc_hook(scale * v, z, 1.0))
        outs.append(flat_relu(model, x).detach())
        handle.remove()
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[1], detoxai_clarc(a, 3 * v, z, 1.0), atol=1e-3)


def test_clarc_hook_gradients_exact_by_default_straight_through_on_request():
    from latentsurgeon.compat.detoxai.hooks import clarc_hook

    layer = nn.Identity()
    v = torch.tensor([0.6, 0.8])
    z = torch.zeros(2)
    a = torch.randn(4, 2, requires_grad=True)
    for gradient, expected in (("exact", torch.eye(2) - torch.outer(v, v)),
                               ("straight_through", torch.eye(2))):
        handle = layer.register_forward_hook(clarc_hook(v, z, 1.0, gradient=gradient))
        (grad,) = torch.autograd.grad(layer(a)[:, 0].sum(), a)
        handle.remove()
        torch.testing.assert_close(grad, expected[0].expand(4, 2))


def test_add_clarc_hook_returns_a_list_removed_detoxai_style():
    from latentsurgeon.compat.detoxai.hooks import add_clarc_hook

    model, x = make_model(), make_data().tensors[0]
    a = flat_relu(model, x).detach()
    v = torch.randn(1, a.shape[1])
    v = v / v.norm()
    plain = model(x)
    hooks = add_clarc_hook(model, v, a.mean(0), "relu", 1.0)
    assert isinstance(hooks, list) and len(hooks) == 1 and hook_count(model) == 1
    corrected = model(x)
    expected = model.fc(detoxai_clarc(a, v, a.mean(0), 1.0))
    torch.testing.assert_close(corrected, expected, atol=1e-5, rtol=1e-5)
    for h in hooks:
        h.remove()
    assert hook_count(model) == 0
    torch.testing.assert_close(model(x), plain)


def test_an_unknown_layer_name_raises_where_detoxai_registers_nothing():
    from latentsurgeon.compat.detoxai.hooks import add_clarc_hook, add_mass_mean_probe_hook

    model = make_model()
    with pytest.raises(LayerNotFoundError, match="rellu"):
        add_clarc_hook(model, torch.ones(3 * S * S), torch.zeros(3 * S * S), "rellu")
    with pytest.raises(LayerNotFoundError):
        add_mass_mean_probe_hook(model, torch.ones(3 * S * S), ["rellu"])
    assert hook_count(model) == 0


# -- the correctors --------------------------------------------------------------------------------
def test_enums_have_detoxai_members_and_values():
    from latentsurgeon import correct
    from latentsurgeon.compat.detoxai import RRLossType, RRMaskingPattern

    assert RRMaskingPattern is correct.RRMaskingPattern and RRLossType is correct.RRLossType
    assert {m.name: m.value for m in RRMaskingPattern} == {
        "MAX_LOGIT": "max_logit", "TARGET_LOGIT": "target_logit", "ALL_LOGITS": "all_logits",
        "ALL_LOGITS_RANDOM": "all_logits_random", "LOGPROBS": "logprobs"}
    assert {m.name: m.value for m in RRLossType} == {"L2": "l2", "L1": "l1", "COSINE": "cosine"}


def test_default_cache_directory_follows_detoxai_root(monkeypatch):
    from latentsurgeon.compat.detoxai import ACTIVATIONS_DIR

    assert ACTIVATIONS_DIR.endswith("activations")


def test_extract_activations_caches_under_save_dir(loader, tmp_path):
    from latentsurgeon.compat.detoxai import PCLARC

    model = make_model()
    calls = []
    model.conv.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    corrector = PCLARC(model, "exp", "cpu")
    corrector.extract_activations(loader, ["relu"], save_dir=str(tmp_path))
    assert (tmp_path / "exp").is_dir()
    acts = corrector.activations
    data = make_data()
    assert acts["labels"].shape == (N, 2)
    assert (acts["labels"][:, 0] == data.tensors[1].numpy()).all()
    assert (acts["labels"][:, 1] == data.tensors[2].numpy()).all()
    assert acts["relu"].shape == (N, 3, S, S)
    torch.testing.assert_close(torch.from_numpy(acts["relu"]),
                               model.relu(model.conv(data.tensors[0])).detach())
    assert not model.training  # detoxai leaves the model "frozen" (eval)
    n_calls = len(calls)
    corrector.extract_activations(loader, ["relu"], save_dir=str(tmp_path))  # from the cache
    assert len(calls) == n_calls
    corrector.extract_activations(loader, ["relu"], use_cache=False, save_dir=str(tmp_path))
    assert len(calls) > n_calls


def test_a_cache_of_other_weights_is_refused_not_reused(loader, tmp_path):
    from latentsurgeon.compat.detoxai import PCLARC
    from latentsurgeon.errors import StoreError

    PCLARC(make_model(0), "exp", "cpu").extract_activations(loader, ["relu"],
                                                             save_dir=str(tmp_path))
    other = PCLARC(make_model(1), "exp", "cpu")
    with pytest.raises(StoreError):
        other.extract_activations(loader, ["relu"], save_dir=str(tmp_path))
    other.extract_activations(loader, ["relu"], use_cache=False, save_dir=str(tmp_path))
    model = other.get_model()
    torch.testing.assert_close(torch.from_numpy(other.activations["relu"]),
                               model.relu(model.conv(make_data().tensors[0])).detach())


@pytest.mark.parametrize("cav_type", ["svm", "ridge", "lasso", "logistic", "signal", "mmp"])
def test_compute_cavs_gives_unit_cavs_and_the_two_means(loader, tmp_path, cav_type):
    from latentsurgeon.compat.detoxai import PCLARC

    model = make_model()
    corrector = PCLARC(model, "exp", "cpu")
    corrector.extract_activations(loader, ["relu"], save_dir=str(tmp_path))
    acts = torch.from_numpy(corrector.activations["relu"]).flatten(1)
    flags = make_data().tensors[2].bool()
    corrector.compute_cavs(cav_type, ["relu"])
    assert corrector.activations is None and corrector.cav_type == cav_type
    cav = corrector.cav["relu"]
    assert cav.shape == (3 * S * S,)
    torch.testing.assert_close(cav.norm(), torch.tensor(1.0))
    torch.testing.assert_close(corrector.mean_act_na["relu"], acts[~flags].mean(0))
    torch.testing.assert_close(corrector.mean_act_a["relu"], acts[flags].mean(0))
    # oriented towards the artifact
    assert float((corrector.mean_act_a["relu"] - corrector.mean_act_na["relu"]) @ cav) > 0
    if cav_type in ("mmp", "signal"):  # both: the normalised difference of the class means
        diff = acts[flags].mean(0) - acts[~flags].mean(0)
        torch.testing.assert_close(cav, diff / diff.norm(), atol=1e-5, rtol=1e-4)


def test_correction_before_cavs_is_refused(loader):
    from latentsurgeon.compat.detoxai import PCLARC

    corrector = PCLARC(make_model(), "exp", "cpu")
    with pytest.raises(NotFittedError, match="compute_cavs"):
        corrector.apply_model_correction(["relu"])
    with pytest.raises(NotFittedError, match="extract_activations"):
        corrector.compute_cavs("svm", ["relu"])
    with pytest.raises(InvalidParameterError, match="cav_type"):
        corrector.compute_cavs("pca", ["relu"])


def fitted(cls, loader, tmp_path, model=None, **kwargs):
    corrector = cls(make_model() if model is None else model, "exp", "cpu", **kwargs)
    corrector.extract_activations(loader, ["relu"], save_dir=str(tmp_path))
    corrector.compute_cavs("mmp", ["relu"])
    return corrector


def test_pclarc_hooks_stay_and_move_the_artifact_component_to_the_clean_mean(loader, tmp_path):
    from latentsurgeon.compat.detoxai import PCLARC

    model = make_model()
    x = make_data().tensors[0]
    plain = model(x).detach()
    corrector = fitted(PCLARC, loader, tmp_path, model=model)
    corrector.apply_model_correction(["relu"])
    assert hook_count(model) == 1  # the correction lives in the hook
    v, z = corrector.cav["relu"], corrector.mean_act_na["relu"]
    seen = []
    model.flat.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    out = corrector.get_model()(x)
    torch.testing.assert_close(seen[0] @ v, (z @ v).expand(N), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, plain)
    corrector.remove_hooks()  # detoxai only forgets the handles; here they are removed
    assert hook_count(model) == 1  # only the test's own observer is left
    torch.testing.assert_close(model(x), plain)


def test_aclarc_fine_tunes_and_leaves_no_hook(loader, tmp_path):
    from latentsurgeon.compat.detoxai import ACLARC

    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    corrector = fitted(ACLARC, loader, tmp_path, model=model)
    corrector.apply_model_correction(["relu"], loader, seed=0)
    assert corrector.correction_.epochs == 1  # detoxai's fine_tune_epochs
    assert corrector.correction_.augment_fraction == 1.0  # every sample augmented
    assert hook_count(model) == 0 and not model.training
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_rrclarc_defaults_and_one_layer(loader, tmp_path):
    from latentsurgeon.compat.detoxai import RRCLARC, RRLossType, RRMaskingPattern

    corrector = fitted(RRCLARC, loader, tmp_path)
    assert (corrector.lambda_rr, corrector.rr_loss_type, corrector.masking,
            corrector.target_class) == (1.0, RRLossType.L2, RRMaskingPattern.MAX_LOGIT, None)
    with pytest.raises(InvalidParameterError, match="one layer"):
        corrector.apply_model_correction(["relu", "relu"], loader)
    with pytest.raises(InvalidParameterError, match="target_class"):
        RRCLARC(make_model(), "exp", "cpu",
                rr_config={"masking_pattern": RRMaskingPattern.TARGET_LOGIT})
    config = {"masking_pattern": "all_logits", "rr_loss_type": "cosine", "lambda_rr": 2.0}
    assert RRCLARC(make_model(), "e", "cpu", rr_config=config).masking is \
        RRMaskingPattern.ALL_LOGITS


def test_rrclarc_masked_criterion_and_rr_loss_follow_detoxai(loader, tmp_path):
    from latentsurgeon.compat.detoxai import RRCLARC, RRLossType, RRMaskingPattern

    corrector = fitted(RRCLARC, loader, tmp_path, rr_config={"target_class": 1})
    y_hat = torch.randn(5, 3)
    y = torch.zeros(5, dtype=torch.long)
    expected = {RRMaskingPattern.MAX_LOGIT: y_hat.max(1)[0],
                RRMaskingPattern.TARGET_LOGIT: y_hat[:, 1],
                RRMaskingPattern.ALL_LOGITS: y_hat.sum(1),
                RRMaskingPattern.LOGPROBS: (y_hat.softmax(1) + 1e-5).log().mean(1)}
    for pattern, value in expected.items():
        corrector.masking = pattern
        torch.testing.assert_close(corrector.masked_criterion(y_hat, y), value)
    corrector.masking = RRMaskingPattern.ALL_LOGITS_RANDOM
    random = corrector.masked_criterion(y_hat, y)  # a sum of logits with signs +-1
    assert random.shape == (5,) and (random.abs() <= y_hat.abs().sum(1) + 1e-6).all()
    g = torch.randn(4, 3, S, S)
    cav = corrector.cav["relu"]
    dot = g.flatten(1) @ cav
    for loss, value in ((RRLossType.L2, (dot ** 2).mean()), (RRLossType.L1, dot.abs().mean()),
                        (RRLossType.COSINE, torch.nn.functional.cosine_similarity(
                            g.flatten(1), cav[None]).abs().mean())):
        corrector.rr_loss_type = loss
        torch.testing.assert_close(corrector.rr_loss(g), value, atol=1e-6, rtol=1e-5)


def test_rrclarc_fine_tunes_and_reduces_the_penalty(loader, tmp_path):
    from latentsurgeon.compat.detoxai import RRCLARC

    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    corrector = fitted(RRCLARC, loader, tmp_path, model=model, rr_config={"lambda_rr": 1e4})
    corrector.apply_model_correction(["relu"], loader, fine_tune_epochs=5, seed=0)
    history = corrector.correction_.history_
    assert history["rr"][-1] < 0.2 * history["rr"][0]
    assert hook_count(model) == 0 and not model.training
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


# -- detoxai's interface: the call sequence of run_correction, only the imports changed ----------
@pytest.mark.parametrize("method", ["PCLARC", "ACLARC", "RRCLARC"])
def test_run_correction_call_sequence(loader, tmp_path, monkeypatch, method):
    import latentsurgeon.compat.detoxai as clarcs  # was: import detoxai.methods.clarcs as clarcs

    monkeypatch.setenv("DETOXAI_ROOT_PATH", str(tmp_path))
    model = make_model()
    method_kwargs = {"model": model, "experiment_name": f"exp_{method}", "device": "cpu",
                     "dataloader": loader, "test_dataloader": None, "cav_type": "signal",
                     "cav_layers": ["relu"]}
    corrector = getattr(clarcs, method)(**method_kwargs)
    assert corrector.requires_acts and corrector.requires_cav
    corrector.extract_activations(method_kwargs["dataloader"], method_kwargs["cav_layers"],
                                  save_dir=str(tmp_path))
    corrector.compute_cavs(method_kwargs["cav_type"], method_kwargs["cav_layers"])
    corrector.apply_model_correction(**method_kwargs)
    corrected = corrector.get_model()
    assert corrected is model
    with pytest.raises(AttributeError, match="No Lightning model"):
        corrector.get_lightning_model()
    assert torch.isfinite(corrected(make_data().tensors[0])).all()


# -- a LightningModule, detoxai's model type --------------------------------------------------------
def test_a_lightning_module_is_unwrapped_and_its_criterion_used(loader, tmp_path):
    lightning = pytest.importorskip("lightning")
    from latentsurgeon.compat.detoxai import ACLARC, PCLARC, RRCLARC

    calls = []

    class Wrapper(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()

        def criterion(self, y_hat, y):
            calls.append(len(y))
            return nn.functional.cross_entropy(y_hat, y)

        def forward(self, x):
            return self.model(x)

    wrapper = Wrapper()
    corrector = fitted(RRCLARC, loader, tmp_path, model=wrapper)
    assert corrector.get_model() is wrapper.model
    assert corrector.get_lightning_model() is wrapper
    corrector.apply_model_correction(["relu"], loader, seed=0)
    assert sum(calls) == N  # one epoch through the LightningModule's own criterion
    plain = Wrapper()  # no configure_optimizers of its own: ACLARC falls back to Adam(ft_lr)
    before = [p.detach().clone() for p in plain.parameters()]
    fitted(ACLARC, loader, tmp_path, model=plain).apply_model_correction(["relu"], loader, seed=0)
    assert all(not torch.equal(b, p) for b, p in zip(before, plain.parameters(), strict=True))
    pclarc = fitted(PCLARC, loader, tmp_path, model=Wrapper())
    pclarc.apply_model_correction(["relu"])
    assert hook_count(pclarc.get_lightning_model()) == 1  # on the network inside it


def test_aclarc_fine_tunes_with_the_lightning_modules_own_optimizer(loader, tmp_path):
    lightning = pytest.importorskip("lightning")
    from latentsurgeon.compat.detoxai import ACLARC

    class Frozen(lightning.LightningModule):
        """Its optimizer never moves the weights: lr 0."""

        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()

        def configure_optimizers(self):
            return {"optimizer": torch.optim.SGD(self.parameters(), lr=0.0)}

    wrapper = Frozen()
    before = [p.detach().clone() for p in wrapper.parameters()]
    corrector = fitted(ACLARC, loader, tmp_path, model=wrapper)
    corrector.apply_model_correction(["relu"], loader, seed=0)
    assert all(torch.equal(b, p) for b, p in zip(before, wrapper.parameters(), strict=True))
    assert hook_count(wrapper) == 0


def test_the_docs_example_runs(tmp_path, monkeypatch):
    from ._sections import run_section

    monkeypatch.chdir(tmp_path)
    namespace = run_section("detoxai")
    assert hook_count(namespace["model"]) == 0


def test_the_base_corrector_is_abstract_as_in_detoxai():
    from latentsurgeon.compat.detoxai.clarc import CLARC

    with pytest.raises(TypeError, match="abstract"):
        CLARC(torch.nn.Linear(2, 2), "base", "cpu")
