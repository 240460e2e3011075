"""The RR-ClArC and RRR penalties as loss terms: a plain loop that adds the term on the batches
the correction's own ``fit`` sees trains bit-identical weights, and so does (up to rounding) the
Lightning callback."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.activations.batching import iter_batches
from latentsurgeon.correct import ExplanationRegularization, RRClarc, RRClarcLoss, RRRLoss
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, NotFittedError
from latentsurgeon.hooks import hook_count

EPOCHS, BATCH, LR, SEED = 3, 16, 1e-2, 0


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    artifact = (torch.rand(96, generator=g) < torch.where(y == 2, 0.8, 0.1)).long()
    x[:, 0] = x[:, 0] + 3 * artifact  # the shortcut feature
    masks = torch.zeros(96, 6)
    masks[:, 0] = 1
    return x, y, artifact, masks


def batches(tensors: tuple[torch.Tensor, ...]):
    """The batches of ``latentsurgeon.training.train``: seeded order, reshuffled per epoch."""
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        yield from iter_batches(tensors, BATCH, shuffle=True, generator=generator)


def rr_correction(masking: str = "max_logit") -> RRClarc:
    return RRClarc("2", masking=masking, epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=SEED,
                   trainable="all", cav_samples="all", progress=False)


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        if atol == 0.0:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("masking", ["max_logit", "all_logits_random"])
def test_rrclarc_term_in_a_plain_loop_equals_fit(data, masking):
    x, y, artifact, _ = data
    fitted = make_model()
    correction = rr_correction(masking).fit(fitted, (x, y, artifact))
    model = make_model()
    before = copy.deepcopy(model)
    assert not torch.equal(fitted[4].weight, before[4].weight)
    term = RRClarcLoss.from_correction(correction)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    with term.tracking(model):
        for xb, yb in batches((x, y)):
            outputs = model(xb)
            loss = F.cross_entropy(outputs, yb) + term(model, (xb, yb), outputs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    assert hook_count(model) == 0
    assert_same_weights(model, fitted)  # exact: the same penalty code on the same batches
    assert term.last_penalty is not None and term.last_penalty.dim() == 0


def test_rrr_term_in_a_plain_loop_equals_fit(data):
    x, y, _, masks = data
    correction = ExplanationRegularization(lambda_rrr=1.0, lr=LR, epochs=EPOCHS,
                                           batch_size=BATCH, seed=SEED, progress=False)
    fitted = make_model()
    correction.fit(fitted, (x, y), shortcut_masks=masks)
    model = make_model()
    term = RRRLoss.from_correction(correction)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for xb, yb, mb in batches((x, y, masks)):
        xb = xb.detach().requires_grad_(True)
        outputs = model(xb)
        loss = F.cross_entropy(outputs, yb) + term(model, (xb, yb, mb), outputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert_same_weights(model, fitted)


def test_terms_run_their_own_forward_when_outputs_are_missing(data):
    x, y, artifact, masks = data
    correction = rr_correction().set_params(epochs=0).fit(make_model(), (x, y, artifact))
    model = make_model()
    term = RRClarcLoss.from_correction(correction)
    with term.tracking(model):
        tracked = term(model, (x[:8], y[:8]), model(x[:8]))
    alone = term(model, (x[:8], y[:8]))
    assert torch.equal(tracked, alone) and alone.requires_grad
    rrr = RRRLoss(0.5)
    given = x[:8].clone().requires_grad_(True)
    assert torch.equal(rrr(model, (given, y[:8], masks[:8]), model(given)),
                       rrr(model, (x[:8], y[:8], masks[:8])))
    assert hook_count(model) == 0


def test_terms_refuse_what_they_cannot_use(data):
    x, y, artifact, masks = data
    model = make_model()
    with pytest.raises(NotFittedError, match="not fitted"):
        RRClarcLoss.from_correction(rr_correction())
    with pytest.raises(InvalidParameterError, match="RRClarc"):
        RRClarcLoss.from_correction(ExplanationRegularization())
    with pytest.raises(InvalidParameterError, match="zero"):
        RRClarcLoss("2", torch.zeros(16))
    with pytest.raises(InvalidParameterError, match="lambda_rr"):
        RRClarcLoss("2", torch.ones(16), lambda_rr=-1.0)
    with pytest.raises(InvalidParameterError, match="target"):
        RRClarcLoss("2", torch.ones(16), masking="target_logit")
    with pytest.raises(InvalidParameterError, match="masking"):
        RRRLoss(masking="everything")
    with pytest.raises(InvalidParameterError, match="masks"):
        RRRLoss()(model, (x[:4], y[:4]))
    term = RRClarcLoss("2", torch.ones(16))
    with pytest.raises(LatentSurgeonError, match="latest"), term.tracking(model):
        stale = model(x[:4])
        model(x[4:8])  # a second pass: its offset is not in `stale`'s graph
        term(model, (x[:4], y[:4]), stale.detach() + 0)
    assert hook_count(model) == 0


def test_lightning_callback_trains_the_weights_fit_trains(data):
    pl = pytest.importorskip("lightning.pytorch")
    from latentsurgeon.correct.lightning import CorrectionCallback

    x, y, artifact, _ = data
    fitted = make_model()
    correction = rr_correction().fit(fitted, (x, y, artifact))

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()

        def forward(self, inputs):
            return self.model(inputs)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.model(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    module = Module()
    callback = CorrectionCallback(RRClarcLoss.from_correction(correction), network="model")
    loader = torch.utils.data.DataLoader(list(batches((x, y))), batch_size=None)
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader)
    # two backward passes (the loss, then the term) instead of one: the gradients are summed in
    # another order, so equality is up to rounding (measured: 0.0 here; asserted: 1e-5)
    assert_same_weights(module.model, fitted, atol=1e-5)
    assert hook_count(module) == 0
    with pytest.raises(InvalidParameterError, match="term"):
        CorrectionCallback(3)
