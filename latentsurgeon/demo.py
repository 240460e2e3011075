"""The end-to-end demo on the bundled watermark decoy digits (``latentsurgeon demo``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon.activations import ActivationStore
from latentsurgeon.activations._io import write_json_atomic
from latentsurgeon.data import decoy_digits
from latentsurgeon.models import DigitCNN, evaluate_accuracy, train_classifier

Echo = Callable[[str], None]


@dataclass
class DemoConfig:
    out: Path = Path("latentsurgeon-report")
    seed: int = 0
    epochs: int = 15
    progress: bool = True
    stop_after: str = "all"  # one of latentsurgeon.demo_stages.STAGES
    conv_layers: list[str] = field(default_factory=lambda: ["features.0", "features.3"])


def _quiet(_: str) -> None:
    return None


def train_decoy_model(seed: int, epochs: int, progress: bool) -> tuple[nn.Module, Any]:
    """The demo's data and uncorrected model: DigitCNN trained on the watermark decoy digits."""
    data = decoy_digits("watermark", seed=seed)
    torch.manual_seed(seed)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=epochs, seed=seed, progress=progress)
    return model, data


def run_demo(config: DemoConfig, echo: Echo = _quiet) -> dict[str, Any]:
    """Run the demo; returns what it measured and writes it to ``config.out``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"seed": config.seed, "epochs": config.epochs}

    start = time.perf_counter()
    echo(f"Training the reference CNN on the watermark decoy digits (seed {config.seed}) ...")
    model, data = train_decoy_model(config.seed, config.epochs, config.progress)
    clean = evaluate_accuracy(model, data.test)
    poisoned = evaluate_accuracy(model, data.poisoned)
    results["uncorrected"] = {"clean_acc": clean, "poisoned_acc": poisoned,
                              "gap": clean - poisoned, "seconds": time.perf_counter() - start}
    echo(f"  clean test accuracy    {clean:7.2%}")
    echo(f"  poisoned test accuracy {poisoned:7.2%}")
    echo(f"  the shortcut costs     {100 * (clean - poisoned):5.1f} points on poisoned data "
         f"(the watermark sits on {data.train.artifact.float().mean():.1%} of training images, "
         f"all of class {data.shortcut_class})")

    echo("Extracting the activations of every conv layer into a store ...")
    store = ActivationStore.extract(model, data.train.images, config.conv_layers,
                                    out / "activations", pooling="max", overwrite=True,
                                    progress=config.progress)
    echo(store.summary())
    results["store"] = {"path": str(store.path), "layers": store.layers,
                        "n_samples": store.n_samples}
    return _finish(out, results, echo)


def _finish(out: Path, results: dict[str, Any], echo: Echo) -> dict[str, Any]:
    write_json_atomic(out / "results.json", results)
    echo(f"Results written to {out / 'results.json'}")
    return results
