"""TCAV: latentsurgeon's ``tcav`` against captum's ``TCAV`` on the same work.

Same model (a DigitCNN trained 5 epochs on the watermarked decoy digits), layer ``features``,
class-0 test images as the class inputs, watermarked class-0 training images as the concept and
11 random sets of 100 clean training images: 10 concept-vs-random CAVs and 10 random-vs-random
CAVs (``S_{i-1}`` vs ``S_i``, our null design) on both sides. To make the work identical, captum
gets a ``Classifier`` that fits our logistic CAV on the activations captum hands it, so both
sides fit the same 20 CAVs with the same solver; what differs is the pipeline around them
(captum writes every activation set to disk and reads it back, and a fresh ``save_path`` per
call keeps it from reusing CAVs cached by the previous call).

Agreement: absolute difference of the mean concept sign-count scores.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch

from bench.runner import Case
from latentsurgeon.concepts import CAV, tcav
from latentsurgeon.data import decoy_digits

N_SETS = 11  # random sets: 10 runs


def _setup():
    from latentsurgeon.models import DigitCNN, train_classifier

    data = decoy_digits("watermark", seed=0)
    torch.manual_seed(0)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=5, seed=0, progress=False)
    return data, model.eval()


def _captum_classifier():
    from captum.concept._utils.classifier import Classifier

    class OurCAV(Classifier):
        """Fits latentsurgeon's CAV on captum's activations; captum's concept ids are ordered so
        that the experimental set's first (positive) concept has the smaller id."""

        def __init__(self) -> None:
            self.cav: CAV | None = None
            self.ids: list[int] = []

        def train_and_eval(self, dataloader, **kwargs):
            xs, ys = zip(*dataloader, strict=True)
            x, labels = torch.cat(xs), torch.cat(ys)
            self.ids = sorted(int(i) for i in labels.unique())
            y = (labels == self.ids[0]).long()
            self.cav = CAV("logistic", "flatten").fit(x, y)
            return {"accs": torch.tensor(self.cav.scores_["accuracy"])}

        def weights(self) -> torch.Tensor:
            v = self.cav.direction_
            return torch.stack([-v, v])

        def classes(self) -> list[int]:
            return [self.ids[1], self.ids[0]]  # [negative, positive]

    return OurCAV()


def cases() -> list[Case]:
    # One thread: on a shared 2-core machine two BLAS threads make every timing noisy.
    torch.set_num_threads(1)
    data, model = _setup()
    train = data.train
    concept = train.images[(train.labels == 0) & train.artifact]
    inputs = data.test.images[data.test.labels == 0]
    clean = train.images[~train.artifact]
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(0))
    sets = [clean[order[i * 100:(i + 1) * 100]] for i in range(N_SETS)]

    def ours() -> np.ndarray:
        res = tcav(model, "features", inputs, 0, concept, sets, method="logistic",
                   pooling="flatten", progress=False)
        return res.sign_count

    def peer() -> np.ndarray:
        from captum.concept import TCAV, Concept

        def loader(x: torch.Tensor) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(x, batch_size=64)

        c = Concept(0, "watermark", loader(concept))
        randoms = [Concept(i + 1, f"random{i}", loader(s)) for i, s in enumerate(sets)]
        experiments = []
        for i in range(1, N_SETS):
            experiments += [[c, randoms[i]], [randoms[i - 1], randoms[i]]]
        with tempfile.TemporaryDirectory() as tmp:
            scores = TCAV(model, ["features"], classifier=_captum_classifier(),
                          save_path=tmp).interpret(inputs, experiments, target=0)
        # keys are "<id>-<id>" of each experimental set (captum may reorder the dict)
        return np.array([float(scores[f"0-{i + 1}"]["features"]["sign_count"][0])
                         for i in range(1, N_SETS)])

    def agreement(a: np.ndarray, b: np.ndarray) -> float:
        return float(abs(np.mean(a) - np.mean(b)))

    return [
        Case("tcav_vs_captum", ours, peer, "captum.concept.TCAV",
             "DigitCNN @ features (flatten), 49 class inputs, concept 116 images, 11 random "
             "sets of 100: 10 concept + 10 null logistic CAVs on both sides",
             ">= 1", agreement),
    ]
