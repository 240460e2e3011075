"""The demo's report: data, reveal, correct, verify in one self-contained HTML file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.report import figures
from latentsurgeon.report.html import HtmlReport


def input_x_gradient(model: nn.Module, images: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """captum's InputXGradient of the ``targets`` logits: ``(N, 1, H, W)``."""
    from captum.attr import InputXGradient

    with preserve_model_state(model):
        model.eval()
        return InputXGradient(model).attribute(images.clone().requires_grad_(True),
                                               target=targets).detach()


def write_demo_report(path: str | Path, data: Any, models: Mapping[str, nn.Module],
                      results: Mapping[str, Any]) -> Path:
    """Write the demo's ``report.html``; returns its path."""
    k = data.shortcut_class
    unc = results["uncorrected"]
    report = HtmlReport(
        "latentsurgeon: a shortcut found, removed and measured",
        f"Reference CNN on scikit-learn's digits with a watermark planted on "
        f"{data.summary()['shortcut_class_artifact_fraction']:.0%} of class {k}'s training images "
        f"(seed {results['seed']}).")

    report.heading("1. The shortcut")
    report.paragraph(
        f"Uncorrected model: {unc['clean_acc']:.1%} on clean test images, "
        f"{unc['poisoned_acc']:.1%} when every test image carries the watermark: the shortcut "
        f"costs {100 * unc['gap']:.1f} accuracy points.")
    train = data.train
    carriers = torch.nonzero(train.artifact).flatten()[:8]
    others = torch.nonzero(~train.artifact).flatten()[:8]
    idx = torch.cat([carriers, others])
    report.figure(figures.image_grid(train.images[idx], [f"y={int(train.labels[i])}" for i in idx],
                                     masks=train.masks[idx]),
                  "Training images: top row with the watermark (outlined), bottom row without.",
                  alt="training examples")
    poisoned_idx = torch.arange(8)
    report.figure(figures.image_grid(data.poisoned.images[poisoned_idx],
                                     [f"y={int(data.poisoned.labels[i])}" for i in poisoned_idx],
                                     masks=data.poisoned.masks[poisoned_idx]),
                  "Poisoned test images: the same watermark on every digit.",
                  alt="poisoned test examples")

    if "reveal" in results:
        reveal = results["reveal"]
        layers = [row["layer"] for row in reveal["layers"]]
        report.heading("2. Reveal: where the network encodes the watermark")
        report.paragraph(
            "Per layer: held-out accuracy and AUC of the watermark's concept direction (mass-mean "
            "CAV fitted on paired images, the same digits with and without the watermark), and "
            f"TCAV for class {k}: the share of class-{k} test images whose class logit grows "
            "along the direction, tested against CAVs between random image sets (p-value). A "
            "random concept is the control.")
        report.table(
            ["layer", "CAV accuracy", "CAV AUC", f"TCAV (class {k})", "p-value", "significant",
             "random concept TCAV", "p-value (random)"],
            [[r["layer"], r["cav_accuracy"], r["cav_auc"], r["tcav"], f"{r['tcav_p']:.2g}",
              "yes" if r["tcav_significant"] else "no", r["random_tcav"],
              f"{r['random_tcav_p']:.2g}"] for r in reveal["layers"]],
            table_id="cav-quality")
        report.figure(figures.layer_quality(layers, {
            "CAV held-out accuracy": [r["cav_accuracy"] for r in reveal["layers"]],
            f"TCAV score, class {k}": [r["tcav"] for r in reveal["layers"]],
            "TCAV score, random concept": [r["random_tcav"] for r in reveal["layers"]],
        }), "CAV quality and TCAV scores per layer.", alt="per-layer CAV quality")
        report.paragraph(
            "Which samples the direction is fitted on matters: artifact vs all other samples "
            f"mixes class {k} into the direction (it points partly along the class-mean "
            "difference); fitting within the class or on paired samples does not.")
        report.table(["fitted on", "cosine with paired CAV", "cosine with class direction"],
                     [[r["fit"], r["cosine_with_paired"], r["cosine_with_class_direction"]]
                      for r in reveal["cav_fits"]], table_id="cav-fits")

    if "methods" in results:
        methods = results["methods"]
        names = list(methods)
        report.heading("3. Correct and verify")
        report.paragraph(
            "Each method starts from the uncorrected model. gap closed = share of the clean vs "
            "poisoned accuracy gap that the correction wins back (poisoned accuracy regained); "
            f"artifact relevance = share of the input x gradient attribution of class {k}'s logit "
            "that lies inside the watermark, on poisoned images: how much the watermark drives "
            "the class it was planted on.")
        report.table(
            ["method", "clean accuracy", "poisoned accuracy", "gap closed", "artifact relevance",
             "seconds"],
            [[n, methods[n]["clean_acc"], methods[n]["poisoned_acc"], methods[n]["gap_closed"],
              methods[n]["artifact_relevance"], methods[n]["seconds"]] for n in names],
            table_id="methods")
        report.paragraph(
            "How to read it: gap closed is measured against the uncorrected model's clean "
            "accuracy, so a method above 100% made the model better on poisoned images than the "
            "uncorrected model was on clean ones (it learned to ignore a watermark that also "
            "hid some strokes). Artifact relevance is where the attribution lies, not what the "
            "model relies on: a correction can lower the prediction's dependence on the "
            "watermark while the gradient still lights it up, or the reverse; the accuracy "
            "columns measure reliance.", note=True)
        report.figure(figures.method_bars(names, [methods[n]["clean_acc"] for n in names],
                                          [methods[n]["poisoned_acc"] for n in names]),
                      "Clean and poisoned test accuracy per method.", alt="method accuracies")
        split = data.poisoned
        pick = torch.nonzero(split.labels != k).flatten()[:8]
        images = split.images[pick]
        targets = torch.full((len(pick),), int(k), dtype=torch.long)
        attributions = {name: input_x_gradient(model, images, targets)
                        for name, model in models.items()}
        report.figure(figures.attribution_rows(images, attributions, masks=split.masks[pick]),
                      f"Input x gradient of class {k}'s logit on poisoned images of other "
                      "classes (watermark outlined): what pushes them towards the shortcut class, "
                      "before (none) and after each correction.",
                      alt="attribution heatmaps")
    meta = results.get("meta", {})
    if meta:
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in meta.get("timings", {}).items())
        settings = meta.get("settings", {})
        report.footer({
            "latentsurgeon": meta.get("version", ""),
            "date": meta.get("date", ""),
            "seed": meta.get("seed", ""),
            "epochs": meta.get("epochs", ""),
            "stopped after": meta.get("stop_after", ""),
            "layers": f"block {settings.get('block_layer')}, conv "
                      f"{', '.join(settings.get('conv_layers', []))}",
            "corrections": "; ".join(f"{k}: {v}" for k, v in
                                     settings.get("corrections", {}).items()),
            "timings": timings or "-",
            "total": f"{results.get('seconds_total', 0):.1f} s",
            "machine": f"{meta.get('machine', '')}, torch {meta.get('torch', '')}",
        })
    return report.write(path)
