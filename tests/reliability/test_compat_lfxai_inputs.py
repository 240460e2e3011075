"""The bad-input corpus of ``latentsurgeon.compat.lfxai``: every case raises our exception with a
message naming the argument (by lfxai's name), what was expected and what was given, and leaves
the models exactly as they were (see ``_harness.check``)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn
from torch.nn import MSELoss
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.compat.lfxai import (
    AutoEncoderMnist,
    BetaTcVaeMnist,
    BetaVaeMnist,
    ClassifierMnist,
    DecoderMnist,
    EncoderMnist,
    ExampleBasedExplainer,
    Identity,
    InfluenceFunctions,
    Mask,
    NearestNeighbours,
    RandomNoise,
    SimplEx,
    TracIn,
    attribute_auxiliary,
    attribute_individual_dim,
)
from latentsurgeon.errors import InvalidParameterError

from ._harness import Case, check

G = torch.Generator().manual_seed(0)
IMAGES = torch.rand(6, 1, 8, 8, generator=G)
LABELS = torch.randint(0, 10, (6,), generator=G)
LOADER = DataLoader(TensorDataset(IMAGES, LABELS), batch_size=3)


def _autoencoder() -> AutoEncoderMnist:
    torch.manual_seed(0)
    model = AutoEncoderMnist(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)),
                             nn.Sequential(nn.Linear(2, 64), nn.Unflatten(1, (1, 8, 8))),
                             latent_dim=2, input_pert=Identity())
    model.train()  # the state a failed call must leave alone
    return model


MODEL = _autoencoder()
ENC, DEC = EncoderMnist(2), DecoderMnist(2)
CLASSIFIER = ClassifierMnist(EncoderMnist(2), 2, "clf").train()
IMAGES28 = torch.rand(4, 1, 28, 28, generator=G)


def _cases(tmp) -> list[Case]:
    m = (MODEL,)
    fit = MODEL.fit
    return [
        Case("EncoderMnist with a zero code", lambda: EncoderMnist(0), InvalidParameterError,
             ["encoded_space_dim", "[1, inf]", "0"]),
        Case("DecoderMnist with a string code", lambda: DecoderMnist("10"),
             InvalidParameterError, ["encoded_space_dim", "'10'"]),
        Case("AutoEncoderMnist without an encoder",
             lambda: AutoEncoderMnist(None, DEC, 2, Identity()), InvalidParameterError,
             ["encoder", "nn.Module", "NoneType"]),
        Case("AutoEncoderMnist with a zero latent_dim",
             lambda: AutoEncoderMnist(ENC, DEC, 0, Identity()), InvalidParameterError,
             ["latent_dim", "0"]),
        Case("AutoEncoderMnist with a number as input_pert",
             lambda: AutoEncoderMnist(ENC, DEC, 2, 5), InvalidParameterError,
             ["input_pert", "callable", "int"]),
        Case("AutoEncoderMnist with a string loss_f",
             lambda: AutoEncoderMnist(ENC, DEC, 2, Identity(), loss_f="mse"),
             InvalidParameterError, ["loss_f", "callable", "str"]),
        Case("AutoEncoderMnist.fit with a negative n_epoch",
             lambda: fit("cpu", LOADER, LOADER, tmp, n_epoch=-1), InvalidParameterError,
             ["n_epoch", "-1"], m),
        Case("AutoEncoderMnist.fit with patience 0",
             lambda: fit("cpu", LOADER, LOADER, tmp, patience=0), InvalidParameterError,
             ["patience", "0"], m),
        Case("AutoEncoderMnist.fit with a number as save_dir",
             lambda: fit("cpu", LOADER, LOADER, 5, n_epoch=1), InvalidParameterError,
             ["save_dir", "directory", "int"], m),
        Case("AutoEncoderMnist.load_metadata of a folder without metadata",
             lambda: MODEL.load_metadata(tmp / "empty"), InvalidParameterError,
             ["load_metadata", "model.json"], m),
        Case("AutoEncoderMnist.save_metadata with a json option the writer lacks",
             lambda: MODEL.save_metadata(tmp, indent=2), InvalidParameterError,
             ["sort_keys", "indent"], m),
        Case("ClassifierMnist with a string encoder",
             lambda: ClassifierMnist("encoder", 2, "clf"), InvalidParameterError,
             ["encoder", "nn.Module", "str"]),
        Case("ClassifierMnist.test_epoch of images without labels",
             lambda: CLASSIFIER.test_epoch("cpu", DataLoader(IMAGES28, batch_size=2)),
             InvalidParameterError, ["dataloader", "(images, labels)", "Tensor"],
             (CLASSIFIER,)),
        Case("BetaVaeMnist with no latent units", lambda: BetaVaeMnist(latent_dims=0),
             InvalidParameterError, ["latent_dims", "0"]),
        Case("BetaTcVaeMnist with a negative beta", lambda: BetaTcVaeMnist(beta=-1),
             InvalidParameterError, ["beta", "-1"]),
        Case("RandomNoise with a negative noise_level", lambda: RandomNoise(noise_level=-0.1),
             InvalidParameterError, ["noise_level", "-0.1"]),
        Case("Mask with a proportion above 1", lambda: Mask(mask_proportion=1.5),
             InvalidParameterError, ["mask_proportion", "1.5"]),
        Case("Identity as the model of an explainer", lambda: SimplEx(Identity()),
             InvalidParameterError, ["model", "encoder", "Identity"]),
        Case("attribute_auxiliary with a string attr_method",
             lambda: attribute_auxiliary(MODEL.encoder, LOADER, "cpu", "IG"),
             InvalidParameterError, ["attr_method", "captum", "str"], m),
        Case("attribute_auxiliary with a string baseline",
             lambda: attribute_auxiliary(MODEL.encoder, LOADER, "cpu",
                                         IntegratedGradients(MODEL), "zeros"),
             InvalidParameterError, ["baseline", "tensor", "str"], m),
        Case("attribute_individual_dim with no units",
             lambda: attribute_individual_dim(MODEL.encoder, 0, LOADER, "cpu",
                                              IntegratedGradients(MODEL.encoder), None),
             InvalidParameterError, ["dim_latent", ">= 1", "0"], m),
        Case("SimplEx of a model without an encoder", lambda: SimplEx(nn.Linear(2, 2)),
             InvalidParameterError, ["model", "'encoder'", "Linear"]),
        Case("SimplEx.attribute without X_train",
             lambda: SimplEx(MODEL).attribute(IMAGES, [0]), InvalidParameterError,
             ["X_train", "train_idx"], m),
        Case("SimplEx.attribute with an index outside X_train",
             lambda: SimplEx(MODEL, X_train=IMAGES).attribute(IMAGES, [99]),
             InvalidParameterError, ["train_idx", "6 examples", "99"], m),
        Case("SimplEx.attribute_loader with batch_size 0",
             lambda: SimplEx(MODEL).attribute_loader("cpu", LOADER, LOADER, batch_size=0),
             InvalidParameterError, ["batch_size", ">= 1", "0"], m),
        Case("SimplEx.compute_weights with n_epoch 0",
             lambda: SimplEx.compute_weights(torch.ones(2, 3), torch.ones(4, 3), n_epoch=0),
             InvalidParameterError, ["n_epoch", "0"]),
        Case("NearestNeighbours.attribute with batch_size 0",
             lambda: NearestNeighbours(MODEL, X_train=IMAGES).attribute(IMAGES, [0],
                                                                        batch_size=0),
             InvalidParameterError, ["batch_size", "0"], m),
        Case("TracIn with a string loss_f", lambda: TracIn(MODEL, "l1", tmp),
             InvalidParameterError, ["loss_f", "callable", "str"], m),
        Case("TracIn with a number as save_dir", lambda: TracIn(MODEL, MSELoss(), 3),
             InvalidParameterError, ["save_dir", "int"], m),
        Case("TracIn of a model fitted without checkpoints",
             lambda: TracIn(MODEL, MSELoss(), tmp).attribute_loader("cpu", LOADER, LOADER),
             InvalidParameterError, ["checkpoints_files", "checkpoint_interval"], m),
        Case("InfluenceFunctions with damp 0",
             lambda: InfluenceFunctions(MODEL, MSELoss(), tmp).attribute_loader(
                 "cpu", LOADER, LOADER, LOADER, damp=0), InvalidParameterError,
             ["damp", "> 0", "0"], m),
        Case("ExampleBasedExplainer with a list as X_train",
             lambda: ExampleBasedExplainer(MODEL, [1, 2], None), InvalidParameterError,
             ["X_train", "tensor", "list"], m),
    ]


CASE_NAMES = [c.name for c in _cases(None)]


@pytest.mark.parametrize("index", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_bad_input(index: int, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    check(_cases(tmp_path)[index])
