"""Corrections: P-ClArC inference overhead, RR-ClArC and RRR epoch time against plain fine-tuning.

Every correction is built from :data:`latentsurgeon.correct.REGISTRY` (its tuned settings; one
epoch for the timed ones).

The model is a DigitCNN trained for 3 epochs on the watermarked decoy digits (enough for
realistic activations; the timings do not depend on accuracy).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from bench.runner import Case
from latentsurgeon.correct import REGISTRY, PClarc
from latentsurgeon.data import decoy_digits
from latentsurgeon.models import DigitCNN, train_classifier


def _setup():
    data = decoy_digits("watermark", seed=0)
    torch.manual_seed(0)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=3, seed=0, progress=False)
    return data, model.eval()


def _plain_epoch(model, images, labels, params, batch_size: int = 64, seed: int = 0) -> float:
    """One epoch of cross-entropy fine-tuning of ``params`` with Adam: the peer loop."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.Adam(params, lr=1e-3)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    total = 0.0
    for idx in order.split(batch_size):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach())
    model.eval()
    return total


def cases() -> list[Case]:
    # One thread: on a shared 2-core machine two BLAS threads make every timing noisy.
    torch.set_num_threads(1)
    data, model = _setup()
    train = data.correction_data()  # labels, artifact flags and the watermark region as masks
    pclarc = REGISTRY["p-clarc"].build(progress=False).fit(model, train)
    exported = pclarc.export(model)
    inputs = data.poisoned.images.repeat(8, 1, 1, 1)  # 3976 images
    batches = inputs.split(256)

    @torch.no_grad()
    def plain() -> torch.Tensor:
        return torch.cat([model(b) for b in batches])

    @torch.no_grad()
    def hooked() -> torch.Tensor:
        with pclarc.applied(model):
            return torch.cat([model(b) for b in batches])

    @torch.no_grad()
    def exported_forward() -> torch.Tensor:
        return torch.cat([exported(b) for b in batches])

    def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    # Training epochs: RR-ClArC (layers above `features`) vs the same parameters with CE only;
    # RRR (all parameters, double backprop to the input) vs CE only on all parameters.
    # The CAV is fitted once (by P-ClArC above) so that the epochs time training only.
    cav = _FrozenCav(pclarc)
    def rr_epoch() -> float:
        m = copy.deepcopy(model)
        est = REGISTRY["rr-clarc"].build(cav=cav, epochs=1, progress=False)
        est.fit(m, train)
        return est.history_["loss"][0]

    def plain_head_epoch() -> float:
        m = copy.deepcopy(model)
        return _plain_epoch(m, train.images, train.labels, list(m.classifier.parameters()))

    def rrr_epoch() -> float:
        m = copy.deepcopy(model)
        est = REGISTRY["rrr"].build(epochs=1, progress=False)
        est.fit(m, train)
        return est.history_["loss"][0]

    def plain_all_epoch() -> float:
        m = copy.deepcopy(model)
        return _plain_epoch(m, train.images, train.labels, list(m.parameters()))

    return [
        Case("pclarc_hooked_vs_plain_forward", hooked, plain, "uncorrected model",
             "DigitCNN, 3976 poisoned images in batches of 256, P-ClArC attached as a hook "
             "(agreement: max |logit difference| to the uncorrected model, i.e. the correction)",
             ">= 0.95", max_diff),
        Case("pclarc_exported_vs_plain_forward", exported_forward, plain, "uncorrected model",
             "same inputs through the exported model (ClarcProjection submodule, no hooks)",
             ">= 0.95", max_diff),
        Case("rrclarc_epoch_vs_plain_finetune", rr_epoch, plain_head_epoch,
             "plain fine-tuning (CE, same parameters)",
             "one epoch on 1300 images, batch 64, layers above `features` (the head); RR-ClArC "
             "adds d(max logit)/d(activation) with create_graph and its second-order backward",
             "reported", None),
        Case("rrr_epoch_vs_plain_finetune", rrr_epoch, plain_all_epoch,
             "plain fine-tuning (CE, all parameters)",
             "one epoch on 1300 images, batch 64, all parameters; RRR adds the input gradient "
             "with create_graph and its second-order backward",
             "reported", None),
    ]


class _FrozenCav:
    """A CAV-like view of a fitted correction's vectors, so the bench times training only."""

    def __init__(self, fitted: PClarc) -> None:
        self.direction_ = fitted.direction_
        self.mean_clean_ = fitted.mean_clean_
        self.mean_concept_ = fitted.mean_concept_
        self.pooling = fitted.pooling_
        self.input_shape_ = fitted.input_shape_
        self.scores_ = fitted.cav_scores_
