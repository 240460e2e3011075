"""The end-to-end demo on the bundled watermark decoy digits (``latentsurgeon demo``).

reveal -> explain -> correct -> verify: train the reference CNN on digits where a watermark was
planted on most images of one class, show that it learned the shortcut, find the watermark inside
the network (CAVs per layer, TCAV with a significance test), show which training examples and
which pixels its wrong decisions rely on (example and label-free feature importance), remove it
with every correction method, measure what each one achieved (accuracy, artifact relevance, and
the same reliance view again), and write ``report.html`` and ``results.json``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon._io import torch_save_atomic, write_json_atomic
from latentsurgeon.activations import ActivationStore, layer_outputs
from latentsurgeon.data import DecoyDigits, decoy_digits, paste_watermark, watermark_concept_sets
from latentsurgeon.explain import methods as example_methods
from latentsurgeon.models import DigitCNN, evaluate_accuracy, train_classifier

Echo = Callable[[str], None]

#: Method keys of ``results.json`` in the order the report lists them.
METHODS = ("none", "p-clarc", "a-clarc", "rr-clarc", "rrr")


@dataclass
class DemoConfig:
    out: Path = Path("latentsurgeon-report")
    seed: int = 0
    epochs: int = 15
    progress: bool = True
    stop_after: str = "all"  # one of latentsurgeon.demo_stages.STAGES
    conv_layers: list[str] = field(default_factory=lambda: ["features.0", "features.3"])
    block_layer: str = "features"  # where the corrections act: the conv block's output
    tcav_runs: int = 10
    certificate_seeds: int = 5  # fits per trained correction in the certificate
    explain_layer: str = "classifier.1"  # the representation explained: the first hidden layer
    top_k: int = 10


def _quiet(_: str) -> None:
    return None


def train_decoy_model(seed: int, epochs: int, progress: bool) -> tuple[nn.Module, DecoyDigits]:
    """The demo's data and uncorrected model: DigitCNN trained on the watermark decoy digits."""
    data = decoy_digits("watermark", seed=seed)
    torch.manual_seed(seed)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=epochs, seed=seed, progress=progress)
    return model, data


# -- reveal ----------------------------------------------------------------------------------------
def _layer_activations(model: nn.Module, images: torch.Tensor, layers: list[str]) -> dict:
    return layer_outputs(model, layers, images, batch_size=256)


def reveal(model: nn.Module, data: DecoyDigits, config: DemoConfig, echo: Echo) -> dict[str, Any]:
    """Artifact CAVs per layer (fitting samples compared) and TCAV for the shortcut class."""
    from latentsurgeon.concepts import CAV, tcav

    k = int(data.shortcut_class)
    layers = [*config.conv_layers, config.block_layer]
    clean = data.train_clean.images
    marked, _ = paste_watermark(clean)
    acts_clean = _layer_activations(model, clean, layers)
    acts_marked = _layer_activations(model, marked, layers)
    acts_train = _layer_activations(model, data.train.images, layers)
    in_class = data.train.labels == k

    per_layer = []
    echo(f"  {'layer':<12} {'CAV acc':>8} {'CAV AUC':>8} {'TCAV':>6} {'p':>9}   "
         f"{'random TCAV':>11} {'p':>9}")
    concept, random_concept, random_pool = watermark_concept_sets(data, seed=config.seed)
    class_inputs = data.test.images[data.test.labels == k]
    for layer in layers:
        cav = CAV("mass_mean", pooling="flatten", seed=config.seed).fit_paired(
            acts_marked[layer], acts_clean[layer])
        common = dict(n_runs=config.tcav_runs, pooling="flatten", seed=config.seed,
                      progress=False)
        found = tcav(model, layer, class_inputs, k, concept, random=random_pool, **common)
        control = tcav(model, layer, class_inputs, k, random_concept, random=random_pool, **common)
        row = {"layer": layer, "cav_accuracy": cav.scores_["accuracy"],
               "cav_auc": cav.scores_["auc"], "tcav": found.mean, "tcav_p": found.p_value,
               "tcav_significant": bool(found.significant), "random_tcav": control.mean,
               "random_tcav_p": control.p_value,
               "random_significant": bool(control.significant)}
        per_layer.append(row)
        echo(f"  {layer:<12} {row['cav_accuracy']:8.3f} {row['cav_auc']:8.3f} {row['tcav']:6.2f} "
             f"{row['tcav_p']:9.2g}   {row['random_tcav']:11.2f} {row['random_tcav_p']:9.2g}")

    # Which samples the direction is fitted on: all artifact vs all other samples mixes the
    # shortcut class into the direction; within the class or on pairs it does not.
    block = config.block_layer
    fits = {
        "all samples": CAV("mass_mean", seed=config.seed).fit(acts_train[block],
                                                              data.train.artifact),
        f"within class {k}": CAV("mass_mean", seed=config.seed).fit(
            acts_train[block], data.train.artifact, sample_mask=in_class),
        "paired": CAV("mass_mean", seed=config.seed).fit_paired(acts_marked[block],
                                                               acts_clean[block]),
    }
    class_direction = (acts_train[block][in_class].flatten(1).mean(0)
                       - acts_train[block][~in_class].flatten(1).mean(0))
    comparison = []
    for name, cav in fits.items():
        comparison.append({"fit": name, "cosine_with_paired": fits["paired"].cosine(cav),
                           "cosine_with_class_direction": cav.cosine(class_direction),
                           "cav": cav})
    return {"layers": per_layer, "cav_fits": comparison}


# -- explain -------------------------------------------------------------------------------------
#: The example-importance methods of the explain stage, in the order the report shows them:
#: the default methods of the one table of methods.
EXPLAIN_METHODS = example_methods.DEFAULT_METHODS


def misled_inputs(model: nn.Module, data: DecoyDigits) -> torch.Tensor:
    """Indices of the poisoned test images of other classes that ``model`` calls the shortcut
    class: the decisions the watermark made."""
    from latentsurgeon.metrics import predict

    k = int(data.shortcut_class)
    pred = predict(model, data.poisoned.images)
    return torch.nonzero((data.poisoned.labels != k) & (pred == k)).flatten()


def reliance(model: nn.Module, data: DecoyDigits, picked: torch.Tensor,
             config: DemoConfig) -> dict[str, Any]:
    """What ``model``'s representation of the ``picked`` poisoned test images relies on.

    Example importance: for each method, the share of watermarked training images among the
    top-``k`` training examples of every picked image (the base rate is their share of the
    training set). Feature importance: the share of the label-free integrated-gradients
    attribution of the representation that lies inside the watermark (the base rate is the
    watermark's share of the image area).
    """
    from captum.attr import IntegratedGradients

    from latentsurgeon.explain import flagged_share, label_free_attribution, top_examples_by_method

    images = data.poisoned.images[picked]
    top = top_examples_by_method(model, config.explain_layer, data.train, images,
                                 k=config.top_k, methods=EXPLAIN_METHODS)
    shares = {m: flagged_share(top[m], data.train.artifact) for m in EXPLAIN_METHODS}
    attribution = label_free_attribution(model, images, IntegratedGradients,
                                         layer=config.explain_layer, progress=False)
    magnitude = attribution.abs().flatten(1)
    masks = data.poisoned.masks[picked].float().flatten(1)
    inside = ((magnitude * masks).sum(1) / magnitude.sum(1).clamp_min(1e-30)).mean()
    return {"shares": shares, "feature_share": float(inside), "top": top,
            "attribution": attribution}


def explain(model: nn.Module, data: DecoyDigits, config: DemoConfig, echo: Echo
            ) -> dict[str, Any]:
    """Which training examples and which pixels the shortcut decisions rely on."""
    picked = misled_inputs(model, data)
    base_rate = float(data.train.artifact.float().mean())
    mask_area = float(data.poisoned.masks[0].float().mean())
    found = reliance(model, data, picked, config)
    echo(f"  {len(picked)} poisoned test images of other classes are called class "
         f"{data.shortcut_class}; representation: {config.explain_layer}")
    echo(f"  watermarked training images among each one's top {config.top_k} "
         f"(base rate {base_rate:.1%}):")
    for method in EXPLAIN_METHODS:
        share = found["shares"][method]
        echo(f"    {method:<20} {share:6.1%}  ({share / base_rate:4.1f}x the base rate)")
    echo(f"  label-free feature importance inside the watermark: {found['feature_share']:.1%} "
         f"of the attribution on {mask_area:.1%} of the pixels "
         f"({found['feature_share'] / mask_area:.1f}x)")
    return {"picked": picked, "base_rate": base_rate, "mask_area": mask_area, **found}


# -- correct & verify --------------------------------------------------------------------------
def _relevance(model: nn.Module, data: DecoyDigits) -> float:
    """Share of the shortcut class's input x gradient evidence that lies in the watermark, on
    poisoned images: how much the watermark drives the class it was planted on."""
    from latentsurgeon.metrics import artifact_relevance

    split = data.poisoned
    return float(artifact_relevance(model, split.images, split.masks,
                                    target=int(data.shortcut_class)))


def correct_and_verify(model: nn.Module, data: DecoyDigits, config: DemoConfig,
                       echo: Echo, picked: torch.Tensor | None = None
                       ) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """Run every correction with the demo's default settings; measure each (and, given the
    ``picked`` poisoned images of the explain stage, what each corrected model relies on)."""
    from latentsurgeon.correct import REGISTRY
    from latentsurgeon.metrics import gap_closed

    training = data.correction_data()
    runs: dict[str, Callable[[], nn.Module]] = {"none": lambda: model}
    for name, entry in REGISTRY.items():
        # every correction alike: the tuned settings, fitted and exported on a copy
        runs[name] = functools.partial(_corrected, entry, model, training)
    results: dict[str, Any] = {}
    models: dict[str, nn.Module] = {}
    echo(f"  {'method':<10} {'clean':>7} {'poisoned':>9} {'gap closed':>11} "
         f"{'artifact relevance':>19} {'seconds':>8}")
    for name, run in runs.items():
        start = time.perf_counter()
        corrected = run()
        seconds = time.perf_counter() - start if name != "none" else 0.0
        clean = evaluate_accuracy(corrected, data.test)
        poisoned = evaluate_accuracy(corrected, data.poisoned)
        results[name] = {"clean_acc": clean, "poisoned_acc": poisoned,
                         "artifact_relevance": _relevance(corrected, data), "seconds": seconds}
        if picked is not None and len(picked):
            found = reliance(corrected, data, picked, config)
            results[name]["reliance"] = {"shares": found["shares"],
                                         "feature_share": found["feature_share"]}
        models[name] = corrected
    base = results["none"]
    for name, row in results.items():
        row["gap_closed"] = gap_closed(base, row)
        echo(f"  {name:<10} {row['clean_acc']:7.2%} {row['poisoned_acc']:9.2%} "
             f"{row['gap_closed']:11.0%} {row['artifact_relevance']:19.3f} {row['seconds']:8.1f}")
    if picked is not None and len(picked):
        echo(f"  what the same {len(picked)} misled images rely on after each correction "
             f"(watermarked share of the top {config.top_k}; feature share inside the watermark):")
        echo("  " + f"{'method':<10} " + " ".join(f"{m:>18}" for m in EXPLAIN_METHODS)
             + f" {'features':>9}")
        for name, row in results.items():
            shares = row["reliance"]["shares"]
            echo(f"  {name:<10} " + " ".join(f"{shares[m]:18.1%}" for m in EXPLAIN_METHODS)
                 + f" {row['reliance']['feature_share']:9.1%}")
    return results, models


def _corrected(entry: Any, model: nn.Module, training: Any) -> nn.Module:
    return entry.build(progress=False).corrected(model, training)


# -- the certificate -------------------------------------------------------------------------------
def certify_all(model: nn.Module, data: DecoyDigits, config: DemoConfig, echo: Echo,
                corrected: dict[str, nn.Module]) -> dict[str, Any]:
    """The reliance certificate of every corrected model (reference: the uncorrected one), of the
    uncorrected model itself and of a control trained without the watermark; a correction that
    trains is fitted with ``config.certificate_seeds`` seeds and certified over them."""
    from latentsurgeon.correct import REGISTRY
    from latentsurgeon.verify import certify, combine_seeds, neighbour_layers

    k = int(data.shortcut_class)
    training = data.correction_data()

    def one(candidate: nn.Module, concept: bool = True) -> Any:
        layers = (neighbour_layers(candidate, config.block_layer)
                  if concept and config.block_layer in dict(candidate.named_modules()) else None)
        # the reference's concept rows are the uncorrected model's own: measured once, on it
        return certify(candidate, data.test, data.poisoned, target=k, reference=model,
                       layers=layers, tcav_runs=config.tcav_runs, seed=config.seed,
                       concept_reference=False, progress=False)

    torch.manual_seed(config.seed)
    control = DigitCNN()
    train_classifier(control, data.train_clean, epochs=config.epochs, seed=config.seed,
                     progress=False)
    certificates = {"none": one(model), "clean-trained": one(control)}
    for name, entry in REGISTRY.items():
        if name not in corrected:
            continue
        fits = [corrected[name]]
        if entry.modifies_weights:
            fits += [entry.build(progress=False, seed=config.seed + s).corrected(model, training)
                     for s in range(1, config.certificate_seeds)]
        found = [one(fit, concept=i == 0) for i, fit in enumerate(fits)]
        certificates[name] = combine_seeds(found) if len(found) > 1 else found[0]
    echo(f"  {'model':<14} {'verdict':<12} {'insertion flips':>22} {'removal drop':>22} "
         f"{'relevance share':>22} {'seeds':>5}")
    for name, cert in certificates.items():
        cells = [cert.figures[t][f].format(percent=True) for t, f in
                 (("insertion", "flip_rate"), ("removal", "score_drop"), ("relevance", "share"))]
        echo(f"  {name:<14} {cert.verdict:<12} " + " ".join(f"{c:>22}" for c in cells)
             + f" {cert.settings['seeds']:>5}")
    return {name: cert.to_dict() for name, cert in certificates.items()}


# -- the run ---------------------------------------------------------------------------------------
def _meta(config: DemoConfig) -> dict[str, Any]:
    """What a reader needs to reproduce the run: version, date, seed, settings."""
    import datetime
    import platform

    from latentsurgeon import __version__
    from latentsurgeon.correct import REGISTRY

    return {
        "version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": config.seed,
        "epochs": config.epochs,
        "stop_after": config.stop_after,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "settings": {"block_layer": config.block_layer, "conv_layers": config.conv_layers,
                     "tcav_runs": config.tcav_runs,
                     "corrections": {name: dict(entry.settings)
                                     for name, entry in REGISTRY.items()}},
        "timings": {},
    }


def run_demo(config: DemoConfig, echo: Echo = _quiet) -> dict[str, Any]:
    """Run the demo; returns what it measured and writes it to ``config.out``: ``results.json``,
    ``report.html`` (also when stopping after an earlier stage) and ``model.pt`` (the
    uncorrected model's state_dict, for the other commands' ``--weights``)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"seed": config.seed, "epochs": config.epochs,
                               "meta": _meta(config)}
    started = time.perf_counter()
    stage_start = started

    def lap(stage: str) -> None:
        nonlocal stage_start
        now = time.perf_counter()
        results["meta"]["timings"][stage] = round(now - stage_start, 2)
        stage_start = now

    echo(f"[1/5] Training the reference CNN on the watermark decoy digits (seed {config.seed})")
    model, data = train_decoy_model(config.seed, config.epochs, config.progress)
    torch_save_atomic(model.state_dict(), out / "model.pt")
    results["model"] = str(out / "model.pt")
    clean = evaluate_accuracy(model, data.test)
    poisoned = evaluate_accuracy(model, data.poisoned)
    results["data"] = data.summary()
    results["uncorrected"] = {"clean_acc": clean, "poisoned_acc": poisoned, "gap": clean - poisoned}
    echo(f"  clean test accuracy    {clean:7.2%}")
    echo(f"  poisoned test accuracy {poisoned:7.2%}")
    echo(f"  the shortcut costs     {100 * (clean - poisoned):5.1f} points on poisoned data "
         f"(the watermark sits on {data.train.artifact.float().mean():.1%} of training images, "
         f"all of class {data.shortcut_class})")

    lap("train")
    echo("[2/5] Extracting the activations of every conv layer into a store")
    store = ActivationStore.extract(model, data.train.images, config.conv_layers,
                                    out / "activations", pooling="max", overwrite=True,
                                    progress=config.progress)
    echo(store.summary())
    results["store"] = {"path": str(store.path), "layers": store.layers,
                        "n_samples": store.n_samples}
    lap("store")
    if config.stop_after == "store":
        return _finish(out, results, echo, started, data, {"none": model})

    echo(f"[3/5] Reveal: where does the network encode the watermark? (shortcut class "
         f"{data.shortcut_class})")
    revealed = reveal(model, data, config, echo)
    results["reveal"] = {
        "layers": revealed["layers"],
        "cav_fits": [{k: v for k, v in row.items() if k != "cav"}
                     for row in revealed["cav_fits"]],
    }
    lap("reveal")
    if config.stop_after == "reveal":
        return _finish(out, results, echo, started, data, {"none": model})

    echo("[4/5] Explain: what do the shortcut decisions rely on? (training examples and pixels)")
    explained = explain(model, data, config, echo)
    results["explain"] = {
        "layer": config.explain_layer, "k": config.top_k, "n_misled": len(explained["picked"]),
        "base_rate": explained["base_rate"], "mask_area": explained["mask_area"],
        "shares": explained["shares"], "feature_share": explained["feature_share"],
    }
    lap("explain")
    if config.stop_after == "explain":
        return _finish(out, results, echo, started, data, {"none": model}, explained)
    # stop_after == "all"

    echo("[5/5] Correct and verify (every method, default settings)")
    methods, models = correct_and_verify(model, data, config, echo, explained["picked"])
    results["methods"] = methods
    lap("correct_and_verify")
    echo(f"  the reliance certificate (reference: the uncorrected model; trained corrections over "
         f"{config.certificate_seeds} seeds; 95% intervals):")
    results["certificate"] = certify_all(model, data, config, echo, models)
    lap("certificate")
    return _finish(out, results, echo, started, data, models, explained)


def _finish(out: Path, results: dict[str, Any], echo: Echo, started: float, data: DecoyDigits,
            models: dict[str, nn.Module], explained: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    from latentsurgeon.report.demo_report import write_demo_report

    results["report"] = str(out / "report.html")
    results["seconds_total"] = round(time.perf_counter() - started, 2)
    write_demo_report(out / "report.html", data, models, results, explained,
                      method_labels={name: example_methods.METHODS[name].label
                                     for name in EXPLAIN_METHODS})
    write_json_atomic(out / "results.json", results, sort_keys=False)
    echo(f"Report: {results['report']}")
    echo(f"Results: {out / 'results.json'}  ({results['seconds_total']:.0f} s); "
         f"model weights: {results['model']}")
    return results
