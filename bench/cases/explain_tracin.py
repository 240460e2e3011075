"""TracIn: latentsurgeon's ``TracIn`` against lfxai's on the same autoencoder and checkpoints.

Label-free TracIn (reconstruction loss, gradients with respect to the encoder's parameters),
5 checkpoints, lr from the checkpoints on both sides. lfxai's ``TracIn.attribute`` loops over
examples with one ``autograd.grad`` each (``create_graph=True``) and loads every checkpoint
into the model; ours takes per-sample gradients with one ``vmap(grad)`` per batch and swaps each
checkpoint in functionally. Two encoder sizes: 4.2k parameters (50 test x 300 train) and 1.06M
parameters (20 test x 100 train).

Agreement: max |ours - lfxai| / max |lfxai| (goal <= 1e-5).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.cases._explain_setup import max_relative_error, require_lfxai, setup
from bench.runner import Case
from latentsurgeon.explain import TracIn

SIZES = {"small": (300, 50), "large": (100, 20)}


def _case(size: str) -> Case:
    from lfxai.explanations.examples import TracIn as LfxaiTracIn

    s = setup(size)
    n_train, n_test = SIZES[size]
    x_train, x_test = s.train[:n_train], s.test[:n_test]
    s.model.checkpoints_files = s.plain_files
    peer_explainer = LfxaiTracIn(s.model, nn.MSELoss(), s.checkpoint_dir.parent / "lfxai-grads",
                                 X_train=x_train)

    def ours() -> torch.Tensor:
        return TracIn(s.checkpoint_dir, "reconstruction", params="encoder",
                      batch_size=512).scores(s.model, x_train, x_test)

    def peer() -> torch.Tensor:
        return peer_explainer.attribute(x_test, list(range(n_train)),
                                        learning_rate=s.lr).detach()

    name = "explain_tracin_vs_lfxai" + ("" if size == "small" else "_1m")
    return Case(name, ours, peer, "lfxai TracIn.attribute",
                f"label-free TracIn, digits MLP autoencoder, encoder {s.n_encoder_params:,} "
                f"parameters, {n_test} test x {n_train} train x 5 checkpoints",
                ">= 20, agreement <= 1e-5", max_relative_error)


def cases() -> list[Case]:
    require_lfxai()
    return [_case("small"), _case("large")]
