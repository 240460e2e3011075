"""TracIn and influence functions on an LSTM autoencoder (regressions found by the explain
experiments): checkpoints of a model with non-persistent buffers load, and influence functions
run through ``nn.LSTM``, whose double backward has no ``vmap`` batching rule. float32: ``vmap``
over a float64 ``nn.LSTM`` fails on the CPU (torch 2.13), so the models stay float32 and the
reference is computed in float64 on a copy."""

from __future__ import annotations

import copy

import torch

from latentsurgeon.explain import InfluenceFunctions, TracIn
from latentsurgeon.models import RecurrentAutoencoder, train_recurrent_autoencoder


def small_lstm_ae() -> RecurrentAutoencoder:
    torch.manual_seed(0)
    return RecurrentAutoencoder(seq_len=12, embedding_dim=3, hidden=4,
                                time_features=2).eval()


def series(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 12, 1, generator=torch.Generator().manual_seed(seed))


def test_tracin_reads_checkpoints_of_a_model_with_non_persistent_buffers(tmp_path):
    model = small_lstm_ae()
    assert "encoder.time" in dict(model.named_buffers())
    assert "encoder.time" not in model.state_dict()  # so the checkpoints lack it
    train_x = series(10, 1)
    train_recurrent_autoencoder(model, train_x, epochs=1, batch_size=5, progress=False,
                                checkpoint_dir=tmp_path)
    test_x = series(3, 2)
    # one epoch: the only checkpoint holds the present weights
    from_files = TracIn(tmp_path, params="decoder.output", lr=1.0).scores(model, train_x, test_x)
    current = TracIn("current", params="decoder.output").scores(model, train_x, test_x)
    torch.testing.assert_close(from_files, current, rtol=1e-6, atol=1e-9)


def _read_out_loss(model: RecurrentAutoencoder, flat: torch.Tensor, x: torch.Tensor
                   ) -> torch.Tensor:
    """Per-sample reconstruction MSE ``(N,)`` with ``decoder.output`` replaced by ``flat``."""
    out = model.decoder.output
    weight = flat[:out.weight.numel()].reshape(out.weight.shape)
    bias = flat[out.weight.numel():]
    params = {"decoder.output.weight": weight, "decoder.output.bias": bias}
    recon = torch.func.functional_call(model, params, (x,))
    return ((recon - x) ** 2).reshape(len(x), -1).mean(dim=1)


def test_influence_runs_through_an_lstm_and_matches_an_explicit_hessian():
    model = small_lstm_ae()
    train_x, test_x = series(8, 3), series(3, 4)
    damping = 0.1
    explainer = InfluenceFunctions("reconstruction", params="decoder.output", damping=damping)
    scores = explainer.scores(model, train_x, test_x)

    out = model.decoder.output
    flat = torch.cat([out.weight.detach().reshape(-1), out.bias.detach()]).double()
    model = copy.deepcopy(model).double()  # the reference in float64
    train_x, test_x = train_x.double(), test_x.double()
    with torch.no_grad():
        hessian = torch.autograd.functional.hessian(
            lambda v: _read_out_loss(model, v, train_x).mean(), flat)

    def gradients(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.autograd.functional.jacobian(
            lambda v, row=row: _read_out_loss(model, v, x[row:row + 1])[0], flat)
            for row in range(len(x))])

    system = hessian + damping * torch.eye(len(flat), dtype=torch.float64)
    expected = -gradients(test_x) @ torch.linalg.solve(system, gradients(train_x).T)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-7)
