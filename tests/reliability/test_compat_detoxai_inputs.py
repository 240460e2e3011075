"""The bad-input corpus of ``latentsurgeon.compat.detoxai``: every case raises our exception with
a message naming the argument, what was expected and what was given, and leaves the model exactly
as it was (``_harness.check``): no hook left behind, no weight, mode or flag changed."""

from __future__ import annotations

import tempfile
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.compat.detoxai import (
    ACLARC,
    CLARC,
    PCLARC,
    RRCLARC,
    add_clarc_hook,
    add_mass_mean_probe_hook,
    clarc_hook,
    mass_mean_probe_hook,
    require_activations_and_cav,
    stabilize,
)
from latentsurgeon.errors import (
    InvalidParameterError,
    LayerNotFoundError,
    NonFiniteError,
    NotFittedError,
)

from ._harness import Case, check

N, D = 24, 3 * 4 * 4
torch.manual_seed(0)
X = torch.rand(N, 1, 4, 4)
Y = torch.arange(N) % 2
A = (torch.arange(N) % 3 == 0).long()
LOADER = DataLoader(TensorDataset(X, Y, A), batch_size=8)
NO_FLAGS = DataLoader(TensorDataset(X, Y), batch_size=8)
CACHE = tempfile.mkdtemp(prefix="compat_detoxai_")


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 3, 3, padding=1), relu=nn.ReLU(),
                                     flat=nn.Flatten(), fc=nn.Linear(D, 2)))


MODEL = _model()


def _fitted(cls: type, **kwargs) -> CLARC:
    corrector = cls(MODEL, "reliability", "cpu", **kwargs)
    corrector.extract_activations(LOADER, ["relu"], save_dir=CACHE)
    corrector.compute_cavs("mmp", ["relu"])
    return corrector


def _cases() -> list[Case]:
    mm = [MODEL]
    fresh = PCLARC(MODEL, "reliability", "cpu")
    pclarc, aclarc, rrclarc = _fitted(PCLARC), _fitted(ACLARC), _fitted(RRCLARC)
    nan = torch.full((D,), float("nan"))
    return [
        # -- the hooks module
        Case("stabilize: not a tensor", lambda: stabilize([1.0]), InvalidParameterError,
             ["x", "torch.Tensor", "list"]),
        Case("mass_mean_probe_hook: probe a list", lambda: mass_mean_probe_hook([1.0], 1.0),
             InvalidParameterError, ["probe", "torch.Tensor", "list"]),
        Case("mass_mean_probe_hook: alpha a string",
             lambda: mass_mean_probe_hook(torch.ones(D), "1"), InvalidParameterError,
             ["alpha", "real number", "'1'"]),
        Case("mass_mean_probe_hook: NaN probe", lambda: mass_mean_probe_hook(nan, 1.0),
             NonFiniteError, ["probe"]),
        Case("clarc_hook: zero cav", lambda: clarc_hook(torch.zeros(D), torch.zeros(D), 1.0),
             InvalidParameterError, ["cav", "non-zero", "norm 0"]),
        Case("clarc_hook: mean_length a float list",
             lambda: clarc_hook(torch.ones(D), [0.0], 1.0), InvalidParameterError,
             ["mean_length", "torch.Tensor", "list"]),
        Case("clarc_hook: unknown gradient",
             lambda: clarc_hook(torch.ones(D), torch.zeros(D), 1.0, gradient="none"),
             InvalidParameterError, ["gradient", "'exact'", "'none'"]),
        Case("add_clarc_hook: unknown layer",
             lambda: add_clarc_hook(MODEL, torch.ones(D), torch.zeros(D), "rellu"),
             LayerNotFoundError, ["rellu", "relu"], mm),
        Case("add_clarc_hook: NaN cav",
             lambda: add_clarc_hook(MODEL, nan, torch.zeros(D), "relu"), NonFiniteError,
             ["cav"], mm),
        Case("add_mass_mean_probe_hook: unknown layer",
             lambda: add_mass_mean_probe_hook(MODEL, torch.ones(D), ["rellu"]),
             LayerNotFoundError, ["rellu"], mm),
        # -- construction
        Case("PCLARC: a model that is not a module",
             lambda: PCLARC("model.pt", "e", "cpu"), InvalidParameterError,
             ["model", "nn.Module", "str"]),
        Case("ACLARC: an empty experiment name", lambda: ACLARC(MODEL, "", "cpu"),
             InvalidParameterError, ["experiment_name", "non-empty string", "''"], mm),
        Case("RRCLARC: a device that is no device", lambda: RRCLARC(MODEL, "e", "gpu0"),
             InvalidParameterError, ["device", "'cpu'", "'gpu0'"], mm),
        Case("RRCLARC: rr_config not a dict", lambda: RRCLARC(MODEL, "e", "cpu", rr_config=[1]),
             InvalidParameterError, ["rr_config", "dict", "list"], mm),
        Case("RRCLARC: an unknown rr_config key",
             lambda: RRCLARC(MODEL, "e", "cpu", rr_config={"lambda": 1.0}),
             InvalidParameterError, ["rr_config", "lambda_rr", "'lambda'"], mm),
        Case("RRCLARC: an unknown masking pattern",
             lambda: RRCLARC(MODEL, "e", "cpu", rr_config={"masking_pattern": "top"}),
             InvalidParameterError, ["masking_pattern", "'max_logit'", "'top'"], mm),
        Case("RRCLARC: a negative lambda_rr",
             lambda: RRCLARC(MODEL, "e", "cpu", rr_config={"lambda_rr": -1.0}),
             InvalidParameterError, ["lambda_rr", "-1.0"], mm),
        Case("RRCLARC: TARGET_LOGIT without target_class",
             lambda: RRCLARC(MODEL, "e", "cpu", rr_config={"masking_pattern": "target_logit"}),
             InvalidParameterError, ["target_class", "none"], mm),
        # -- extract_activations / compute_cavs
        Case("extract_activations: batches without artifact labels",
             lambda: fresh.extract_activations(NO_FLAGS, ["relu"], save_dir=CACHE),
             InvalidParameterError, ["dataloader", "artifact_labels", "no third tensor"], mm),
        Case("extract_activations: an unknown layer",
             lambda: fresh.extract_activations(LOADER, ["rellu"], save_dir=CACHE),
             LayerNotFoundError, ["rellu"], mm),
        Case("extract_activations: layers not a list",
             lambda: fresh.extract_activations(LOADER, 3, save_dir=CACHE),
             InvalidParameterError, ["layers", "list of layer names", "3"], mm),
        Case("extract_activations: use_cache a string",
             lambda: fresh.extract_activations(LOADER, ["relu"], use_cache="yes"),
             InvalidParameterError, ["use_cache", "True or False", "'yes'"], mm),
        Case("extract_activations: save_dir a number",
             lambda: fresh.extract_activations(LOADER, ["relu"], save_dir=3),
             InvalidParameterError, ["save_dir", "directory path", "3"], mm),
        Case("compute_cavs: before extract_activations",
             lambda: fresh.compute_cavs("svm", ["relu"]), NotFittedError,
             ["no activations", "extract_activations"], mm),
        Case("compute_cavs: an unknown cav_type", lambda: fresh.compute_cavs("pca", ["relu"]),
             InvalidParameterError, ["cav_type", "'svm'", "'pca'"], mm),
        # -- apply_model_correction
        Case("PCLARC.apply_model_correction: before compute_cavs",
             lambda: fresh.apply_model_correction(["relu"]), NotFittedError,
             ["compute_cavs"], mm),
        Case("PCLARC.apply_model_correction: a layer without CAV",
             lambda: pclarc.apply_model_correction(["fc"]), InvalidParameterError,
             ["cav_layers", "['fc']", "['relu']"], mm),
        Case("PCLARC.apply_model_correction: a negative alpha",
             lambda: pclarc.apply_model_correction(["relu"], alpha=-1.0),
             InvalidParameterError, ["alpha", "-1.0"], mm),
        Case("ACLARC.apply_model_correction: negative epochs",
             lambda: aclarc.apply_model_correction(["relu"], LOADER, fine_tune_epochs=-1),
             InvalidParameterError, ["epochs", "-1"], mm),
        Case("ACLARC.apply_model_correction: cav_layers empty",
             lambda: aclarc.apply_model_correction([], LOADER), InvalidParameterError,
             ["cav_layers", "non-empty list", "[]"], mm),
        Case("RRCLARC.apply_model_correction: two layers",
             lambda: rrclarc.apply_model_correction(["relu", "relu"], LOADER),
             InvalidParameterError, ["one layer", "cav_layers", "2"], mm),
        Case("RRCLARC.apply_model_correction: a zero learning rate",
             lambda: rrclarc.apply_model_correction(["relu"], LOADER, ft_lr=0.0),
             InvalidParameterError, ["lr", "0.0"], mm),
        Case("RRCLARC.apply_model_correction: labels beyond the logits",
             lambda: rrclarc.apply_model_correction(
                 ["relu"], DataLoader(TensorDataset(X, Y + 5, A), batch_size=8)),
             InvalidParameterError, ["labels", "[0, 1]", "6"], mm),
        Case("require_activations_and_cav: a layer list of numbers",
             lambda: require_activations_and_cav(lambda self, layers: None)(pclarc, [1]),
             InvalidParameterError, ["cav_layers", "list of layer names", "[1]"]),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_bad_input(case: Case) -> None:
    check(case)
