"""The bad-input corpus of the command line: every command, given a bad flag, exits with code 2 and
one line on stderr that names the flag (or what to fix), and leaves existing files alone."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch

from latentsurgeon.activations import ActivationStore
from latentsurgeon.cli import main
from latentsurgeon.models import DigitCNN

from ._harness import tree_digest

USER = textwrap.dedent(
    """
    import torch

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))

    def inputs_only():
        return torch.rand(12, 1, 8, 8)

    def unlabelled_splits():
        return {"train": {"images": torch.rand(12, 1, 8, 8)}}

    def splits():
        g = torch.Generator().manual_seed(0)
        split = lambda: {"images": torch.rand(12, 1, 8, 8, generator=g),  # noqa: E731
                         "labels": torch.arange(12) % 3,
                         "masks": torch.zeros(12, 8, 8, dtype=torch.bool)}
        return {"train": split(), "test": split(), "poisoned": split()}

    def crashes():
        raise RuntimeError("the user's function failed")
    """
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-inputs")
    (root / "cliuser.py").write_text(USER)
    torch.manual_seed(0)
    torch.save(DigitCNN().state_dict(), root / "cnn.pt")
    (root / "not-a-checkpoint.pt").write_text("hello")
    torch.save(torch.nn.Linear(2, 2).state_dict(), root / "linear.pt")
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).state_dict(),
               root / "user.pt")
    ActivationStore.extract(DigitCNN(), torch.rand(16, 1, 16, 16), ["features.0"], root / "store",
                            pooling="max", progress=False)
    # a P-ClArC fitted on cnn.pt (fixed.pt + fixed.correction.pt), other weights of the same
    # architecture, and the correction exported onto those other weights
    torch.manual_seed(1)
    other = DigitCNN()
    torch.save(other.state_dict(), root / "other.pt")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["correct", "--weights", "cnn.pt", "--method", "p-clarc", "--save",
                     "fixed.pt", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    from latentsurgeon.correct import PClarc

    correction = PClarc.load(root / "fixed.correction.pt")
    with pytest.warns(UserWarning, match="other weights"):
        moved = correction.export(other, allow_other_weights=True)
    torch.save(moved.state_dict(), root / "other-fixed.pt")
    (root / "lonely.pt").write_bytes((root / "fixed.pt").read_bytes())  # no .correction.pt
    return root


CASES = [
    # (name, argv, what stderr must mention)
    ("unknown command", ["nonsense"], ["invalid choice", "nonsense"]),
    ("demo with a negative seed", ["demo", "--seed", "-1", "--quiet", "--out", "d"],
     ["seed", "-1"]),
    ("layers with a bad shape", ["layers", "--input-shape", "0,1"], ["--input-shape", "0,1"]),
    ("layers of a shape the model cannot take", ["layers", "--input-shape", "1,3,16,16"],
     ["--input-shape", "does not fit"]),
    ("layers of a missing module", ["layers", "--model", "nowhere_xyz:make"],
     ["--model", "nowhere_xyz"]),
    ("layers of a crashing model function", ["layers", "--model", "cliuser:crashes"],
     ["--model", "the user's function failed"]),
    ("layers of a non-model", ["layers", "--model", "cliuser:inputs_only"],
     ["--model", "not an nn.Module"]),
    ("train with negative epochs", ["train", "--epochs", "-1", "--quiet", "--out", "m.pt"],
     ["epochs", "-1"]),
    ("train on data without labels", ["train", "--model", "cliuser:model", "--data",
                                      "cliuser:inputs_only", "--epochs", "1", "--quiet"],
     ["labels"]),
    ("train with an unreadable --data", ["train", "--data", "cliuser", "--quiet"],
     ["--data", "package.module:function"]),
    ("extract with a misspelt layer", ["extract", "--weights", "cnn.pt", "--layers", "featurs",
                                       "--quiet", "--out", "x"], ["featurs", "did you mean"]),
    ("extract with batch size 0", ["extract", "--weights", "cnn.pt", "--batch-size", "0",
                                   "--quiet", "--out", "x"], ["--batch-size", ">= 1", "0"]),
    ("extract over a file", ["extract", "--weights", "cnn.pt", "--quiet", "--out",
                             "cnn.pt"], ["cnn.pt", "existing file"]),
    ("extract over a store with a bad layer", ["extract", "--weights", "cnn.pt", "--layers",
                                               "nope", "--overwrite", "--quiet", "--out",
                                               "store"], ["nope"]),
    ("probe with missing weights", ["probe", "--weights", "missing.pt", "--quiet"],
     ["--weights", "no file"]),
    ("probe with a non-checkpoint", ["probe", "--weights", "not-a-checkpoint.pt", "--quiet"],
     ["--weights", "not a pytorch state_dict"]),
    ("probe with weights of another model", ["probe", "--weights", "linear.pt", "--quiet"],
     ["--weights", "another architecture"]),
    ("probe of unlabelled data", ["probe", "--model", "cliuser:model", "--data",
                                  "cliuser:unlabelled_splits", "--target", "labels", "--quiet"],
     ["labels"]),
    ("tcav of a class with no inputs", ["tcav", "--weights", "cnn.pt", "--target", "42",
                                        "--layers", "features", "--quiet"], ["--target 42"]),
    ("tcav of the watermark on swatch data", ["tcav", "--weights", "cnn.pt", "--data",
                                              "decoy-swatch", "--target", "0", "--quiet"],
     ["--concept", "--data decoy-swatch"]),
    ("tcav of a user model without layers", ["tcav", "--model", "cliuser:model", "--target", "0",
                                             "--quiet"], ["--layers"]),
    ("tcav whose default random pool cannot be cleaned of the concept",
     ["tcav", "--model", "cliuser:model", "--data", "cliuser:splits", "--layers", "1",
      "--target", "0", "--concept", "cliuser:inputs_only", "--quiet"],
     ["--random PKG.MOD:FN", "artifact"]),
    ("explain examples with top 0", ["explain", "examples", "--weights", "cnn.pt", "--top", "0",
                                     "--n", "4", "--quiet", "--out", "e"], ["--top", ">= 1", "0"]),
    ("explain features with an unknown method", ["explain", "features", "--method", "lrp"],
     ["--method", "lrp"]),
    ("correct at a misspelt layer", ["correct", "--weights", "cnn.pt", "--layer", "featurs",
                                     "--quiet"], ["featurs", "did you mean"]),
    ("correct with an unknown method", ["correct", "--method", "fix-it"], ["--method", "fix-it"]),
    ("verify without weights", ["verify", "--corrected", "cnn.pt", "--quiet"], ["--weights"]),
    ("verify of a missing corrected file", ["verify", "--weights", "cnn.pt", "--corrected",
                                            "missing.pt", "--quiet"], ["--corrected", "missing.pt"]),
    ("verify of a P-ClArC export without its correction file",
     ["verify", "--weights", "cnn.pt", "--corrected", "lonely.pt", "--quiet"],
     ["--corrected", "lonely.pt", "P-ClArC export", "--correction FILE"]),
    ("verify given the corrected export as --weights",
     ["verify", "--weights", "fixed.pt", "--corrected", "fixed.pt", "--quiet"],
     ["--weights", "fixed.pt", "P-ClArC export", "verify --corrected"]),
    ("correct given a corrected export as --weights",
     ["correct", "--weights", "fixed.pt", "--quiet"], ["--weights", "fixed.pt", "P-ClArC export"]),
    ("verify of a correction fitted on other weights",
     ["verify", "--weights", "other.pt", "--corrected", "fixed.pt", "--quiet"],
     ["model has other weights", "--allow-other-weights"]),
    ("verify of a corrected file that is not the correction's export",
     ["verify", "--weights", "cnn.pt", "--corrected", "other-fixed.pt", "--correction",
      "fixed.correction.pt", "--quiet"], ["--corrected", "other-fixed.pt", "not the export"]),
    ("verify with an unknown requirement", ["verify", "--weights", "cnn.pt", "--corrected",
                                            "fixed.pt", "--require", "gone"],
     ["--require", "gone"]),
    ("verify with too few resamples", ["verify", "--weights", "cnn.pt", "--corrected",
                                       "fixed.pt", "--n-boot", "3"], ["--n-boot", ">= 10", "3"]),
    ("verify of a negative shortcut class", ["verify", "--weights", "cnn.pt", "--corrected",
                                             "fixed.pt", "--target", "-1"], ["--target", "-1"]),
    ("verify --require without a shortcut class",
     ["verify", "--model", "cliuser:model", "--data", "cliuser:splits", "--weights", "user.pt",
      "--corrected", "user.pt", "--require", "reduced", "--quiet"], ["--require", "--target"]),
    ("cbm of an unknown data set", ["cbm", "--dataset", "circles"], ["--dataset", "circles"]),
    ("bench of an unknown benchmark", ["bench", "no_such_bench"], ["no_such_bench"]),
    ("explain-experiment of an unknown experiment", ["explain-experiment", "ablation",
                                                     "--quiet"], ["name", "ablation"]),
    ("explain-experiment with a non-integer seed", ["explain-experiment", "roar", "--seeds", "0",
                                                    "x", "--quiet"], ["--seeds", "'x'"]),
    ("explain-experiment with a negative seed", ["explain-experiment", "roar", "--seeds", "-1",
                                                 "--quiet"], ["--seeds", "-1"]),
    ("explain-experiment with a repeated seed", ["explain-experiment", "roar", "--seeds", "1",
                                                 "1", "--quiet"], ["--seeds", "distinct", "1 1"]),
    ("probe of --data that returns no data", ["probe", "--weights", "cnn.pt", "--data",
                                              "os:getcwd", "--quiet"],
     ["--data", "os:getcwd returned str", "expected an object or dict"]),
    ("explain features against a NaN baseline", ["explain", "features", "--baseline", "nan",
                                                  "--quiet"], ["--baseline", "finite", "nan"]),
    ("tcav results into a folder", ["tcav", "--json", "store", "--quiet"],
     ["--json", "store", "is a folder"]),
    ("verify results into a missing folder", ["verify", "--weights", "cnn.pt", "--corrected",
                                              "fixed.pt", "--json", "gone/v.json", "--quiet"],
     ["--json", "gone/v.json", "does not exist"]),
    ("train at a NaN learning rate", ["train", "--lr", "nan", "--quiet"],
     ["--lr", "finite", "nan"]),
    ("explain examples at an infinite damping", ["explain", "examples", "--damping", "inf",
                                                 "--quiet"], ["--damping", "finite", "inf"]),
    ("cbm with an unknown task head", ["cbm", "--task-head", "deep", "--quick", "--quiet"],
     ["--task-head", "invalid choice", "'deep'"]),
    ("cbm with a NaN noise", ["cbm", "--noise", "nan", "--quick", "--quiet"],
     ["--noise", "finite"]),
    # counts and sizes are checked at parse time, naming the flag, the bound and the value
    ("explain features of a negative count", ["explain", "features", "--n", "-5", "--quiet"],
     ["--n", ">= 1", "-5"]),
    ("train with a zero batch size", ["train", "--batch-size", "0", "--quiet"],
     ["--batch-size", ">= 1", "got 0"]),
    ("train for zero epochs", ["train", "--epochs", "0", "--quiet"], ["--epochs", ">= 1"]),
    ("tcav with a non-integer number of runs", ["tcav", "--runs", "many", "--quiet"],
     ["--runs", "'many'"]),
    ("cbm with a negative seed", ["cbm", "--seeds", "0", "-2", "--quick", "--quiet"],
     ["--seeds", ">= 0", "-2"]),
    ("bench with zero repeats", ["bench", "--repeats", "0"], ["--repeats", ">= 1"]),
    # every output path is checked before any work, and the error names the flag
    ("extract into a file", ["extract", "--out", "cnn.pt", "--quiet"],
     ["--out", "cnn.pt", "existing file", "expected a folder"]),
    ("demo into a path under a file", ["demo", "--out", "cnn.pt/report", "--quiet"],
     ["--out", "lies under cnn.pt", "which is a file"]),
    ("explain features into a file", ["explain", "features", "--out", "cnn.pt", "--quiet"],
     ["--out", "cnn.pt", "expected a folder"]),
    ("explain examples into a file", ["explain", "examples", "--out", "linear.pt", "--quiet"],
     ["--out", "linear.pt", "expected a folder"]),
    ("cbm into a file", ["cbm", "--out", "cnn.pt", "--quick", "--quiet"],
     ["--out", "cnn.pt", "expected a folder"]),
    ("probe plot into a folder", ["probe", "--plot", "store", "--quiet"],
     ["--plot", "store", "is a folder", "expected a file name"]),
    ("probe plot into a missing folder", ["probe", "--plot", "nowhere/p.png", "--quiet"],
     ["--plot", "nowhere/p.png", "does not exist"]),
    ("train into a folder", ["train", "--out", "store", "--quiet"],
     ["--out", "store", "is a folder"]),
    ("train into a path under a file", ["train", "--out", "cnn.pt/model.pt", "--quiet"],
     ["--out", "cnn.pt is a file, not a folder"]),
    ("correct saved into a missing folder", ["correct", "--weights", "cnn.pt", "--method",
                                             "p-clarc", "--save", "gone/fixed.pt", "--quiet"],
     ["--save", "gone/fixed.pt", "does not exist"]),
    ("explain-experiment into a file", ["explain-experiment", "roar", "--quick", "--seeds", "0",
                                        "--out", "cnn.pt", "--quiet"], ["--out", "cnn.pt",
                                                                         "existing file"]),
]


@pytest.mark.parametrize("name,argv,mentions", CASES, ids=[c[0] for c in CASES])
def test_bad_flags_are_one_line_with_exit_code_2(workdir, monkeypatch, capsys, name, argv,
                                                 mentions):
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    sys.modules.pop("cliuser", None)
    before = tree_digest(workdir)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for text in mentions:
        assert text.lower() in err.lower(), f"{text!r} not in {err!r}"
    after = tree_digest(workdir)
    changed = {k for k in before if before[k] != after.get(k)}
    assert not changed, f"{name} changed {changed}"
    ActivationStore(workdir / "store")


def test_every_command_has_a_bad_input_case():
    from latentsurgeon.cli import COMMANDS

    covered = {argv[0] for _, argv, _ in CASES}
    commands = {module.__name__.rsplit(".", 1)[1].replace("_", "-") for module in COMMANDS}
    assert not commands - covered, commands - covered


def test_verify_compares_other_weights_only_when_asked(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["verify", "--weights", "cnn.pt", "--corrected", "fixed.pt", "--quiet"]) == 0
    before = tree_digest(workdir)
    with pytest.warns(UserWarning, match="other weights"):
        code = main(["verify", "--weights", "other.pt", "--corrected", "fixed.pt",
                     "--allow-other-weights", "--quiet"])
    assert code == 0
    assert "gap closed" in capsys.readouterr().out
    assert tree_digest(workdir) == before
