"""The bad-input corpus of ``latentsurgeon.verify``: every case raises our exception with a
message naming the argument, what was expected and what was given, and leaves the models as they
were (``_harness.check``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError
from latentsurgeon.verify import (
    Artifact,
    Threshold,
    certify,
    combine_seeds,
    concept_tests,
    counterfactual_insertion,
    counterfactual_removal,
    group_metrics,
    neighbour_layers,
    relevance_test,
)

from ._harness import Case, check

G = torch.Generator().manual_seed(0)
IMAGES = torch.rand(12, 1, 6, 6, generator=G)
LABELS = torch.arange(12) % 3
MASK = torch.zeros(6, 6, dtype=torch.bool)
MASK[4:, :2] = True
MASKS = MASK.expand(12, 6, 6)
CARRYING = torch.where(MASK, 1.0, IMAGES)
POISONED = (CARRYING, LABELS, torch.ones(12), MASKS)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    return model


M = _model()
ART = Artifact(torch.ones(6, 6), MASK)


def _inf_model() -> nn.Module:
    model = _model()
    with torch.no_grad():
        model[3].bias.fill_(float("inf"))  # NaN would not compare equal to itself
    return model


NAN = _inf_model()

CASES = [
    Case("artifact with an empty mask", lambda: Artifact(torch.ones(6, 6),
                                                          torch.zeros(6, 6, dtype=torch.bool)),
         InvalidParameterError, ["mask", "empty"]),
    Case("artifact pattern that does not broadcast", lambda: Artifact(torch.ones(5, 5), MASK),
         ShapeMismatchError, ["pattern", "(5, 5)", "(6, 6)"]),
    Case("artifact with a NaN pattern", lambda: Artifact(torch.full((6, 6), float("nan")), MASK),
         NonFiniteError, ["pattern"]),
    Case("examples whose masks disagree", lambda: Artifact.from_examples(
        IMAGES[:2], torch.stack([MASK, MASK.flip(0)]), agreement=0.9), InvalidParameterError,
         ["different place", "90%"]),
    Case("examples: agreement out of range", lambda: Artifact.from_examples(
        IMAGES, MASKS, agreement=0), InvalidParameterError, ["agreement", "(0, 1]", "0"]),
    Case("examples: none", lambda: Artifact.from_examples(IMAGES[:0], MASKS[:0]),
         InvalidParameterError, ["images", "no samples"]),
    Case("examples: masks of another count", lambda: Artifact.from_examples(
        IMAGES, MASKS[:3]), ShapeMismatchError, ["masks", "3 masks", "12 inputs"]),
    Case("insertion: not an Artifact", lambda: counterfactual_insertion(
        M, (IMAGES, LABELS), MASK, target=0), InvalidParameterError,
         ["artifact", "Artifact", "Tensor"], [M]),
    Case("insertion: target out of range", lambda: counterfactual_insertion(
        M, (IMAGES, LABELS), ART, target=7), InvalidParameterError,
         ["target", "[0, 2]", "7"], [M]),
    Case("insertion: target not an int", lambda: counterfactual_insertion(
        M, (IMAGES, LABELS), ART, target="0"), InvalidParameterError, ["target", "'0'"], [M]),
    Case("insertion: unknown fill", lambda: counterfactual_insertion(
        M, (IMAGES, LABELS), ART, target=0, fill="zeros"), InvalidParameterError,
         ["fill", "local_mean", "zeros"], [M]),
    Case("insertion: only the shortcut class", lambda: counterfactual_insertion(
        M, (IMAGES[LABELS == 0], LABELS[LABELS == 0]), ART, target=0), InvalidParameterError,
         ["data", "other than 0"], [M]),
    Case("insertion: no labels", lambda: counterfactual_insertion(M, IMAGES, ART, target=0),
         Exception, ["labels"], [M]),
    Case("insertion: a model with NaN outputs", lambda: counterfactual_insertion(
        NAN, (IMAGES, LABELS), ART, target=0), NonFiniteError, ["outputs"], [NAN]),
    Case("removal: no masks", lambda: counterfactual_removal(M, (CARRYING, LABELS), target=0),
         InvalidParameterError, ["masks", "none"], [M]),
    Case("removal: no carrying image of the class", lambda: counterfactual_removal(
        M, (CARRYING, LABELS, torch.zeros(12), MASKS), target=0), InvalidParameterError,
         ["class 0", "artifact-carrying"], [M]),
    Case("removal: masks of another count", lambda: counterfactual_removal(
        M, (CARRYING, LABELS), MASKS[:5], target=0), InvalidParameterError,
         ["5 masks", "12 images"], [M]),
    Case("removal: clean_mean without a reference", lambda: counterfactual_removal(
        M, POISONED, target=0, fill="clean_mean"), InvalidParameterError,
         ["clean_mean", "reference"], [M]),
    Case("removal: local_mean on tabular rows", lambda: counterfactual_removal(
        nn.Linear(4, 3), (torch.rand(6, 4), torch.zeros(6).long(), torch.ones(6),
                          torch.ones(6, 4)), target=0), InvalidParameterError,
         ["local_mean", "(6, 4)", "clean_mean"]),
    Case("relevance: unknown method", lambda: relevance_test(
        M, POISONED, target=0, method="lrp++"), InvalidParameterError,
         ["method", "input_x_gradient", "lrp++"], [M]),
    Case("relevance: no masks", lambda: relevance_test(M, (CARRYING, LABELS), target=0),
         InvalidParameterError, ["masks", "none"], [M]),
    Case("relevance: target a list", lambda: relevance_test(M, POISONED, target=[0]),
         InvalidParameterError, ["target", "[0]"], [M]),
    Case("groups: target out of range", lambda: group_metrics(
        M, (IMAGES, LABELS), POISONED, target=-1), InvalidParameterError,
         ["target", "-1"], [M]),
    Case("concept: layers a string", lambda: concept_tests(
        M, "1", (IMAGES, LABELS), ART, target=0), InvalidParameterError,
         ["layers", "list", "'1'"], [M]),
    Case("concept: too few images", lambda: concept_tests(
        M, ["1"], (IMAGES[:3], LABELS[:3]), ART, target=0), InvalidParameterError,
         ["at least 2", "class 0"], [M]),
    Case("neighbours: unknown layer", lambda: neighbour_layers(M, "head"), Exception,
         ["head"], [M]),
    Case("certify: model not a module", lambda: certify(
        "model", (IMAGES, LABELS), POISONED, target=0), InvalidParameterError,
         ["model", "Module", "str"]),
    Case("certify: reference not a module", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, reference=3), InvalidParameterError,
         ["reference", "int"], [M]),
    Case("certify: poisoned without masks", lambda: certify(
        M, (IMAGES, LABELS), (CARRYING, LABELS), target=0, progress=False),
         InvalidParameterError, ["poisoned", "masks"], [M]),
    Case("certify: bad n_boot", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, n_boot=3), InvalidParameterError,
         ["n_boot", "3"], [M]),
    Case("certify: bad confidence", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, confidence=95.0), InvalidParameterError,
         ["confidence", "95"], [M]),
    Case("certify: concept_reference not a bool", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, concept_reference="no"), InvalidParameterError,
         ["concept_reference", "no"], [M]),
    Case("certify: bad fill", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, fill="blur"), InvalidParameterError,
         ["fill", "blur"], [M]),
    Case("certify: thresholds not Threshold objects", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, thresholds={"insertion": 0.05}),
         InvalidParameterError, ["thresholds", "Threshold"], [M]),
    Case("certify: a threshold of an unknown test", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, thresholds={"x": Threshold(
            "tcav", "score", 0.1, None, 0.5, "")}), InvalidParameterError,
         ["thresholds", "tcav"], [M]),
    Case("certify: artifact not an Artifact", lambda: certify(
        M, (IMAGES, LABELS), POISONED, target=0, artifact=MASK, progress=False),
         InvalidParameterError, ["artifact", "Tensor"], [M]),
    Case("threshold: reduced_ratio above 1", lambda: Threshold(
        "insertion", "flip_rate", 0.05, None, 2.0, ""), InvalidParameterError,
         ["reduced_ratio", "(0, 1]", "2.0"]),
    Case("threshold: NaN level", lambda: Threshold(
        "insertion", "flip_rate", float("nan"), None, 0.5, ""), InvalidParameterError,
         ["removed_below", "finite", "nan"]),
    Case("combine: nothing", lambda: combine_seeds([]), InvalidParameterError,
         ["certificates", "non-empty"]),
    Case("combine: not certificates", lambda: combine_seeds([1, 2]), InvalidParameterError,
         ["certificates", "Certificate"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case):
    check(case)


def test_combine_refuses_certificates_of_different_classes():
    first = certify(M, (IMAGES, LABELS), POISONED, target=0, progress=False, n_boot=20)
    second = certify(M, (IMAGES, LABELS), POISONED, target=1, progress=False, n_boot=20)
    check(Case("combine: two classes", lambda: combine_seeds([first, second]),
               InvalidParameterError, ["different shortcut classes"]))
    assert np.isfinite(first.figures["insertion"]["flip_rate"].value)
