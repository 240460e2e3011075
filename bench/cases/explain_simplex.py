"""SimplEx: latentsurgeon's ``SimplEx`` against lfxai's on the same encoder and data.

lfxai runs 1,000 Adam steps (learning rate 1e-3, autograd) per block of 50 test points; ours
solves every test point at once by its active-set solver (Wolfe's minimum-norm-point algorithm,
batched) to a certified tolerance: the
default 1e-3 of each row's objective at uniform weights, and a loose 0.1 (still far below
lfxai's objective: the equal-or-lower-objective comparison). Both compute the encoder's
representations of 300 training and 200 test images themselves. Two encoder sizes (4.2k and
1.06M parameters).

Agreement: ours' summed squared error / lfxai's (<= 1: ours reconstructs at least as well).
"""

from __future__ import annotations

import torch

from bench.cases._explain_setup import require_lfxai, setup
from bench.runner import Case
from latentsurgeon.explain import SimplEx

N_TRAIN, N_TEST = 300, 200


def _case(size: str, tol: float = 1e-3) -> Case:
    from lfxai.explanations.examples import SimplEx as LfxaiSimplEx

    s = setup(size)
    x_train, x_test = s.train[:N_TRAIN], s.test[:N_TEST]
    peer_explainer = LfxaiSimplEx(s.model, X_train=x_train)
    with torch.no_grad():
        h_train, h_test = s.model.encoder(x_train), s.model.encoder(x_test)

    def ours() -> torch.Tensor:
        return SimplEx("encoder", tol=tol).scores(s.model, x_train, x_test)

    def peer() -> torch.Tensor:
        return peer_explainer.attribute(x_test, list(range(N_TRAIN)), batch_size=50).detach()

    def agreement(w_ours: torch.Tensor, w_peer: torch.Tensor) -> float:
        def error(w: torch.Tensor) -> float:
            return float(((w.double() @ h_train.double() - h_test.double()) ** 2).sum())

        return error(w_ours) / error(w_peer)

    name = ("explain_simplex_vs_lfxai" + ("" if size == "small" else "_1m")
            + ("" if tol == 1e-3 else "_loose_tol"))
    return Case(name, ours, peer, "lfxai SimplEx.attribute",
                f"SimplEx weights (tol {tol:g}), digits MLP autoencoder, encoder "
                f"{s.n_encoder_params:,} parameters, {N_TEST} test x {N_TRAIN} train; "
                "agreement = objective ours/lfxai", ">= 10, agreement <= 1", agreement)


def cases() -> list[Case]:
    require_lfxai()
    return [_case("small"), _case("large"), _case("small", tol=0.1)]
