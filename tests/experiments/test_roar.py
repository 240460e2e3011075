"""roar: removing the pixels a label-free importance ranks highest and retraining hurts more
than removing random pixels (quick settings, seeds 0-2)."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.experiments import roar, run_experiment
from latentsurgeon.experiments._data import digit_split
from latentsurgeon.models import PerturbedAutoencoder

from .conftest import SEEDS, check_written


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("roar")
    return run_experiment("roar", seeds=SEEDS, quick=True, out=out), out


def test_important_first_removal_hurts_more_than_random(run):
    result, _ = run
    important = result.test_mse["important"].mean(axis=0)
    random = result.test_mse["random"].mean(axis=0)
    assert (important > random).all()
    assert result.holds


def test_removal_hurts_and_probes_beat_chance(run):
    result, _ = run
    # the quick autoencoders learn: well below the error of reconstructing every digit as black
    settings = roar.Settings.quick()
    black = [float((digit_split(s, n_train=settings.n_train, n_test=settings.n_test).test_x ** 2)
                   .mean()) for s in SEEDS]
    assert result.baseline_mse.mean() < 0.5 * sum(black) / len(black)
    # removing the important pixels costs reconstruction quality against unmasked training
    assert (result.test_mse["important"].mean(axis=0) > result.baseline_mse.mean()).all()
    # the codes of the unmasked autoencoder classify the digits far above chance (0.1)
    assert result.baseline_probe.mean() > 0.4
    for table in result.probe.values():
        assert ((table > 0) & (table <= 1)).all()


def test_files(run):
    result, out = run
    tables = check_written(result, out / "roar")
    fractions = roar.Settings.quick().fractions
    assert len(tables["roar"]) == len(SEEDS) * (1 + 2 * len(fractions))


def test_reconstruction_error_and_probe_helpers():
    data = digit_split(0, n_train=50, n_test=30)
    model = PerturbedAutoencoder(latent_dim=4)
    with torch.no_grad():
        expected = float(((model(data.test_x) - data.test_x) ** 2).mean())
    assert roar.reconstruction_error(model, data.test_x) == pytest.approx(expected)
    assert 0.0 <= roar.linear_probe_accuracy(model, data) <= 1.0


def test_the_probe_is_the_librarys_default_classification_probe():
    """ROAR reads its codes with the probe ``probe_layers`` uses by default (one definition):
    the same fit on the same codes gives the same accuracy, to the bit."""
    from latentsurgeon.concepts.probe import default_probe
    from latentsurgeon.explain import representations

    data = digit_split(1, n_train=80, n_test=40)
    torch.manual_seed(0)
    model = PerturbedAutoencoder(latent_dim=4)
    train = representations(model, "encoder", data.train_x).numpy()
    test = representations(model, "encoder", data.test_x).numpy()
    probe = default_probe("classification").fit(train, data.train_y.numpy())
    assert roar.linear_probe_accuracy(model, data) == float(probe.score(test,
                                                                         data.test_y.numpy()))


def test_unknown_method_is_refused():
    with pytest.raises(InvalidParameterError, match="method"):
        roar.run([0], settings=roar.Settings(method="deeplift"))


@pytest.mark.parametrize("fractions", [(), (0.2, 0.2), (0.0,), (1.5,)])
def test_fractions_that_measure_nothing_are_refused(fractions):
    # empty fractions made every check hold vacuously (all of nothing) after training nothing
    with pytest.raises(InvalidParameterError, match="fractions"):
        roar.Settings(fractions=fractions)


def test_fractions_are_kept_as_a_tuple():
    assert roar.Settings(fractions=[0.2, 0.5]).fractions == (0.2, 0.5)
