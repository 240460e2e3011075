"""The command line: layers, extract, demo, errors."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from latentsurgeon.activations import ActivationStore
from latentsurgeon.cli import main

USER_MODULE = textwrap.dedent(
    """
    import torch

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 2)
        )

    def make_data():
        return torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    not_a_model = 3
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usermod_cli.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_layers_lists_reference_model_with_shapes(capsys):
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    assert "features.3" in out and "Conv2d" in out
    assert "(1, 32, 8, 8)" in out  # output shape of the second conv for a 16x16 input
    assert "classifier.3" in out and "(1, 10)" in out


def test_layers_of_user_model(user_module, capsys):
    assert main(["layers", "--model", "usermod_cli:make_model", "--input-shape", "1,1,8,8"]) == 0
    out = capsys.readouterr().out
    assert "(1, 3, 6, 6)" in out and "(1, 2)" in out


def test_bad_model_spec_is_a_clear_error(user_module, capsys):
    assert main(["layers", "--model", "usermod_cli:not_a_model"]) == 2
    assert "not an nn.Module" in capsys.readouterr().err
    assert main(["layers", "--model", "no_such_module_xyz:f"]) == 2
    assert "Cannot import" in capsys.readouterr().err


def test_extract_user_model_and_data(user_module, capsys):
    out_dir = user_module / "store"
    code = main(["extract", "--model", "usermod_cli:make_model", "--data", "usermod_cli:make_data",
                 "--layers", "0", "3", "--pooling", "max", "--out", str(out_dir), "--quiet"])
    assert code == 0
    store = ActivationStore(out_dir)
    assert store.layers == ["0", "3"]
    assert store.shape("0") == (20, 3) and store.shape("3") == (20, 2)
    import usermod_cli

    model = usermod_cli.make_model()
    with torch.no_grad():
        expected = model(usermod_cli.make_data())
    torch.testing.assert_close(store.tensor("3"), expected)
    assert "20 samples" in capsys.readouterr().out


def test_extract_unknown_layer_lists_close_matches(user_module, capsys):
    code = main(["extract", "--model", "usermod_cli:make_model", "--data", "usermod_cli:make_data",
                 "--layers", "4", "--out", str(user_module / "s"), "--quiet"])
    assert code == 2
    assert "latentsurgeon layers" in capsys.readouterr().err


def test_demo_can_stop_after_reveal(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "4", "--quiet",
                 "--stage", "reveal"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["layer"] for row in results["reveal"]["layers"]] == [
        "features.0", "features.3", "features"]
    assert "methods" not in results and not (tmp_path / "report.html").exists()
    assert "[4/4]" not in capsys.readouterr().out


def test_demo_quick_run_writes_results(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--epochs", "2", "--quiet", "--stage", "store"])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["uncorrected"]) >= {"clean_acc", "poisoned_acc", "gap"}
    assert ActivationStore(tmp_path / "activations").layers == ["features.0", "features.3"]
    assert "poisoned test accuracy" in capsys.readouterr().out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from latentsurgeon.data import decoy_digits
    from latentsurgeon.models import DigitCNN, train_classifier

    torch.manual_seed(0)
    model = DigitCNN()
    train_classifier(model, decoy_digits("watermark", seed=0).train, epochs=4, progress=False)
    path = tmp_path_factory.mktemp("weights") / "cnn.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def test_probe_command_reports_every_layer(weights, tmp_path, capsys):
    plot = tmp_path / "probe.png"
    assert main(["probe", "--weights", weights, "--quiet", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for layer in ("features.0", "features.3", "classifier.1", "classifier.3"):
        assert layer in out
    assert "best layer:" in out and plot.stat().st_size > 1000


def test_tcav_command_separates_the_watermark_from_a_random_concept(weights, capsys):
    def run(concept: str) -> str:
        assert main(["tcav", "--weights", weights, "--quiet", "--runs", "6",
                     "--layers", "features", "--concept", concept]) == 0
        out = capsys.readouterr().out.splitlines()
        line = [ln for ln in out if ln.strip().startswith("features")]
        assert len(line) == 1 and "p = " in line[0]
        return line[0]

    assert run("watermark").endswith(" significant")
    assert run("random").endswith("not significant")


def test_correct_command_saves_a_plain_corrected_module(weights, tmp_path, capsys):
    saved = tmp_path / "fixed.pt"
    assert main(["correct", "--weights", weights, "--quiet", "--method", "p-clarc",
                 "--save", str(saved)]) == 0
    assert "gap closed" in capsys.readouterr().out
    fixed = torch.load(saved, weights_only=False)
    from latentsurgeon.hooks import hook_count

    assert hook_count(fixed) == 0
    assert fixed(torch.rand(2, 1, 16, 16)).shape == (2, 10)
