"""Influence functions: latentsurgeon's ``InfluenceFunctions`` against lfxai's LiSSA.

Label-free influence (reconstruction loss, the encoder's parameters) of 30 training images on 50
test images (4.2k-parameter encoder) and of 10 on 10 (1.06M parameters). lfxai's
``attribute_loader`` runs LiSSA with its defaults (depth 100, damp 1e-3, scale 1e3: in the limit
``(H + 1 I)^-1``) for every training example, drawing Hessian batches of 10 from the same training
images; ours solves ``(H + 1 I)`` with conjugate gradient on Hessian-vector products for every
test point at once (the mean training loss's Hessian, exactly, no sampling).

Agreement (4.2k encoder): Spearman rank correlations with the exact damped influence
``-g_test^T (H + I)^-1 g_train``, its Hessian built independently here with
``torch.autograd.functional.hessian``. lfxai omits Koh & Liang's minus sign, so its scores are
negated first (raw, they correlate negatively). 1.06M encoder (no exact Hessian): Spearman of
ours with lfxai's negated scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from bench.cases._explain_setup import Setup, require_lfxai, setup
from bench.runner import Case
from latentsurgeon.explain import InfluenceFunctions

SIZES = {"small": (30, 50), "large": (10, 10)}
DAMPING = 1.0  # lfxai's damp * scale


def _exact(s: Setup, x_train: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
    """-g_test^T (H + I)^-1 g_train from an explicit Hessian of the mean training loss."""
    model = s.model
    names = [n for n, _ in model.named_parameters() if n.startswith("encoder.")]
    base = {n: p.detach() for n, p in model.named_parameters()}
    flat0 = torch.cat([base[n].reshape(-1) for n in names]).double()

    def loss(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params, offset = dict(base), 0
        for n in names:
            params[n] = flat[offset:offset + base[n].numel()].reshape(base[n].shape).float()
            offset += base[n].numel()
        return F.mse_loss(torch.func.functional_call(model, params, (x,)), x).double()

    hessian = torch.autograd.functional.hessian(lambda v: loss(v, x_train), flat0,
                                                vectorize=True)

    def grads(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.autograd.grad(loss(flat0.requires_grad_(), xi[None]),
                                                flat0)[0] for xi in x])

    system = hessian + DAMPING * torch.eye(len(flat0), dtype=torch.float64)
    return -grads(x_test) @ torch.linalg.solve(system, grads(x_train).T)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy())[0])


def _case(size: str) -> Case:
    from lfxai.explanations.examples import InfluenceFunctions as LfxaiInfluence

    s = setup(size)
    n_train, n_test = SIZES[size]
    x_train, x_test = s.train[:n_train], s.test[:n_test]
    labels = torch.zeros(n_train)
    train_set = TensorDataset(x_train, labels)
    one_by_one = DataLoader(train_set, batch_size=1)
    tests = DataLoader(TensorDataset(x_test, torch.zeros(n_test)), batch_size=1)
    peer_explainer = LfxaiInfluence(s.model, nn.MSELoss(),
                                    s.checkpoint_dir.parent / "lfxai-influence")
    exact = _exact(s, x_train, x_test) if size == "small" else None

    def ours() -> torch.Tensor:
        return InfluenceFunctions("reconstruction", params="encoder", damping=DAMPING,
                                  solver="cg", batch_size=64).scores(s.model, x_train, x_test)

    def peer() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        hessian_batches = DataLoader(train_set, batch_size=10, sampler=RandomSampler(
            train_set, replacement=True, num_samples=1000, generator=generator))
        return peer_explainer.attribute_loader(torch.device("cpu"), one_by_one, tests,
                                               hessian_batches).detach()

    def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        if exact is None:
            return {"spearman_ours_vs_negated_lfxai": _spearman(a, -b)}
        return {"spearman_ours_vs_exact": _spearman(a, exact),
                "spearman_negated_lfxai_vs_exact": _spearman(-b, exact),
                "spearman_raw_lfxai_vs_exact": _spearman(b, exact)}

    name = "explain_influence_vs_lfxai" + ("" if size == "small" else "_1m")
    return Case(name, ours, peer, "lfxai InfluenceFunctions.attribute_loader (LiSSA)",
                f"label-free influence, encoder {s.n_encoder_params:,} parameters, {n_test} "
                f"test x {n_train} train, damping 1 (lfxai's damp x scale)",
                ">= 50, closer to exact (Spearman)", agreement)


def cases() -> list[Case]:
    require_lfxai()
    return [_case("small"), _case("large")]
