"""The command line: every command on the reference model, errors as one line, --version, bench."""

from __future__ import annotations

import json
import sys
import textwrap
import types

import pytest
import torch

from latentsurgeon import __version__
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

    def broken():
        raise RuntimeError("the user's code failed")

    not_a_model = 3
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usermod_cli.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usermod_cli", None)
    return tmp_path


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"latentsurgeon {__version__}"


def test_every_flag_has_help_text():
    from latentsurgeon.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest in ("help",) or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help text"


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


def test_layers_with_a_wrong_input_shape_is_one_line(user_module, capsys):
    assert main(["layers", "--model", "usermod_cli:make_model", "--input-shape", "1,3,8,8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --input-shape 1,3,8,8 does not fit the model")
    assert len(err.strip().splitlines()) == 1


def test_bad_model_spec_is_a_clear_error(user_module, capsys):
    assert main(["layers", "--model", "usermod_cli:not_a_model"]) == 2
    assert "not an nn.Module" in capsys.readouterr().err
    assert main(["layers", "--model", "no_such_module_xyz:f"]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert main(["layers", "--model", "usermod_cli"]) == 2
    assert "package.module:function" in capsys.readouterr().err


def test_any_exception_is_one_line_and_debug_shows_the_traceback(user_module, capsys):
    assert main(["layers", "--model", "usermod_cli:broken"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "RuntimeError: the user's code failed" in err and "--debug" in err
    with pytest.raises(Exception, match="the user's code failed"):
        main(["--debug", "layers", "--model", "usermod_cli:broken"])


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


@pytest.mark.parametrize("content,message", [
    (None, "no file"),
    (b"not a checkpoint", "is not a PyTorch state_dict file"),
    ("other-architecture", "another architecture"),
    ("not-a-dict", "does not hold a state_dict"),
])
def test_bad_weights_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "w.pt"
    if content == "other-architecture":
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    elif content == "not-a-dict":
        torch.save([torch.zeros(2)], path)
    elif content is not None:
        path.write_bytes(content)
    assert main(["probe", "--weights", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "--weights" in err and len(err.strip().splitlines()) == 1


def test_probe_command_reports_every_layer(weights, tmp_path, capsys):
    plot = tmp_path / "probe.png"
    assert main(["probe", "--weights", weights, "--quiet", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for layer in ("features.0", "features.3", "classifier.1", "classifier.3"):
        assert layer in out
    assert "best layer:" in out and plot.stat().st_size > 1000


def test_extract_and_probe_pool_the_same_way_by_default():
    from latentsurgeon.cli import build_parser

    parser = build_parser()
    defaults = {name: parser.parse_args([name]).pooling for name in ("extract", "probe")}
    assert defaults == {"extract": "max", "probe": "max"}


def test_tcav_command_separates_the_watermark_from_a_random_concept(weights, tmp_path, capsys):
    def run(concept: str) -> str:
        out_json = tmp_path / f"{concept}.json"
        assert main(["tcav", "--weights", weights, "--quiet", "--runs", "6",
                     "--layers", "features", "--concept", concept, "--json", str(out_json)]) == 0
        out = capsys.readouterr().out.splitlines()
        line = [ln for ln in out if ln.strip().startswith("features")]
        assert len(line) == 1 and "p = " in line[0]
        assert json.loads(out_json.read_text())["layers"][0]["layer"] == "features"
        return line[0]

    assert run("watermark").endswith(" significant")
    assert run("random").endswith("not significant")


def test_tcav_with_a_class_that_has_no_inputs_says_so(weights, capsys):
    assert main(["tcav", "--weights", weights, "--quiet", "--target", "42",
                 "--layers", "features"]) == 2
    err = capsys.readouterr().err
    assert "--target 42" in err and "classes are [0, 1, 2" in err


def test_correct_saves_a_state_dict_and_the_correction_and_verify_reads_them(weights, tmp_path,
                                                                              capsys):
    saved = tmp_path / "fixed.pt"
    assert main(["correct", "--weights", weights, "--quiet", "--method", "p-clarc",
                 "--save", str(saved)]) == 0
    assert "gap closed" in capsys.readouterr().out
    state = torch.load(saved, weights_only=True)  # plain torch.load works: a state_dict
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert (tmp_path / "fixed.correction.pt").exists()
    out_json = tmp_path / "verify.json"
    assert main(["verify", "--weights", weights, "--corrected", str(saved), "--quiet",
                 "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    assert rows["after"]["poisoned_acc"] > rows["before"]["poisoned_acc"]
    assert rows["before"]["gap_closed"] == pytest.approx(0.0)


def test_demo_can_stop_after_reveal_and_still_writes_a_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "4", "--quiet",
                 "--stage", "reveal"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["layer"] for row in results["reveal"]["layers"]] == [
        "features.0", "features.3", "features"]
    assert "methods" not in results
    text = (tmp_path / "report.html").read_text()
    assert "Reveal" in text and 'id="run-info"' in text and "Correct and verify" not in text
    assert results["meta"]["seed"] == 0 and set(results["meta"]["timings"]) == {
        "train", "store", "reveal"}
    # the demo's weights feed the other commands
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert "features.0.weight" in state
    assert "[4/5]" not in capsys.readouterr().out


def test_demo_quick_run_writes_results(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--epochs", "2", "--quiet", "--stage", "store"])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["uncorrected"]) >= {"clean_acc", "poisoned_acc", "gap"}
    assert ActivationStore(tmp_path / "activations").layers == ["features.0", "features.3"]
    assert "poisoned test accuracy" in capsys.readouterr().out


def test_train_command_writes_weights_the_others_load(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["layers", "--weights", str(out)]) == 0


def test_bench_lists_and_writes_tracked_files_only_when_asked(tmp_path, monkeypatch, capsys):
    import bench.runner as runner
    from bench.runner import Case

    module = types.ModuleType("bench.cases.fake_case")
    module.__doc__ = "A fake benchmark for the CLI test."
    module.cases = lambda: [Case("fake", lambda: 1, lambda: 2, "nothing", agreement=None)]
    monkeypatch.setitem(sys.modules, "bench.cases.fake_case", module)
    monkeypatch.setattr(runner, "available", lambda: ["fake_case"])
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runner, "TABLE", tmp_path / "benchmarks.md")
    assert main(["bench", "--list"]) == 0
    assert "fake_case" in capsys.readouterr().out
    assert main(["bench", "fake_case", "--repeats", "2"]) == 0
    assert not (tmp_path / "results").exists() and not (tmp_path / "benchmarks.md").exists()
    assert main(["bench", "fake_case", "--repeats", "2", "--write"]) == 0
    assert (tmp_path / "results" / "fake.json").exists() and (tmp_path / "benchmarks.md").exists()


def test_explain_examples_writes_scores_a_grid_and_a_page(weights, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "examples"
    assert main(["explain", "examples", "--weights", weights, "--split", "poisoned", "--n", "12",
                 "--top", "5", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    scores = np.load(out / "scores.npy")
    top = np.load(out / "top.npy")
    assert scores.shape == (12, 1300) and top.shape == (12, 5)
    assert (np.argsort(-scores, axis=1, kind="stable")[:, :5] == top).all()
    assert (out / "top_examples.png").stat().st_size > 1000 and (out / "report.html").exists()
    assert "base rate 8.9%" in printed


def test_explain_features_writes_attributions_shaped_like_the_inputs(weights, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "features"
    assert main(["explain", "features", "--weights", weights, "--split", "poisoned", "--n", "6",
                 "--method", "saliency", "--quiet", "--out", str(out)]) == 0
    assert np.load(out / "attributions.npy").shape == (6, 1, 16, 16)
    assert "inside the artifact masks" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["gradient-shap", "integrated-gradients", "deeplift",
                                    "input-x-gradient"])
def test_every_feature_method_runs_from_the_command_line(weights, tmp_path, method):
    import numpy as np

    from latentsurgeon.explain import FEATURE_METHODS, label_free_attribution

    out = tmp_path / method
    assert main(["explain", "features", "--weights", weights, "--n", "3", "--method", method,
                 "--quiet", "--out", str(out)]) == 0
    written = np.load(out / "attributions.npy")
    assert written.shape == (3, 1, 16, 16) and np.isfinite(written).all()
    if method == "integrated-gradients":  # --baseline 0 is captum's own default baseline
        from latentsurgeon.cli._common import load_data
        from latentsurgeon.models import DigitCNN

        model = DigitCNN()
        model.load_state_dict(torch.load(weights, weights_only=True))
        images = load_data("decoy-watermark").test.images[:3]
        direct = label_free_attribution(model.eval(), images,
                                        FEATURE_METHODS["integrated_gradients"].attribution,
                                        layer="classifier.1", seed=0, progress=False)
        np.testing.assert_allclose(written, direct.numpy(), rtol=1e-4, atol=1e-6)


def test_explain_with_a_user_model_needs_a_layer(user_module, capsys):
    assert main(["explain", "examples", "--model", "usermod_cli:make_model", "--data",
                 "usermod_cli:make_data", "--quiet"]) == 2
    assert "--layer is needed" in capsys.readouterr().err
