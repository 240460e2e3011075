"""Linear probes per layer: where in the network does a property become linearly readable?

:func:`probe_layers` runs the model over the data *once* (through an
:class:`~latentsurgeon.activations.ActivationStore`), fits one probe per layer on a training split
and scores it on the held-out split. A probe that succeeds at layer ``l`` but not before says that
the layers up to ``l`` compute the property (or a linear code of it); it does not say that the
model *uses* it (TCAV and interventions test use).
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, balanced_accuracy_score, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from latentsurgeon._aliases import aliased, moved
from latentsurgeon._validation import Callable as CallableConstraint
from latentsurgeon._validation import Interval, Options, check_finite, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    DataLike,
    as_loader,
    batch_inputs,
    check_batch_size,
)
from latentsurgeon.activations.pooling import PoolingOption
from latentsurgeon.activations.store import ActivationStore
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector, is_layer_selector

logger = logging.getLogger("latentsurgeon")

__all__ = ["ProbeReport", "default_probe", "probe_layers"]

TASKS = ("classification", "regression")

_CONSTRAINTS = {
    "task": Options(TASKS),
    "probe_factory": [None, CallableConstraint()],
    "pooling": [PoolingOption(), dict],
    "test_size": Interval(float, 0, 1, closed="neither"),
    "seed": [None, Interval(int, 0, None)],
    "progress": bool,
}


def default_probe(task: str) -> Any:
    """The default probe: standardisation then ``LogisticRegression`` (classification) or
    ``Ridge(alpha=1)`` (regression), as a scikit-learn ``Pipeline``."""
    if task == "classification":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if task == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    raise InvalidParameterError(f"task must be one of {TASKS}; got {task!r}.")


@dataclass
class ProbeReport:
    """Held-out probe quality per layer.

    Attributes:
        task: ``"classification"`` or ``"regression"``.
        metric: the score that ranks layers: ``"balanced_accuracy"`` or ``"r2"``.
        rows: one dict per layer, in model order: ``layer``, ``dim`` and the scores
            (classification: ``accuracy``, ``balanced_accuracy``, ``train_accuracy``;
            regression: ``r2``, ``mse``, ``train_r2``).
        probes: the fitted probe of each layer.
        chance: held-out score of a constant prediction (majority class accuracy, or R^2 = 0).
        n_train, n_test: split sizes.
    """

    task: str
    metric: str
    rows: list[dict[str, Any]]
    probes: dict[str, Any] = field(repr=False)
    chance: float
    n_train: int
    n_test: int

    @property
    def layers(self) -> list[str]:
        return [row["layer"] for row in self.rows]

    def score(self, layer: str) -> float:
        """The ranking metric of ``layer``."""
        for row in self.rows:
            if row["layer"] == layer:
                return float(row[self.metric])
        raise KeyError(f"No probe for layer {layer!r}; probed layers: {self.layers}.")

    @property
    def best_layer(self) -> str:
        """The layer with the highest held-out metric (the earliest one on ties)."""
        scores = [row[self.metric] for row in self.rows]
        return self.rows[int(np.argmax(scores))]["layer"]

    def table(self) -> list[dict[str, Any]]:
        """The rows as a list of dicts (a copy; ``pandas.DataFrame(report.table())`` works)."""
        return [dict(row) for row in self.rows]

    def format(self) -> str:
        """The table as aligned text, best layer marked with ``*``."""
        keys = [k for k in self.rows[0] if k != "layer"] if self.rows else []
        width = max([len("layer")] + [len(r["layer"]) for r in self.rows]) + 2
        head = "layer".ljust(width) + "".join(k.rjust(max(len(k), 8) + 2) for k in keys)
        lines = [head, "-" * len(head)]
        best = self.best_layer if self.rows else None
        for row in self.rows:
            cells = []
            for k in keys:
                v = row[k]
                text = f"{v:.3f}" if isinstance(v, float) else str(v)
                cells.append(text.rjust(max(len(k), 8) + 2))
            mark = " *" if row["layer"] == best else ""
            lines.append(row["layer"].ljust(width) + "".join(cells) + mark)
        lines.append(f"chance {self.metric if self.task == 'regression' else 'accuracy'}: "
                     f"{self.chance:.3f}; {self.n_train} train / {self.n_test} test samples")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return (f"ProbeReport(task={self.task!r}, layers={self.layers}, "
                f"best_layer={self.best_layer if self.rows else None!r}, "
                f"{self.metric}={self.score(self.best_layer) if self.rows else float('nan'):.3f})")

    def plot(self, ax: Any = None) -> Any:
        """Plot the held-out score per layer; returns the matplotlib ``Figure``.

        Args:
            ax: an ``Axes`` to draw into; by default a new figure (no pyplot state is touched).
        """
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(max(4.0, 0.6 * len(self.rows) + 2), 3.2))
            ax = fig.subplots()
        else:
            fig = ax.figure
        x = np.arange(len(self.rows))
        ax.plot(x, [r[self.metric] for r in self.rows], marker="o", label=self.metric)
        if self.task == "classification":
            ax.plot(x, [r["accuracy"] for r in self.rows], marker=".", alpha=0.6,
                    label="accuracy")
        ax.axhline(self.chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(x)
        ax.set_xticklabels(self.layers, rotation=45, ha="right")
        ax.set_ylabel("held-out score")
        ax.set_title(f"linear probes ({self.task})")
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        return fig


def _select_store_layers(store: ActivationStore, layers: Any, model: nn.Module | None) -> list[str]:
    # The manifest's layer table is keyed alphabetically; its config keeps the extraction
    # (= model) order.
    ordered = [name for name in store.manifest["config"].get("layers", store.layers)
               if name in store.layers]
    if layers is None:
        return ordered
    if model is not None:
        wanted = list(resolve_layers(model, layers))
    else:
        single = isinstance(layers, (str, type, nn.Module)) or not isinstance(layers, Iterable)
        selectors = [layers] if single else list(layers)
        if not all(isinstance(s, str) for s in selectors):
            raise InvalidParameterError(
                "layers: without a model, layers of a store are selected by names or globs "
                f"(str) only; got {layers!r}.")
        wanted = [name for name in store.layers
                  if any(fnmatch.fnmatchcase(name, s) or name == s for s in selectors)]
    missing = [name for name in wanted if name not in store.layers]
    if missing or not wanted:
        raise LatentSurgeonError(
            f"The store at {store.path} holds layers {store.layers}; requested {missing or layers}.")
    return [name for name in ordered if name in wanted]


def _execution_order(model: nn.Module, names: list[str], data: Any,
                     device: str | torch.device | None) -> list[str]:
    """``names`` in the order their outputs are produced (a container such as ``features``
    finishes after its children), found by one forward pass on one sample (stopped after the
    last of them: the store's extraction just learned how often they run per pass)."""
    try:
        inputs = batch_inputs(next(iter(as_loader(data, 1))))
    except (StopIteration, TypeError):
        return names
    if not isinstance(inputs, torch.Tensor):
        return names  # dict inputs etc.: keep the module order
    access = ModelAccess(model, device=device)
    seen = [name for name, _ in access.call_order(inputs[:1], names, stop_early=True)]
    return seen + [n for n in names if n not in seen]


def _labels(labels: Any, n: int, task: str) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    check_finite(y, "labels")
    if len(y) != n:
        raise ShapeMismatchError(f"labels has {len(y)} entries but the data {n} samples.")
    if task == "classification":
        if y.ndim != 1:
            raise ShapeMismatchError(f"Classification labels must be (N,), got {y.shape}.")
        if len(np.unique(y)) < 2:
            raise InvalidParameterError(
                "labels: a classification probe needs at least two classes; got only "
                f"{np.unique(y).tolist()}.")
    return y


def _score(task: str, probe: Any, X_tr: np.ndarray, y_tr: np.ndarray, X_te: np.ndarray,
           y_te: np.ndarray) -> dict[str, float]:
    pred = probe.predict(X_te)
    train_pred = probe.predict(X_tr)
    if task == "classification":
        return {"accuracy": float(accuracy_score(y_te, pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_te, pred)),
                "train_accuracy": float(accuracy_score(y_tr, train_pred))}
    return {"r2": float(r2_score(y_te, pred)), "mse": float(mean_squared_error(y_te, pred)),
            "train_r2": float(r2_score(y_tr, train_pred))}


@moved(("model", "data", "targets", "layers"), is_old=lambda args: len(args) >= 2
       and args[1] is not None and not is_layer_selector(args[1]))
@aliased(deprecated={"targets": "labels"})
def probe_layers(
    model: nn.Module | None,
    layers: LayerSelector | None,
    data: DataLike | ActivationStore,
    labels: Any,
    *,
    task: str = "classification",
    probe_factory: Callable[[str], Any] | None = None,
    pooling: str | Mapping[str, str] = "mean",
    test_size: float = 0.25,
    seed: int | None = 0,
    store_path: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ProbeReport:
    """Fit a linear probe for ``labels`` at every selected layer and score it on held-out data.

    The order is the library's (model, layer, data); the earlier
    ``(model, data, targets, layers)`` and ``targets=`` still work, with a ``FutureWarning``.

    Args:
        model: the network (may be None when ``data`` is an :class:`ActivationStore`).
        layers: layer selector (names, globs, ``re:`` regexes, classes); with a store:
            names or globs of the store's layers, None = all of them.
        data: inputs in a fixed order (tensor, tuple of tensors, Dataset or a non-shuffling
            DataLoader; the model input is a batch's first element), or an existing
            :class:`ActivationStore` (its rows must follow ``labels``).
        labels: ``(N,)`` classes (classification) or ``(N,)``/``(N, k)`` values (regression),
            row ``i`` belonging to the ``i``-th sample of ``data``.
        task: ``"classification"`` or ``"regression"``.
        probe_factory: ``probe_factory(layer_name) -> estimator`` with scikit-learn's
            ``fit(X, y)``/``predict(X)``; default :func:`default_probe`.
        pooling: how conv activations become vectors (``"mean"``, ``"max"``, ``"flatten"``), or
            a dict per layer; used at extraction. For token activations ``(N, T, D)`` of dict
            inputs with an ``attention_mask`` (a tokenizer's output) ``"mean"`` is the mean over
            unmasked tokens; ``"cls"``, ``"last"``, ``"position:K"``, ``"token_mean"`` are the
            token modes (:mod:`~latentsurgeon.activations.pooling`).
        test_size: share of samples held out (stratified for classification when possible).
        seed: seeds the split (None: fresh randomness).
        store_path: keep the extracted activations in this store directory (a complete store
            from the same model and data there is reused); default a temporary directory that
            is deleted afterwards.
        batch_size, device: of the extraction pass (device default: the model's).
        progress: show progress bars.

    Returns:
        A :class:`ProbeReport`.

    Raises:
        InvalidParameterError: a parameter outside what it accepts (named in the message).
        NonFiniteError: NaN or Inf in the labels or the activations.
    """
    validate_params({"task": task, "probe_factory": probe_factory, "pooling": pooling,
                     "test_size": test_size, "seed": seed, "progress": progress},
                    _CONSTRAINTS, owner="probe_layers()")
    check_batch_size(batch_size)
    if isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler):
        raise LatentSurgeonError(
            "probe_layers needs the data in a fixed order to align it with labels; pass a "
            "DataLoader with shuffle=False (or the tensors).")
    tmp: tempfile.TemporaryDirectory | None = None
    try:
        if isinstance(data, ActivationStore):
            store = data
            if model is not None:
                store.check_model(model)
            names = _select_store_layers(store, layers, model)
        else:
            if model is None:
                raise LatentSurgeonError("probe_layers needs a model unless data is an "
                                         "ActivationStore.")
            if layers is None:
                raise LatentSurgeonError("Select the layers to probe (layers=...).")
            if store_path is None:
                tmp = tempfile.TemporaryDirectory(prefix="latentsurgeon-probe-")
                path = Path(tmp.name)
            else:
                path = Path(store_path)
            store = ActivationStore.extract(model, data, layers, path, pooling=pooling,
                                            batch_size=batch_size, device=device,
                                            progress=progress)
            names = _execution_order(model, list(resolve_layers(model, layers)), data,
                                     device)
        y = _labels(labels, store.n_samples, task)
        index = np.arange(store.n_samples)
        stratify = None
        if task == "classification":
            _, counts = np.unique(y, return_counts=True)
            n_test = int(np.ceil(test_size * len(y)))
            if counts.min() >= 2 and n_test >= len(counts):
                stratify = y
        tr, te = train_test_split(index, test_size=test_size, random_state=seed,
                                  stratify=stratify)
        if task == "classification":
            values, counts = np.unique(y[tr], return_counts=True)
            chance = float(np.mean(y[te] == values[np.argmax(counts)]))
        else:
            chance = 0.0
        rows: list[dict[str, Any]] = []
        probes: dict[str, Any] = {}
        for name in tqdm(names, desc="probing layers", unit="layer", disable=not progress,
                         leave=False):
            X = store.tensor(name).reshape(store.n_samples, -1)
            X = check_finite(X if X.dtype == torch.float64 else X.float(),
                             f"activations of layer {name!r}").numpy()
            probe = probe_factory(name) if probe_factory is not None else default_probe(task)
            probe.fit(X[tr], y[tr])
            scores = _score(task, probe, X[tr], y[tr], X[te], y[te])
            rows.append({"layer": name, "dim": int(X.shape[1]), **scores})
            probes[name] = probe
            logger.debug("probe %s: %s", name, scores)
    finally:
        if tmp is not None:
            tmp.cleanup()
    metric = "balanced_accuracy" if task == "classification" else "r2"
    report = ProbeReport(task=task, metric=metric, rows=rows, probes=probes, chance=chance,
                         n_train=len(tr), n_test=len(te))
    logger.info("probes: best layer %s (%s %.3f)", report.best_layer, metric,
                report.score(report.best_layer))
    return report
