"""A recurrent (LSTM) autoencoder for univariate or multivariate time series.

After lfxai's ``RecurrentAutoencoder(seq_len, n_features, embedding_dim)`` (used there on
ECG5000): two stacked LSTMs encode a series, an LSTM decoder unrolls the code over the series'
length. Two changes make it learn in seconds to a minute on a CPU instead of hours, with a code
that separates the beat classes:

* both LSTMs read a Fourier encoding of the time step beside their input
  (:func:`time_encoding`), so neither has to count steps;
* the code is the maximum over time of the encoder's outputs (``pooling="max"``) instead of its
  last hidden state, so a wave early in the series reaches the code without surviving a hundred
  forget gates.

``time_features=0, pooling="last"`` is lfxai's design; on the bundled beats it stays near the
series' mean shape after a short run (``docs/models.md`` has the figures).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon._validation import Interval, Options, validate_params
from latentsurgeon.errors import ShapeMismatchError
from latentsurgeon.training import OptimizerSpec, TrainingData, TrainingHistory, train

__all__ = ["POOLINGS", "RECONSTRUCTION_LOSSES", "RecurrentAutoencoder", "SeriesDecoder", "SeriesEncoder",
           "time_encoding", "train_recurrent_autoencoder"]

RECONSTRUCTION_LOSSES = ("l1", "mse")


def time_encoding(seq_len: int, frequencies: int) -> torch.Tensor:
    """``(seq_len, 1 + 2 * frequencies)``: the position ``t`` in ``[0, 1]`` and
    ``sin(2 pi k t)``, ``cos(2 pi k t)`` for ``k = 1..frequencies``."""
    t = torch.linspace(0.0, 1.0, seq_len)
    columns = [t]
    for k in range(1, frequencies + 1):
        columns += [torch.sin(2 * math.pi * k * t), torch.cos(2 * math.pi * k * t)]
    return torch.stack(columns, dim=1)


def _clock(seq_len: int, frequencies: int) -> torch.Tensor:
    return time_encoding(seq_len, frequencies) if frequencies else torch.zeros(seq_len, 0)


def _with_clock(x: torch.Tensor, clock: torch.Tensor) -> torch.Tensor:
    """``(N, T, C)`` -> ``(N, T, C + clock columns)``."""
    if not clock.shape[1]:
        return x
    return torch.cat([x, clock.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=2)


POOLINGS = ("max", "last")


class SeriesEncoder(nn.Module):
    """``(N, T, F)`` series -> ``(N, embedding_dim)``: ``rnn1`` (LSTM over the series and its
    :func:`time_encoding` -> hidden), ``rnn2`` (LSTM hidden -> embedding_dim), then the code:
    ``"max"`` the maximum of ``rnn2``'s outputs over time, ``"last"`` its last hidden state
    (lfxai's)."""

    def __init__(self, seq_len: int, n_features: int, hidden: int, embedding_dim: int,
                 time_features: int, pooling: str) -> None:
        super().__init__()
        self.pooling = pooling
        self.register_buffer("time", _clock(seq_len, time_features), persistent=False)
        self.rnn1 = nn.LSTM(n_features + self.time.shape[1], hidden, batch_first=True)
        self.rnn2 = nn.LSTM(hidden, embedding_dim, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn1(_with_clock(x, self.time))
        h, (last, _) = self.rnn2(h)
        return h.amax(dim=1) if self.pooling == "max" else last[-1]


class SeriesDecoder(nn.Module):
    """``(N, embedding_dim)`` -> ``(N, T, F)``: at every step the code, concatenated with the
    step's :func:`time_encoding`, goes through ``rnn`` (LSTM -> hidden) and ``output`` (Linear
    hidden -> F). With ``time_features=0`` the input is the repeated code alone (lfxai's
    decoder input)."""

    def __init__(self, seq_len: int, n_features: int, hidden: int, embedding_dim: int,
                 time_features: int) -> None:
        super().__init__()
        self.seq_len = int(seq_len)
        # a constant of the architecture, rebuilt from seq_len: not part of the state_dict
        self.register_buffer("time", _clock(self.seq_len, time_features), persistent=False)
        self.rnn = nn.LSTM(embedding_dim + self.time.shape[1], hidden, batch_first=True)
        self.output = nn.Linear(hidden, n_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(_with_clock(z.unsqueeze(1).expand(-1, self.seq_len, -1), self.time))
        return self.output(h)


class RecurrentAutoencoder(nn.Module):
    """LSTM autoencoder ``(N, T, F) -> (N, embedding_dim) -> (N, T, F)``.

    Module layout: ``encoder`` (``encoder.rnn1`` LSTM (F + time encoding) -> hidden,
    ``encoder.rnn2`` LSTM hidden -> embedding_dim), ``decoder`` (``decoder.rnn`` LSTM
    (embedding_dim + time encoding) -> hidden, ``decoder.output`` Linear hidden -> F). The code
    is the maximum over time of ``encoder.rnn2``'s outputs (``pooling="max"``) or its last
    hidden state (``"last"``, lfxai's). Call ``torch.manual_seed`` before construction for a
    reproducible initialisation.

    Args:
        seq_len: length ``T`` of the series (both LSTMs run that many steps).
        n_features: channels ``F`` per time step (1 for a univariate series).
        embedding_dim: size of the code (lfxai: 64; 16 is plenty for the bundled beats).
        hidden: width of ``encoder.rnn1`` and ``decoder.rnn`` (lfxai: twice the embedding).
        time_features: frequencies of the time encoding both LSTMs read beside their input
            (0: none, as lfxai).
        pooling: ``"max"`` or ``"last"`` (see above).
    """

    def __init__(self, seq_len: int = 140, n_features: int = 1, embedding_dim: int = 16,
                 hidden: int = 32, time_features: int = 16, pooling: str = "max") -> None:
        super().__init__()
        validate_params(
            {"seq_len": seq_len, "n_features": n_features, "embedding_dim": embedding_dim,
             "hidden": hidden, "time_features": time_features, "pooling": pooling},
            {"seq_len": Interval(int, 2, None), "n_features": Interval(int, 1, None),
             "embedding_dim": Interval(int, 1, None), "hidden": Interval(int, 1, None),
             "time_features": Interval(int, 0, None), "pooling": Options(POOLINGS)},
            owner=type(self).__name__)
        self.seq_len = int(seq_len)
        self.n_features = int(n_features)
        self.latent_dim = self.embedding_dim = int(embedding_dim)
        self.encoder = SeriesEncoder(self.seq_len, self.n_features, int(hidden),
                                     self.embedding_dim, int(time_features), pooling)
        self.decoder = SeriesDecoder(self.seq_len, self.n_features, int(hidden),
                                     self.embedding_dim, int(time_features))

    def _check(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.seq_len, self.n_features):
            raise ShapeMismatchError(
                f"{type(self).__name__} expects series of shape (N, {self.seq_len}, "
                f"{self.n_features}), got {tuple(x.shape)}"
                + ("; add the feature dimension with x.unsqueeze(-1)" if x.dim() == 2 else ""))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, F)`` series -> ``(N, embedding_dim)`` codes."""
        self._check(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, embedding_dim)`` codes -> ``(N, T, F)`` series."""
        if z.dim() != 2 or z.shape[1] != self.embedding_dim:
            raise ShapeMismatchError(
                f"{type(self).__name__}.decode expects codes of shape (N, {self.embedding_dim}),"
                f" got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, T, F)``."""
        return self.decoder(self.encode(x))


def train_recurrent_autoencoder(
    model: nn.Module,
    data: TrainingData,
    *,
    loss: str = "l1",
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: OptimizerSpec = "adam",
) -> TrainingHistory:
    """Train a sequence autoencoder in place to reconstruct its input, through the one loop.

    Same contract as :func:`~latentsurgeon.models.train_autoencoder`: ``data`` are series
    ``(N, T, F)`` or ``(series, labels)`` (labels ignored), a Dataset or a DataLoader.

    Args:
        loss: ``"l1"`` (mean absolute error, lfxai's choice for ECG5000) or ``"mse"``.
        lr: Adam's learning rate.
        batch_size: samples per step (small batches: more steps per epoch, which the LSTMs
            need more than large batches).
        epochs, seed, device, weight_decay, progress, checkpoint_dir, optimizer:
            as :func:`~latentsurgeon.training.train`.

    Returns:
        A :class:`~latentsurgeon.training.TrainingHistory`; the model is left in eval mode.
    """
    validate_params({"loss": loss}, {"loss": Options(RECONSTRUCTION_LOSSES)},
                    owner="train_recurrent_autoencoder")
    distance = F.l1_loss if loss == "l1" else F.mse_loss

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        recon = m(x)
        if recon.shape != x.shape:
            raise ShapeMismatchError(
                f"an autoencoder must return its input's shape {tuple(x.shape)}, got "
                f"{tuple(recon.shape)}")
        return distance(recon, x)

    return train(model, data, loss_fn, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 device=device, weight_decay=weight_decay, progress=progress,
                 checkpoint_dir=checkpoint_dir, optimizer=optimizer,
                 desc="train_recurrent_autoencoder")
