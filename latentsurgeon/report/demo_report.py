"""The demo's report: data, reveal, correct, verify in one self-contained HTML file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.report import figures
from latentsurgeon.report.html import HtmlReport


def input_x_gradient(model: nn.Module, images: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """captum's InputXGradient of the ``targets`` logits: ``(N, 1, H, W)``."""
    from captum.attr import InputXGradient

    access = ModelAccess(model)
    with preserve_model_state(model):
        model.eval()
        return InputXGradient(access.logits).attribute(images.clone().requires_grad_(True),
                                                       target=targets).detach()


def _explain_section(report: HtmlReport, data: Any, results: Mapping[str, Any],
                     explained: Mapping[str, Any] | None, labels: Mapping[str, str]) -> None:
    info = results["explain"]
    k = data.shortcut_class
    report.heading("3. Explain: what the shortcut decisions rely on")
    report.paragraph(
        f"{info['n_misled']} poisoned test images of other classes are called class {k}. For "
        f"each, the {info['k']} training examples its representation (layer "
        f"{info['layer']}) relies on most, by four methods; the table gives the share of "
        f"watermarked class-{k} training images among them. They are "
        f"{info['base_rate']:.1%} of the training set, so a share well above that means the "
        "decision leans on the watermark's examples.")
    report.table(["method", "watermarked share of the top examples", "times the base rate"],
                 [[labels.get(m, m), v, v / info["base_rate"]]
                  for m, v in info["shares"].items()], table_id="explain-examples")
    report.paragraph(
        "Raw TracIn (the dot product of loss gradients) ranks the training examples with the "
        "largest gradients first: the few examples the model still gets wrong dominate every "
        "test example's list, whatever it looks like, so its share falls to about the base rate. "
        "With unit-normalised gradients (their cosine) the direction of the gradient decides, "
        "and the watermarked examples that push the same way come first.", note=True)
    report.paragraph(
        f"Label-free feature importance (integrated gradients of the representation, "
        f"g(x~) = <f(x~), f(x)>): {info['feature_share']:.1%} of the attribution lies inside the "
        f"watermark, which covers {info['mask_area']:.1%} of the image "
        f"({info['feature_share'] / info['mask_area']:.1f}x its area).")
    if explained is None:
        return
    picked = explained["picked"]
    train = data.train
    show = picked[:2]
    images, titles, masks = [], [], []
    n_top = 7
    for row, index in enumerate(show):
        for method in info["shares"]:
            top = explained["top"][method][row, :n_top]
            images += [data.poisoned.images[index], *train.images[top]]
            masks += [data.poisoned.masks[index], *train.masks[top]]
            titles += [f"test, y={int(data.poisoned.labels[index])}"] + [
                f"{'wm ' if bool(train.artifact[t]) else ''}y={int(train.labels[t])}" for t in top]
    report.figure(figures.image_grid(torch.stack(images), titles, masks=torch.stack(masks),
                                     ncols=n_top + 1),
                  "For two misled test images (first column), their top training examples by "
                  f"each method, in the order {', '.join(labels.get(m, m) for m in info['shares'])}"
                  " (rows); 'wm' and a red outline mark watermarked training images.",
                  alt="top training examples")
    first = picked[:8]
    report.figure(figures.attribution_rows(
        data.poisoned.images[first], {"label-free IG": explained["attribution"][:len(first)]},
        masks=data.poisoned.masks[first]),
        "Label-free integrated gradients of the representation on misled test images "
        "(watermark outlined).", alt="label-free feature importance")


def _interval(estimate: Mapping[str, Any]) -> str:
    return (f"{100 * estimate['value']:.1f}% [{100 * estimate['low']:.1f}, "
            f"{100 * estimate['high']:.1f}]")


def _certificate_section(report: HtmlReport, data: Any, models: Mapping[str, nn.Module],
                         certificates: Mapping[str, Mapping[str, Any]]) -> None:
    """One table (verdict and the judged figures with 95 % intervals per model), the verdict
    line, and the counterfactual images before and after (``certificates``: ``to_dict()`` of
    each model's certificate)."""
    from latentsurgeon.data import paste_watermark
    from latentsurgeon.metrics import predict

    k = data.shortcut_class
    report.heading("5. Verify: the reliance certificate")
    report.paragraph(
        "Does each model still use the watermark? Insertion: the share of clean test images of "
        f"other classes that the model sends to class {k} when the watermark is pasted on them, "
        "beyond what a neutral fill of the same pixels does. Removal: the fall of class "
        f"{k}'s probability when the watermark is inpainted out of class-{k} images. Relevance: "
        f"the watermark's share of class {k}'s input x gradient relevance on poisoned images. "
        "Each figure with a 95% bootstrap interval over test images (over training seeds for "
        "the corrections that train); the reference is the uncorrected model, and the "
        "thresholds are in docs/verify.md.")
    rows = []
    for name, cert in certificates.items():
        figures_ = cert["figures"]
        rows.append([name, cert["verdict"], _interval(figures_["insertion"]["flip_rate"]),
                     _interval(figures_["removal"]["score_drop"]),
                     _interval(figures_["relevance"]["share"]),
                     _interval(figures_["groups"]["worst_group_acc"]),
                     cert["settings"]["seeds"]])
    report.table(["model", "verdict", "insertion flips", "removal drop", "relevance share",
                  "worst-group accuracy", "seeds"], rows, table_id="certificate")
    for name, cert in certificates.items():
        report.paragraph(f"{name}: {cert['verdict']} ({cert['reason']})")
    first = next(iter(certificates.values()))
    if first.get("concept"):
        report.paragraph(
            "Concept tests (reported, not judged: the watermark can stay readable in a layer "
            "that no longer decides on it): TCAV of the watermark for class "
            f"{k} and the CAV's held-out accuracy, at the corrected layer and its neighbours.")
        report.table(["model", "layer", "TCAV", "p-value", "CAV accuracy"],
                     [[name, row["layer"], row["score"], f"{row['p_value']:.2g}",
                       row["cav_accuracy"]] for name, cert in certificates.items()
                      for row in cert.get("concept", [])], table_id="certificate-concepts")
    pick = torch.nonzero(data.test.labels != k).flatten()[:8]
    clean = data.test.images[pick]
    pasted, masks = paste_watermark(clean)
    shown = {name: m for name, m in models.items()}
    titles = [f"y={int(data.test.labels[i])}" for i in pick]
    for name, model in shown.items():
        predicted = predict(model, pasted)
        titles += [f"{name}: {int(p)}" for p in predicted]
    images = torch.cat([clean] + [pasted] * len(shown))
    outlines = torch.cat([torch.zeros_like(masks)] + [masks] * len(shown))
    report.figure(figures.image_grid(images, titles, masks=outlines),
                  "Counterfactual insertion: clean images of other classes (top row), then the "
                  "same images with the watermark pasted, titled with each model's prediction "
                  f"(uncorrected first): a {k} is the shortcut at work.",
                  alt="counterfactual insertion")


def write_demo_report(path: str | Path, data: Any, models: Mapping[str, nn.Module],
                      results: Mapping[str, Any],
                      explained: Mapping[str, Any] | None = None, *,
                      method_labels: Mapping[str, str] | None = None) -> Path:
    """Write the demo's ``report.html``; returns its path. ``explained`` (the explain stage's
    rankings and attributions) adds the example grids and heatmaps to its section;
    ``method_labels`` names the example-importance methods (``{name: label}``, from the
    explain package's table of methods; a method without one is shown by its name)."""
    method_labels = dict(method_labels or {})
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

    if "explain" in results:
        _explain_section(report, data, results, explained, method_labels)

    if "methods" in results:
        methods = results["methods"]
        names = list(methods)
        report.heading("4. Correct and verify")
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
        with_reliance = [n for n in names if "reliance" in methods[n]]
        if with_reliance:
            shares = list(methods[with_reliance[0]]["reliance"]["shares"])
            report.paragraph(
                "The explain view again, after each correction, on the same misled test images: "
                "the share of watermarked training images among their top examples, and of the "
                "label-free attribution inside the watermark.")
            report.table(
                ["method", *[method_labels.get(m, m) for m in shares], "feature share"],
                [[n, *[methods[n]["reliance"]["shares"][m] for m in shares],
                  methods[n]["reliance"]["feature_share"]] for n in with_reliance],
                table_id="reliance-after")
    if "certificate" in results:
        _certificate_section(report, data, models, results["certificate"])
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
