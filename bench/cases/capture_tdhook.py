"""In-memory activation capture: latentsurgeon's ``capture`` vs tdhook's ``ActivationCaching``.

Both record the outputs of the two conv layers of the same DigitCNN over the same inputs, install
their hooks once per run and remove them afterwards, and return ``{layer: (N, C, H, W)}``.
tdhook is a bench-only peer (``pip install tdhook``, the ``bench`` extra); its methods take and
return ``TensorDict``\\ s, so each batch is wrapped in one and the cache is read from the output's
``"cache"`` entry. Agreement is the largest absolute difference between the captured tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.runner import Case
from latentsurgeon.activations import capture

LAYERS = ["features.0", "features.3"]
PATTERN = r"features\.(0|3)$"  # tdhook matches at the start of names: anchor the end


def _model() -> torch.nn.Module:
    from latentsurgeon.models import DigitCNN

    torch.manual_seed(0)
    return DigitCNN().eval()


def _runners(model: torch.nn.Module, batches: list[torch.Tensor]) -> tuple[Callable, Callable]:
    try:
        from tdhook.latent import ActivationCaching
        from tensordict import TensorDict
    except ImportError as exc:  # a peer, not a dependency of the library
        raise SystemExit(f"This benchmark needs tdhook: pip install tdhook ({exc}).") from exc

    @torch.no_grad()
    def ours() -> dict[str, torch.Tensor]:
        with capture(model, LAYERS, accumulate=True) as cap:
            for b in batches:
                model(b)
            return cap.activations

    @torch.no_grad()
    def peer() -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in LAYERS}
        with ActivationCaching(PATTERN).prepare(model) as hooked:
            for b in batches:
                out = hooked(TensorDict({"input": b}, batch_size=[len(b)]))
                for name in LAYERS:
                    parts[name].append(out["cache", name])
        return {name: torch.cat(p) for name, p in parts.items()}

    return ours, peer


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if sorted(a) != sorted(b):
        return float("inf")
    return max(float((a[k] - b[k]).abs().max()) if a[k].shape == b[k].shape else float("inf")
               for k in a)


def cases() -> list[Case]:
    model = _model()
    data = torch.rand(4096, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    bulk_ours, bulk_peer = _runners(model, list(data.split(256)))
    small_ours, small_peer = _runners(model, list(data[:512].split(8)))
    return [
        Case("capture_vs_tdhook_caching", bulk_ours, bulk_peer, "tdhook ActivationCaching",
             "DigitCNN, 4096 inputs in batches of 256, features.0 and features.3 captured in "
             "memory", ">= 1", _max_abs_diff),
        Case("capture_vs_tdhook_caching_small_batches", small_ours, small_peer,
             "tdhook ActivationCaching",
             "same, 512 inputs in batches of 8 (per-call overhead dominates)", ">= 1",
             _max_abs_diff),
    ]
