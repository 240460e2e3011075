"""consistency-features: masking the most important pixels shifts the representation more than
masking random pixels, for every method (quick settings, seeds 0-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentsurgeon.experiments import consistency_features, run_experiment

from .conftest import SEEDS, check_written


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("consistency_features")
    return run_experiment("consistency-features", seeds=SEEDS, quick=True, out=out), out


def test_important_pixels_shift_the_representation_more_than_random_ones(run):
    result, _ = run
    random = result.shift["random"].mean(axis=0)
    for method in ("saliency", "integrated_gradients", "gradient_shap"):
        assert (result.shift[method].mean(axis=0) > random).all(), method
        # by a clear margin, not by noise: at least twice random's shift on average
        assert (result.shift[method] / result.shift["random"]).mean() > 2.0, method
    assert result.holds and len(result.checks) == 3


def test_shift_grows_as_more_random_pixels_are_masked(run):
    result, _ = run
    assert (np.diff(result.shift["random"].mean(axis=0)) > 0).all()


def test_files_and_headline(run):
    result, out = run
    tables = check_written(result, out / "consistency-features")
    fractions = consistency_features.Settings.quick().fractions
    assert len(tables["shift"]) == len(SEEDS) * 4 * len(fractions)
    assert {row["method"] for row in tables["shift"]} == {
        "saliency", "integrated_gradients", "gradient_shap", "random"}
    assert all("+-" in line for line in result.headline)
    assert result.example_attributions["saliency"].shape == (6, 1, 16, 16)


def test_same_seed_same_numbers(run):
    result, _ = run
    # one seed alone gives the numbers it gave among three (same thread count: the runner's 1)
    again = run_experiment("consistency-features", seeds=[SEEDS[1]], quick=True)
    for method, values in again.shift.items():
        np.testing.assert_array_equal(values[0], result.shift[method][1])


def test_leaves_torch_threads_and_rng_as_they_were():
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not the experiments' 1
    try:
        state = torch.get_rng_state()
        settings = consistency_features.Settings(n_train=60, n_test=20, epochs=1,
                                                 fractions=(0.5,), ig_steps=4, shap_samples=2)
        run_experiment("consistency-features", seeds=[0], settings=settings)
        assert torch.get_num_threads() == 3
        assert torch.equal(torch.get_rng_state(), state)
    finally:
        torch.set_num_threads(before)
