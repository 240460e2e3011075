"""TCAV: latentsurgeon's ``tcav`` against captum's ``TCAV``.

Three cases, all 10 concept runs and 10 random-vs-random null runs (``S_{i-1}`` vs ``S_i``, our
null design) over 11 random sets of 100 inputs, on both sides the same layer, sets and inputs:

* ``tcav_resnet_vs_captum_default``: a CIFAR-sized ResNet (3x32x32 inputs, random weights, the
  ResNet-20 layout: a 16-channel stem and three stages of three basic blocks with 16, 32, 64
  channels; defined here, no torchvision) at ``layer1``, the first stage's output
  (16x32x32 = 16,384 dimensions, flattened). captum runs as a user would run it: its default
  classifier (an SGD linear model on a 67% split per CAV), activations cached on disk in a fresh
  ``save_path``. Ours: its default logistic CAVs (fitted on all samples plus a training split for
  the held-out score, all 20 in one batched solve). Agreement: the absolute difference of the
  two mean concept sign counts (different classifiers: not 0 by construction).
* ``tcav_resnet32_layer2_vs_captum_default``: the same, on the ResNet-32 layout (five blocks a
  stage) at ``layer2`` (32x16x16 = 8,192 dimensions): another depth and layer, as a new user
  would try it.
* ``tcav_vs_captum``: a DigitCNN trained 5 epochs on the watermarked decoy digits at
  ``features``; captum gets a ``Classifier`` that fits our logistic CAV on the activations it
  hands it, so both sides fit the same 20 CAVs and the difference is the pipeline around them.
  Agreement: absolute difference of the mean concept sign counts (0 expected).
"""

from __future__ import annotations

import tempfile
import warnings

import numpy as np
import torch
from torch import nn

from bench.runner import Case
from latentsurgeon.concepts import CAV, tcav
from latentsurgeon.data import decoy_digits

N_SETS = 11  # random sets: 10 runs


# -- the CIFAR-sized ResNet ------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 convolution when the shape
    changes); torchvision's in-place style (``out += shortcut``, ``ReLU(inplace=True)``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class CifarResNet(nn.Module):
    """ResNet-20 layout for ``(N, 3, 32, 32)`` inputs and 10 classes."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        cin, stages = widths[0], []
        for i, width in enumerate(widths):
            stage = []
            for j in range(blocks):
                stage.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet_sets(blocks: int = 3
                 ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = CifarResNet(blocks=blocks).eval()
    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(100, 3, 32, 32, generator=g)
    concept = torch.rand(100, 3, 32, 32, generator=g)
    concept[:, :, 4:12, 4:12] = 1.0  # a bright 8x8 square: the concept
    sets = [torch.rand(100, 3, 32, 32, generator=g) for _ in range(N_SETS)]
    return model, inputs, concept, sets


def _captum_experiments(concept: torch.Tensor, sets: list[torch.Tensor]) -> list[list]:
    from captum.concept import Concept

    def loader(x: torch.Tensor) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(x, batch_size=64)

    c = Concept(0, "concept", loader(concept))
    randoms = [Concept(i + 1, f"random{i}", loader(s)) for i, s in enumerate(sets)]
    experiments = []
    for i in range(1, N_SETS):
        experiments += [[c, randoms[i]], [randoms[i - 1], randoms[i]]]
    return experiments


def _captum_sign_counts(scores: dict, layer: str) -> np.ndarray:
    # keys are "<id>-<id>" of each experimental set (captum may reorder the dict)
    return np.array([float(scores[f"0-{i + 1}"][layer]["sign_count"][0])
                     for i in range(1, N_SETS)])


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.mean(a) - np.mean(b)))


def resnet_case(blocks: int = 3, layer: str = "layer1") -> Case:
    from captum.concept import TCAV

    model, inputs, concept, sets = _resnet_sets(blocks)
    target = 3

    def ours() -> np.ndarray:
        return tcav(model, layer, inputs, target, concept, random=sets, progress=False).sign_count

    def peer() -> np.ndarray:
        experiments = _captum_experiments(concept, sets)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the default classifier warns about memory
            scores = TCAV(model, [layer], save_path=tmp).interpret(inputs, experiments,
                                                                   target=target)
        return _captum_sign_counts(scores, layer)

    if blocks == 3:
        return Case("tcav_resnet_vs_captum_default", ours, peer, "captum.concept.TCAV (defaults)",
                    "CIFAR-sized ResNet (ResNet-20 layout, random weights) @ layer1 (16x32x32 = "
                    "16,384 dims, flattened), 100 class inputs, concept 100 images, 11 random "
                    "sets of 100: 10 concept + 10 null CAVs; ours logistic, captum its default "
                    "SGD classifier", ">= 3", _mean_difference)
    depth = 6 * blocks + 2
    return Case(f"tcav_resnet{depth}_{layer}_vs_captum_default", ours, peer,
                "captum.concept.TCAV (defaults)",
                f"CIFAR-sized ResNet-{depth} layout ({blocks} blocks a stage, random weights) @ "
                f"{layer}, flattened, the same inputs, sets and runs as "
                "tcav_resnet_vs_captum_default", ">= 3", _mean_difference)


# -- the decoy-digits case with identical CAV fits --------------------------------------------------
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


def digits_case() -> Case:
    from captum.concept import TCAV

    from latentsurgeon.models import DigitCNN, train_classifier

    data = decoy_digits("watermark", seed=0)
    torch.manual_seed(0)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=5, seed=0, progress=False)
    model.eval()
    train = data.train
    concept = train.images[(train.labels == 0) & train.artifact]
    inputs = data.test.images[data.test.labels == 0]
    clean = train.images[~train.artifact]
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(0))
    sets = [clean[order[i * 100:(i + 1) * 100]] for i in range(N_SETS)]

    def ours() -> np.ndarray:
        return tcav(model, "features", inputs, 0, concept, random=sets, method="logistic",
                    pooling="flatten", progress=False).sign_count

    def peer() -> np.ndarray:
        experiments = _captum_experiments(concept, sets)
        with tempfile.TemporaryDirectory() as tmp:
            scores = TCAV(model, ["features"], classifier=_captum_classifier(),
                          save_path=tmp).interpret(inputs, experiments, target=0)
        return _captum_sign_counts(scores, "features")

    return Case("tcav_vs_captum", ours, peer, "captum.concept.TCAV",
                "DigitCNN @ features (flatten), 49 class inputs, concept 116 images, 11 random "
                "sets of 100: 10 concept + 10 null logistic CAVs on both sides (captum fits our "
                "CAV)", ">= 1", _mean_difference)


def cases() -> list[Case]:
    # One thread: on a shared 2-core machine two BLAS threads make every timing noisy.
    torch.set_num_threads(1)
    return [resnet_case(), resnet_case(5, "layer2"), digits_case()]
