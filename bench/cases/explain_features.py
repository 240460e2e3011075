"""Label-free feature importance: ``label_free_attribution`` against lfxai's
``attribute_auxiliary``, IntegratedGradients (50 steps) with a black baseline, on the same
encoder and 200 test images in batches of 50. Two encoder sizes (4.2k and 1.06M parameters).

Agreement: max |ours - lfxai| (goal <= 1e-5).
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients

from bench.cases._explain_setup import require_lfxai, setup
from bench.runner import Case
from latentsurgeon.explain import label_free_attribution

N_TEST, BATCH = 200, 50


def _case(size: str) -> Case:
    from lfxai.explanations.features import attribute_auxiliary

    s = setup(size)
    x = s.test[:N_TEST]
    baseline = torch.zeros(1, 1, 16, 16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))),
                                         batch_size=BATCH)
    encoder = s.model.encoder

    def ours() -> torch.Tensor:
        return label_free_attribution(encoder, x, IntegratedGradients, baselines=baseline,
                                      batch_size=BATCH, progress=False)

    def peer() -> torch.Tensor:
        return torch.from_numpy(attribute_auxiliary(encoder, loader, torch.device("cpu"),
                                                    IntegratedGradients(encoder), baseline))

    def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    name = "explain_features_vs_lfxai" + ("" if size == "small" else "_1m")
    return Case(name, ours, peer, "lfxai attribute_auxiliary",
                f"label-free IntegratedGradients, encoder {s.n_encoder_params:,} parameters, "
                f"{N_TEST} images in batches of {BATCH}", ">= 1, agreement <= 1e-5", agreement)


def cases() -> list[Case]:
    require_lfxai()
    return [_case("small"), _case("large")]
