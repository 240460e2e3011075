"""The LSTM autoencoder on the generated beats: layout, shapes, learning, seeding."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.data import beats
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models import RecurrentAutoencoder, train_recurrent_autoencoder
from latentsurgeon.models.recurrent import time_encoding


def _mean_baseline_l1(series: torch.Tensor) -> float:
    """L1 error of predicting every series by its own mean (0 after z-normalisation)."""
    return (series - series.mean(dim=1, keepdim=True)).abs().mean().item()


def test_layout_and_shapes():
    torch.manual_seed(0)
    model = RecurrentAutoencoder(seq_len=30, n_features=2, embedding_dim=5, hidden=7,
                                 time_features=3)
    names = [n for n, _ in model.named_modules()]
    assert names == ["", "encoder", "encoder.rnn1", "encoder.rnn2", "decoder", "decoder.rnn",
                     "decoder.output"]
    assert model.encoder.rnn1.input_size == 2 + 7  # the series and its time encoding
    assert model.decoder.rnn.input_size == 5 + 7
    x = torch.randn(4, 30, 2)
    assert model.encode(x).shape == (4, 5)
    assert model(x).shape == x.shape
    assert model.decode(torch.zeros(3, 5)).shape == (3, 30, 2)
    # the time encoding is rebuilt, not stored
    assert not any("time" in k for k in model.state_dict())
    with pytest.raises(ShapeMismatchError, match="unsqueeze"):
        model(torch.randn(4, 30))
    with pytest.raises(ShapeMismatchError):
        model(torch.randn(4, 31, 2))
    with pytest.raises(ShapeMismatchError):
        model.decode(torch.zeros(3, 4))
    with pytest.raises(InvalidParameterError, match="pooling"):
        RecurrentAutoencoder(pooling="mean")


def test_pooling_choices_read_the_encoder_outputs():
    torch.manual_seed(0)
    model = RecurrentAutoencoder(seq_len=20, embedding_dim=4, hidden=6)
    x = torch.randn(3, 20, 1)
    with torch.no_grad():
        clock = model.encoder.time.unsqueeze(0).expand(3, -1, -1)
        h, _ = model.encoder.rnn1(torch.cat([x, clock], dim=2))
        outputs, (last, _) = model.encoder.rnn2(h)
        torch.testing.assert_close(model.encode(x), outputs.amax(dim=1))
        model.encoder.pooling = "last"
        torch.testing.assert_close(model.encode(x), last[-1])
        torch.testing.assert_close(model.encode(x), outputs[:, -1])


def test_time_encoding():
    enc = time_encoding(5, 2)
    assert enc.shape == (5, 5)
    torch.testing.assert_close(enc[:, 0], torch.linspace(0, 1, 5))
    torch.testing.assert_close(enc[:, 1], torch.sin(2 * torch.pi * torch.linspace(0, 1, 5)))
    torch.testing.assert_close(enc[:, 4], torch.cos(4 * torch.pi * torch.linspace(0, 1, 5)))
    lfxai_style = RecurrentAutoencoder(seq_len=12, embedding_dim=3, hidden=4, time_features=0,
                                       pooling="last")
    assert lfxai_style.encoder.rnn1.input_size == 1 and lfxai_style.decoder.rnn.input_size == 3
    assert lfxai_style(torch.randn(2, 12, 1)).shape == (2, 12, 1)


def test_short_training_beats_the_mean_baseline(tmp_path):
    # A few epochs on 300 beats: the held-out reconstruction beats predicting each series' own
    # mean, and the training loss falls.
    train_x, _ = beats(300, seed=0)
    test_x, _ = beats(200, seed=1)
    torch.manual_seed(0)
    model = RecurrentAutoencoder()
    history = train_recurrent_autoencoder(model, train_x, epochs=5, seed=0, progress=False,
                                          checkpoint_dir=tmp_path)
    assert not model.training
    assert history.loss[-1] < history.loss[0]
    assert len(history.checkpoints) == 5
    with torch.no_grad():
        error = (model(test_x) - test_x).abs().mean().item()
    assert error < 0.85 * _mean_baseline_l1(test_x)


def test_training_is_seeded_and_takes_labels():
    series, labels = beats(48, seed=0, length=40)

    def run(seed, data):
        torch.manual_seed(0)
        model = RecurrentAutoencoder(seq_len=40, embedding_dim=4, hidden=8)
        train_recurrent_autoencoder(model, data, epochs=1, seed=seed, loss="mse",
                                    progress=False)
        return model.state_dict()

    a, b, c = run(0, series), run(0, (series, labels)), run(1, series)
    assert all(torch.equal(a[k], v) for k, v in b.items())
    assert any(not torch.equal(a[k], v) for k, v in c.items())
    with pytest.raises(InvalidParameterError, match="loss"):
        train_recurrent_autoencoder(RecurrentAutoencoder(seq_len=40), series, loss="huber",
                                    progress=False)


@pytest.mark.slow
def test_default_training_separates_the_beat_classes():
    # The default recipe on 500 beats, three seeds: the held-out reconstruction is well below
    # the mean baseline and the codes' nearest training neighbour shares the beat's class.
    test_x, test_y = beats(500, seed=1000)
    errors, agreement = [], []
    for seed in range(3):
        train_x, train_y = beats(500, seed=seed)
        torch.manual_seed(seed)
        model = RecurrentAutoencoder()
        train_recurrent_autoencoder(model, train_x, seed=seed, progress=False)
        with torch.no_grad():
            errors.append((model(test_x) - test_x).abs().mean().item())
            nearest = torch.cdist(model.encode(test_x), model.encode(train_x)).argmin(1)
        agreement.append((train_y[nearest] == test_y).float().mean().item())
    assert sum(errors) / 3 < 0.6 * _mean_baseline_l1(test_x)
    assert sum(agreement) / 3 > 0.9
