"""latentsurgeon.compat.torch_concepts against pytorch_concepts 1.0 (1.0.0a6 and 1.0.0a7).

The behaviours its test suite asserts (tests/nn/modules/low/inference/test_intervention.py and
tests/nn/modules/low/policy/) and those its 1.0.0a7 code and docstrings state, re-derived here:
each test says what pytorch_concepts does; where we deliberately differ, the test checks our
behaviour and names the entry of docs/compat.md that gives the reason. The seed document's
GradientPolicy example runs on latentsurgeon.cbm (whose convention it is) with only its import
line changed, and the same example in the 1.0.0a7 form runs on compat.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from _snippets import python_blocks
from torch import nn

from latentsurgeon import cbm
from latentsurgeon.compat.torch_concepts import (
    DistributionIntervention,
    DoIntervention,
    GradientPolicy,
    GroundTruthIntervention,
    InterventionModule,
    RandomPolicy,
    UncertaintyInterventionPolicy,
    UniformPolicy,
    intervene,
    intervention,
)
from latentsurgeon.errors import ShapeMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")

B, F = 4, 3
DOCS = Path(__file__).resolve().parents[2] / "docs" / "compat.md"


class _Encoder(nn.Module):
    def __init__(self, in_features: int = 4, out_features: int = F) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return torch.sigmoid(self.linear(x))


def _enc(out_features: int = F) -> _Encoder:
    torch.manual_seed(0)
    return _Encoder(out_features=out_features)


# -- strategies ------------------------------------------------------------------------------------
def test_ground_truth_is_returned_whatever_the_input():
    gt = torch.full((B, F), 0.7)
    strategy = GroundTruthIntervention(gt)
    assert strategy.ground_truth is gt and isinstance(strategy, nn.Module)
    assert torch.equal(strategy(torch.randn(B, F)), gt)
    assert torch.equal(strategy(torch.randn(B, F)), strategy(torch.randn(B, F)))
    strategy.ground_truth = torch.zeros(B, F)  # set anew for the next batch
    assert torch.equal(strategy(torch.randn(B, F)), torch.zeros(B, F))


def test_do_intervention_broadcasts_its_constants():
    assert DoIntervention(1.0).constants.dim() == 0
    assert DoIntervention(torch.tensor([0.5, 1.0, 0.0])).constants.shape == (3,)
    assert DoIntervention(torch.ones(1, 3)).constants.shape == (1, 3)
    assert "constants" in dict(DoIntervention(1.0).named_buffers())
    x = torch.randn(B, F)
    assert torch.equal(DoIntervention(0.5)(x), torch.full((B, F), 0.5))
    per_feature = torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(DoIntervention(per_feature)(x), per_feature.expand(B, F))
    per_sample = torch.rand(B, F)
    assert torch.equal(DoIntervention(per_sample)(x), per_sample)
    assert torch.equal(DoIntervention(per_feature[None])(x), per_feature.expand(B, F))
    assert DoIntervention(torch.ones(F))(x.double()).dtype == torch.float64
    # 1.0.0a7: any shape that broadcasts, also to [..., F]; its docstring's example
    assert DoIntervention(torch.tensor([0.0, 1.0]))(torch.randn(3, 2)).tolist() == [[0.0, 1.0]] * 3
    assert DoIntervention(per_feature)(torch.randn(2, 5, F)).shape == (2, 5, F)


@pytest.mark.parametrize("constants", [torch.ones(1, 1, 3), torch.tensor([0.5, 1.0]),
                                       torch.ones(5, F)])
def test_do_constants_that_do_not_broadcast_are_a_value_error(constants):
    # pytorch_concepts: ValueError (1.0.0a7; 1.0.0a6 an AssertionError for the last two).
    # Ours: ShapeMismatchError, a ValueError (docs/compat.md: errors).
    with pytest.raises(ShapeMismatchError) as info:
        DoIntervention(constants)(torch.randn(B, F))
    assert isinstance(info.value, ValueError)


def test_distribution_intervention_takes_one_or_a_list_of_distributions():
    bernoulli = torch.distributions.Bernoulli(torch.tensor(0.5))
    assert DistributionIntervention(bernoulli).dist is bernoulli
    three = [torch.distributions.Bernoulli(torch.tensor(p)) for p in (0.3, 0.5, 0.7)]
    assert len(list(DistributionIntervention(three).dist)) == 3
    out = DistributionIntervention(bernoulli)(torch.randn(B, F))
    assert out.shape == (B, F) and bool(((out == 0) | (out == 1)).all())
    assert DistributionIntervention(three)(torch.randn(B, F)).shape == (B, F)
    normal = torch.distributions.Normal(torch.tensor(0.0), torch.tensor(1.0))
    assert DistributionIntervention(normal)(torch.randn(B, F)).shape == (B, F)
    # 1.0.0a7: [..., F]; the list gives column f from distribution f
    mixed = [torch.distributions.Bernoulli(torch.tensor(1.0)), normal,
             torch.distributions.Bernoulli(torch.tensor(0.0))]
    values = DistributionIntervention(mixed, seed=0)(torch.randn(2, 5, F))
    assert values.shape == (2, 5, F)
    assert bool((values[..., 0] == 1).all()) and bool((values[..., 2] == 0).all())
    # pytorch_concepts: an AssertionError for the wrong number; ours a ShapeMismatchError
    with pytest.raises(ShapeMismatchError, match="2 per-concept distributions"):
        DistributionIntervention([bernoulli] * 2)(torch.randn(B, F))


# -- policies --------------------------------------------------------------------------------------
def test_uniform_policy_scores_zero():
    policy = UniformPolicy()
    assert isinstance(policy, nn.Module)
    for n_concepts in (1, 5, 20):
        out = policy(torch.randn(4, n_concepts))
        assert out.shape == (4, n_concepts) and bool((out == 0).all())
    assert torch.equal(policy(torch.full((3, 5), 0.01)), policy(torch.full((3, 5), 100.0)))


def test_random_policy_scores_lie_in_zero_to_scale():
    assert RandomPolicy().scale == 1.0 and RandomPolicy(scale=2.0).scale == 2.0
    assert isinstance(RandomPolicy(), nn.Module)
    assert bool((RandomPolicy(scale=0.0)(torch.randn(4, 10)) == 0).all())
    out = RandomPolicy(scale=3.0)(torch.randn(100, 10))
    assert out.shape == (100, 10) and bool((out >= 0).all()) and bool((out <= 3.0).all())
    x = torch.randn(B, F)
    policy = RandomPolicy()
    assert not torch.equal(policy(x), policy(x))
    torch.manual_seed(42)
    assert RandomPolicy(scale=5.0)(x).mean() > RandomPolicy(scale=0.5)(x).mean()
    assert abs(float(RandomPolicy()(torch.randn(10000, 5)).mean()) - 0.5) < 0.05
    # ours: a seed makes the stream reproducible
    assert torch.equal(RandomPolicy(seed=3)(x), RandomPolicy(seed=3)(x))


def test_uncertainty_policy_is_the_distance_from_its_point():
    assert UncertaintyInterventionPolicy().max_uncertainty_point == 0.0
    assert UncertaintyInterventionPolicy(-1.0).max_uncertainty_point == -1.0
    at_half = UncertaintyInterventionPolicy(max_uncertainty_point=0.5)
    x = torch.tensor([[0.5, 1.0, 0.0, -0.5]])
    assert torch.allclose(at_half(x), (x - 0.5).abs())
    at_zero = UncertaintyInterventionPolicy()
    assert bool((at_zero(torch.zeros(B, F)) == 0).all())
    assert bool((at_zero(torch.randn(100, 10)) >= 0).all())
    assert torch.equal(at_zero(torch.tensor([[0.3]])), at_zero(torch.tensor([[-0.3]])))
    assert at_zero(torch.tensor([[10.0, -10.0]])).mean() > at_zero(torch.tensor([[0.1, -0.1]])).mean()
    assert at_zero(torch.randn(3, 1)).shape == (3, 1)


def test_policy_scores_carry_no_gradient():
    # pytorch_concepts: policy(x) keeps x's graph (its mask's straight-through proxy uses it).
    # Ours: scores are a ranking, detached (docs/compat.md: gradients of the mask).
    x = torch.randn(2, 5, requires_grad=True)
    assert UncertaintyInterventionPolicy()(x).grad_fn is None


def test_gradient_policy_scores_minus_the_gradient_magnitude():
    policy = GradientPolicy()
    grads = torch.tensor([[-1.0, 2.0, -3.0]] * B)
    # 1.0.0a7: -|grad| (the largest gradients intervened on first). 1.0.0a6 returned +|grad|
    # and its tests assert it (docs/compat.md: GradientPolicy's sign).
    assert torch.equal(policy(torch.randn(B, F), concept_grads=grads), -grads.abs())
    assert torch.equal(policy(torch.randn(3, 7)), torch.zeros(3, 7))
    # one context serves policy and strategy: other keys are not the policy's business
    assert torch.equal(policy(torch.randn(B, F), y_pred=torch.ones(B)), torch.zeros(B, F))


# -- build_mask ------------------------------------------------------------------------------------
def test_build_mask_per_row():
    policy = RandomPolicy()
    scores = policy(torch.randn(4, 6))
    assert policy.build_mask(scores, quantile=0.5).shape == (4, 6)
    # quantile 1: every candidate is intervened on (their STE proxy has the same value)
    assert torch.equal(policy.build_mask(scores, quantile=1.0), torch.zeros(4, 6))
    subset = policy.build_mask(scores, sel_idx=torch.tensor([0, 2, 4]), quantile=1.0)
    assert torch.equal(subset[:, [1, 3, 5]], torch.ones(4, 3))
    assert torch.equal(subset[:, [0, 2, 4]], torch.zeros(4, 3))
    empty = policy.build_mask(scores, sel_idx=torch.tensor([], dtype=torch.long))
    assert torch.equal(empty, torch.ones(4, 6))
    # k = 1 + floor(q (K - 1)) lowest per row, ties at the threshold included
    scores = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.0, 0.0, 5.0, 1.0]])
    mask = UniformPolicy().build_mask(scores, quantile=1 / 3)  # k = 2
    assert mask.tolist() == [[1, 0, 1, 0], [0, 0, 1, 1]]
    # the same numbers as latentsurgeon.cbm's mask
    assert torch.equal(mask, cbm.build_mask(scores, quantile=1 / 3))


def test_build_mask_per_leading_slice():
    # 1.0.0a7: scores [..., F] are masked per slice of F, as rows of a [B, F] batch are
    scores = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(0))
    mask = UniformPolicy().build_mask(scores, quantile=0.0)  # the lowest of each slice
    assert mask.shape == (2, 5, 4)
    assert torch.equal((mask == 0).float().sum(-1), torch.ones(2, 5))
    assert torch.equal(mask.reshape(10, 4), cbm.build_mask(scores.reshape(10, 4), quantile=0.0))
    # candidates per slice, [Batch, 1, K] broadcast over Time
    per_batch = torch.tensor([[[0, 1]], [[2, 3]]])
    mask = UniformPolicy().build_mask(scores, sel_idx=per_batch, quantile=1.0)
    assert torch.equal(mask[0], torch.tensor([[0.0, 0, 1, 1]]).expand(5, 4))
    assert torch.equal(mask[1], torch.tensor([[1.0, 1, 0, 0]]).expand(5, 4))
    with pytest.raises(ShapeMismatchError, match="broadcast"):
        UniformPolicy().build_mask(scores, sel_idx=torch.zeros(3, 1, 2, dtype=torch.long))


def test_a_single_candidate_is_intervened_on_at_any_quantile():
    # pytorch_concepts keeps a lone candidate when quantile < 1 (a special case of K = 1);
    # ours applies k = max(1, ...) to every K (docs/compat.md: one candidate).
    mask = UniformPolicy().build_mask(torch.rand(B, 3), sel_idx=[1], quantile=0.0)
    assert torch.equal(mask[:, 1], torch.zeros(B))


# -- InterventionModule ----------------------------------------------------------------------------
def test_construction_keeps_pytorch_concepts_attributes():
    enc, strategy, policy = _enc(), GroundTruthIntervention(torch.ones(B, F)), UniformPolicy()
    module = InterventionModule(enc, strategy, policy)
    assert isinstance(module, nn.Module) and isinstance(module, cbm.InterventionModule)
    assert module.original_module is enc
    assert module.intervention_strategy is strategy and module.intervention_policy is policy
    assert module.quantile == 1.0 and module.eps == 1e-12 and module.sel_idx is None
    assert InterventionModule(enc, DoIntervention(0.0), policy, quantile=0.5).quantile == 0.5
    chosen = InterventionModule(enc, DoIntervention(0.0), policy,
                                out_concepts_to_intervene_on=[0, 2])
    assert chosen.out_concepts_to_intervene_on == [0, 2]
    assert chosen.sel_idx.tolist() == [0, 2] and chosen.sel_idx.dtype == torch.long
    head = nn.Linear(F, 1)
    with_head = InterventionModule(enc, DoIntervention(0.0), policy,
                                   extra_modules={"task_head": head})
    assert dict(with_head.named_modules())["task_head"] is head


def test_intervene_is_the_factory():
    enc = _enc()
    module = intervene(enc, DoIntervention(0.0), UniformPolicy(), quantile=0.5)
    assert isinstance(module, InterventionModule)
    assert module.original_module is enc and module.quantile == 0.5


def test_forward_end_to_end():
    enc, x = _enc(), torch.randn(B, 4)
    gt = torch.full((B, F), 0.7)
    assert torch.allclose(intervene(enc, GroundTruthIntervention(gt), UniformPolicy())(x), gt)
    assert torch.equal(intervene(enc, DoIntervention(0.0), UniformPolicy())(x), torch.zeros(B, F))
    assert torch.allclose(intervene(enc, DoIntervention(0.5), RandomPolicy())(x),
                          torch.full((B, F), 0.5))
    assert torch.allclose(intervene(enc, DoIntervention(1.0), UncertaintyInterventionPolicy())(x),
                          torch.ones(B, F))
    bernoulli = torch.distributions.Bernoulli(torch.tensor(0.5))
    assert intervene(enc, DistributionIntervention(bernoulli), UniformPolicy())(x).shape == (B, F)
    # a subset by index: the others unchanged
    wide = _enc(out_features=4)
    with torch.no_grad():
        out = intervene(wide, GroundTruthIntervention(torch.ones(B, 4)), UniformPolicy(),
                        out_concepts_to_intervene_on=[0, 1])(x)
        original = wide(x)
    assert torch.allclose(out[:, :2], torch.ones(B, 2))
    assert torch.equal(out[:, 2:], original[:, 2:])
    # 1.0.0a7's docstring example
    layer = nn.Linear(8, 3)
    assert InterventionModule(layer, DoIntervention(0.0), UniformPolicy(), [1])(
        torch.randn(4, 8))[:, 1].tolist() == [0.0] * 4


def test_a_layer_output_with_leading_dimensions_is_intervened_on_per_slice():
    torch.manual_seed(0)
    layer = nn.Linear(4, F)  # applied to (Batch, Time, 4): output (Batch, Time, F)
    x = torch.randn(2, 5, 4)
    module = InterventionModule(layer, DoIntervention(9.0), UncertaintyInterventionPolicy(),
                                [0, 1, 2], quantile=0.0)
    out, original = module(x), layer(x)
    replaced = out == 9.0
    assert torch.equal(replaced.sum(-1), torch.ones(2, 5, dtype=torch.long))
    # in every slice, the output closest to 0 (the least certain logit)
    assert torch.equal(replaced.float().argmax(-1), original.abs().argmin(-1))
    assert module.last_mask.shape == (2, 5, F)


def test_quantile_zero_with_one_concept_intervenes():
    # pytorch_concepts' test: quantile 0 with one output keeps it; ours replaces it
    # (docs/compat.md: one candidate).
    enc, x = _enc(out_features=1), torch.randn(B, 4)
    out = intervene(enc, GroundTruthIntervention(torch.ones(B, 1)), UniformPolicy(),
                    quantile=0.0)(x)
    assert torch.equal(out, torch.ones(B, 1))


def test_gradients_reach_the_input_and_the_layer():
    enc = _enc()
    x = torch.randn(B, 4, requires_grad=True)
    intervene(enc, DoIntervention(0.5), UncertaintyInterventionPolicy(), quantile=0.5)(x) \
        .sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert enc.linear.weight.grad is not None
    full = intervene(enc, DoIntervention(0.5), UniformPolicy(), quantile=1.0)(x)
    full.sum().backward()  # everything replaced: no error


def test_build_context_gets_the_code_s_five_arguments_and_the_call_s_extra_tensors():
    enc, x, y = _enc(), torch.randn(B, 4), torch.ones(B)
    head = nn.Linear(F, 1)
    seen = {}

    def build_context(preds, original_module, inputs, extra_tensors, extra_modules):
        seen.update(preds=preds, module=original_module, inputs=inputs, extra=extra_tensors,
                    modules=extra_modules)
        return {"concept_grads": torch.tensor([[0.0, 5.0, 1.0]]).expand(len(preds), F)}

    module = InterventionModule(enc, DoIntervention(-1.0), GradientPolicy(), [0, 1, 2],
                                quantile=0.0, build_context=build_context,
                                extra_modules={"task_head": head})
    out = module(x, extra_tensors={"y_true": y})
    assert torch.allclose(seen["preds"], enc(x)) and seen["module"] is enc
    assert set(seen["inputs"]) == {"x"} and seen["inputs"]["x"] is x
    assert seen["extra"] == {"y_true": y} and seen["modules"] == {"task_head": head}
    assert torch.equal(out[:, 1], -torch.ones(B))  # the largest gradient is intervened on
    module(x)
    assert seen["extra"] == {}  # nothing given: an empty dict
    # a layer whose forward takes **kwargs, and one whose arguments do not bind
    class Kwargs(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, F)

        def forward(self, x, **kwargs):
            return self.linear(x)

    assert InterventionModule(Kwargs(), DoIntervention(0.5), UniformPolicy(),
                              build_context=build_context)(x).shape == (B, F)


def test_a_subclass_may_override_build_context():
    class Shifted(InterventionModule):
        def build_context(self, inputs, original_module, predictions, extra_tensors=None,
                          extra_modules=None):
            return {"concept_grads": extra_tensors["grads"]}

    grads = torch.tensor([[3.0, 0.0, 0.0]] * B)
    out = Shifted(_enc(), DoIntervention(7.0), GradientPolicy(), [0, 1, 2], quantile=0.0)(
        torch.randn(B, 4), extra_tensors={"grads": grads})
    assert torch.equal(out[:, 0], torch.full((B,), 7.0)) and not bool((out[:, 1:] == 7).any())


def test_selections_by_name_and_bad_selections():
    class Annotations:  # pytorch_concepts' Annotations, as far as the selection reads it
        labels = ["alpha", "beta", "gamma"]

        def get_slice(self, names):
            return [self.labels.index(n) for n in names]

    enc = _enc()
    enc.out_concepts = Annotations()
    named = InterventionModule(enc, DoIntervention(0.0), UniformPolicy(), ["alpha", "gamma"])
    assert named.sel_idx.tolist() == [0, 2]
    # pytorch_concepts raises these ValueErrors when sel_idx is read; ours at construction
    # (docs/compat.md: errors)
    with pytest.raises(ValueError, match="annotated"):
        InterventionModule(_enc(), DoIntervention(0.0), UniformPolicy(), ["concept_a"])
    with pytest.raises(ValueError, match="integer positions"):
        InterventionModule(_enc(), DoIntervention(0.0), UniformPolicy(), [1.5])

    class FakeStrategy:
        pass

    with pytest.raises(ValueError, match="strategy must be callable"):
        InterventionModule(_enc(), FakeStrategy(), UniformPolicy())


def test_a_layer_whose_arguments_do_not_bind_still_raises_its_own_error():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, F)

        def forward(self, x, required_extra):
            return self.linear(x)

    with pytest.raises(TypeError):
        InterventionModule(TwoInputs(), DoIntervention(0.5), UniformPolicy())(torch.randn(B, 4))


def test_construction_does_not_inspect_the_layer_s_forward():
    enc = _enc()
    enc.forward = len  # no inspectable signature
    assert InterventionModule(enc, DoIntervention(0.5), UniformPolicy()).original_module is enc
    # forward's signature: extra_tensors is keyword-only (pytorch_concepts also copies the
    # layer's parameter names into it; docs/compat.md)
    signature = inspect.signature(InterventionModule.forward)
    assert signature.parameters["extra_tensors"].kind is inspect.Parameter.KEYWORD_ONLY


# -- intervention() --------------------------------------------------------------------------------
class _Counting(DoIntervention):
    calls = 0

    def forward(self, x, *args, **context):
        type(self).calls += 1
        return super().forward(x, *args, **context)


def test_intervention_hooks_the_layer_and_yields_the_module():
    layer = nn.Linear(8, 3)
    x = torch.randn(4, 8)
    # 1.0.0a7: the layer itself returns intervened outputs inside the block (its docstring)
    with intervention(layer, DoIntervention(0.0), UniformPolicy(), [1]) as module:
        assert layer(x)[:, 1].tolist() == [0.0] * 4
        assert isinstance(module, InterventionModule)
    assert layer(x)[:, 1].abs().sum() > 0 and not layer._forward_hooks
    # 1.0.0a6 code calls the yielded module: one intervention per call, not two
    _Counting.calls = 0
    with intervention(layer, _Counting(0.5), UniformPolicy()) as module:
        out = module(x)
    assert out.shape == (4, 3) and _Counting.calls == 1
    # an InterventionModule as the target; no other argument then
    wrapped = InterventionModule(layer, DoIntervention(2.0), UniformPolicy(), [0])
    with intervention(wrapped):
        assert torch.equal(layer(x)[:, 0], torch.full((4,), 2.0))
    with pytest.raises(TypeError, match="no other argument"):
        with intervention(wrapped, quantile=0.5):
            pass
    with pytest.raises(RuntimeError), intervention(layer, DoIntervention(0.0), UniformPolicy()):
        raise RuntimeError("inside the block")
    assert not layer._forward_hooks


# -- the seed document's example and its 1.0.0a7 form ---------------------------------------------
def _parts():
    torch.manual_seed(0)
    concept_encoder = nn.Linear(6, 4)
    task_head = nn.Linear(4, 2)
    with torch.no_grad():
        task_head.weight.copy_(torch.tensor([[0.1, -3.0, 0.2, 0.0], [0.0, 1.0, -0.1, 2.0]]))
    return concept_encoder, task_head, torch.randn(5, 6)


def test_the_seed_documents_example_runs_on_latentsurgeon_cbm():
    from latentsurgeon.cbm import GradientPolicy, InterventionModule  # the changed import line

    concept_encoder, task_head, x = _parts()
    strategy = cbm.DoIntervention(100.0)

    # the example, as the GradientPolicy docstring writes it
    def build_context(module, predictions, *args, **kwargs):
        with torch.enable_grad():
            pred = predictions.detach().requires_grad_(True)
            task_out = module.task_head(pred)
            grads = torch.autograd.grad(task_out.sum(), pred)[0]
        return {"concept_grads": grads.detach()}
    intervention_module = InterventionModule(
        concept_encoder,
        strategy,
        GradientPolicy(),
        build_context=build_context,
        extra_modules={"task_head": task_head},
        quantile=0.5,
    )
    # d sum(task) / d concept = the head's column sums: [0.1, -2.0, 0.1, 2.0]; k = 2 of 4
    replaced = intervention_module(x) == 100.0
    assert replaced[:, [1, 3]].all() and not replaced[:, [0, 2]].any()


def test_the_same_example_in_the_1_0_0a7_form_runs_on_compat():
    concept_encoder, task_head, x = _parts()
    strategy = DoIntervention(100.0)

    # the 1.0.0a7 docstring's example: the code's build_context and the required list
    def build_context(predictions, module, inputs, extra_tensors, extra_modules):
        with torch.enable_grad():
            pred = predictions.detach().requires_grad_(True)
            task_out = extra_modules["task_head"](pred)
            grads = torch.autograd.grad(task_out.sum(), pred)[0]
        return {"concept_grads": grads.detach()}

    intervention_module = InterventionModule(
        concept_encoder, strategy, GradientPolicy(), [0, 1, 2, 3],
        build_context=build_context,
        extra_modules={"task_head": task_head},
        quantile=0.5,
    )
    replaced = intervention_module(x) == 100.0
    assert replaced[:, [1, 3]].all() and not replaced[:, [0, 2]].any()


def test_the_docs_section_snippets_run(tmp_path, monkeypatch):
    text = DOCS.read_text()
    start = text.index("## pytorch_concepts")
    end = text.find("\n## ", start + 1)
    lines_before = text[:start].count("\n")
    last_line = text[:end].count("\n") if end != -1 else text.count("\n")
    snippets = [s for s in python_blocks(DOCS) if lines_before < s.line <= last_line]
    assert snippets, "the pytorch_concepts section of docs/compat.md has no snippet"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for snippet in snippets:
        snippet.run(namespace)


def test_latentsurgeon_cbm_keeps_its_own_conventions_beside_compat():
    # the list of per-concept distributions is latentsurgeon.cbm's too (compat adapts it)
    mixed = [torch.distributions.Bernoulli(torch.tensor(1.0)),
             torch.distributions.Normal(torch.tensor(-5.0), torch.tensor(0.01))]
    values = cbm.DistributionIntervention(mixed, seed=0)(torch.zeros(6, 2))
    assert bool((values[:, 0] == 1).all()) and bool((values[:, 1] < -4).all())
    # cbm's module refuses (N, T, F) outputs and extra_tensors goes to the layer, which refuses it
    layer = nn.Linear(4, F)
    ours = cbm.InterventionModule(layer, cbm.DoIntervention(0.0), cbm.UniformPolicy())
    with pytest.raises(ShapeMismatchError, match=r"\(N, K\)"):
        ours(torch.randn(2, 5, 4))
    with pytest.raises(TypeError):
        ours(torch.randn(2, 4), extra_tensors={})
