"""``latentsurgeon verify --require``: the certificate as a CI gate, exit codes read from the
shell (0: the verdict meets the requirement, 3: it falls short, 2: bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch


def _run(cwd, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "latentsurgeon", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def audit(tmp_path_factory, base_state):
    root = tmp_path_factory.mktemp("gate")
    torch.save(base_state, root / "model.pt")
    done = _run(root, "correct", "--weights", "model.pt", "--method", "p-clarc", "--quiet",
                "--save", "fixed.pt")
    assert done.returncode == 0, done.stderr
    return root


def test_a_corrected_model_passes_the_gate(audit):
    done = _run(audit, "verify", "--weights", "model.pt", "--corrected", "fixed.pt", "--quiet",
                "--require", "reduced", "--n-boot", "200", "--json", "verify.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict:" in done.stdout
    certificate = json.loads((audit / "verify.json").read_text())["certificate"]
    assert certificate["verdict"] in ("removed", "reduced")
    # the exported P-ClArC wraps its layer: features = (the block, the projection)
    assert {c["layer"] for c in certificate["concept"]} == {"features.0.3", "features",
                                                            "classifier.1"}
    assert {c["layer"] for c in certificate["concept_reference"]} == {"features", "classifier.1"}


def test_the_uncorrected_model_fails_the_gate_with_exit_code_3(audit):
    done = _run(audit, "verify", "--weights", "model.pt", "--corrected", "model.pt", "--quiet",
                "--require", "reduced", "--n-boot", "200", "--no-concept")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "falls short of --require reduced" in done.stderr
    assert "verdict: not removed" in done.stdout


def test_a_bad_requirement_is_a_usage_error(audit):
    done = _run(audit, "verify", "--weights", "model.pt", "--corrected", "fixed.pt",
                "--require", "gone")
    assert done.returncode == 2
    assert "--require" in done.stderr and "gone" in done.stderr
