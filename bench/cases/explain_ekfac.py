"""EK-FAC influence against our conjugate-gradient solver and against lfxai's LiSSA.

The same label-free task as ``explain_influence`` (reconstruction loss, the encoder's
parameters, the same autoencoders, data and checkpoints, damping 1 = lfxai's damp x scale) at two
sizes: the 4.2k-parameter encoder (50 test x 30 train) and the 1.06M-parameter one (10 x 10).
EK-FAC runs with ``relative_damping=None, damping=1.0``, so all three approximate the same damped
system; its factors come from the 30 (10) training images, like CG's Hessian products. Each call
is a whole ``scores`` (factors, training and test gradients, the products), as for the peers.

Agreement: Spearman with the exact damped influence (4.2k encoder, explicit Hessian, as
``explain_influence``), else with our CG solution (CG solves the system to ``cg_tol``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from bench.cases._explain_setup import require_lfxai, setup
from bench.cases.explain_influence import DAMPING, SIZES, _exact, _spearman
from bench.runner import Case
from latentsurgeon.explain import InfluenceFunctions


def _ekfac(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
    return InfluenceFunctions("reconstruction", params="encoder", damping=DAMPING,
                              relative_damping=None, solver="ekfac", batch_size=64,
                              progress=False).scores(model, x_train, x_test)


def _cg(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
    return InfluenceFunctions("reconstruction", params="encoder", damping=DAMPING, solver="cg",
                              batch_size=64, progress=False).scores(model, x_train, x_test)


def _cases(size: str) -> list[Case]:
    from lfxai.explanations.examples import InfluenceFunctions as LfxaiInfluence

    s = setup(size)
    n_train, n_test = SIZES[size]
    x_train, x_test = s.train[:n_train], s.test[:n_test]
    train_set = TensorDataset(x_train, torch.zeros(n_train))
    one_by_one = DataLoader(train_set, batch_size=1)
    tests = DataLoader(TensorDataset(x_test, torch.zeros(n_test)), batch_size=1)
    peer_explainer = LfxaiInfluence(s.model, nn.MSELoss(),
                                    s.checkpoint_dir.parent / "lfxai-influence-ekfac")
    reference = (_exact(s, x_train, x_test) if size == "small"
                 else _cg(s.model, x_train, x_test))
    against = "exact" if size == "small" else "cg"

    def ours() -> torch.Tensor:
        return _ekfac(s.model, x_train, x_test)

    def lissa() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        hessian_batches = DataLoader(train_set, batch_size=10, sampler=RandomSampler(
            train_set, replacement=True, num_samples=1000, generator=generator))
        return peer_explainer.attribute_loader(torch.device("cpu"), one_by_one, tests,
                                               hessian_batches).detach()

    def vs_cg(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        return {f"spearman_ekfac_vs_{against}": _spearman(a, reference),
                f"spearman_cg_vs_{against}": _spearman(b, reference)}

    def vs_lfxai(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        return {f"spearman_ekfac_vs_{against}": _spearman(a, reference),
                f"spearman_negated_lfxai_vs_{against}": _spearman(-b, reference)}

    suffix = "" if size == "small" else "_1m"
    what = (f"label-free influence, encoder {s.n_encoder_params:,} parameters, {n_test} test x "
            f"{n_train} train, damping 1")
    return [
        Case(f"explain_ekfac_vs_cg{suffix}", ours,
             lambda: _cg(s.model, x_train, x_test), "latentsurgeon InfluenceFunctions(solver='cg')",
             what, "faster than CG, Spearman >= 0.9 to exact", vs_cg),
        Case(f"explain_ekfac_vs_lfxai{suffix}", ours, lissa,
             "lfxai InfluenceFunctions.attribute_loader (LiSSA)", what,
             ">= 50, closer to exact (Spearman)", vs_lfxai),
    ]


def cases() -> list[Case]:
    require_lfxai()
    return _cases("small") + _cases("large")
