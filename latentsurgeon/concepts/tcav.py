"""TCAV: testing a class's sensitivity to a concept (Kim et al. 2018, arXiv:1711.11279).

For an input ``x`` of class ``k``, a layer with activation ``a(x)`` and a unit concept direction
``v`` (a :class:`~latentsurgeon.concepts.CAV`) in the layer's *pooled* space, the directional
derivative is

    S_v(x) = d/de  h_k(a(x) + e * lift(v))  at e = 0,

where ``h_k`` is the class-``k`` logit computed from the layer on, and ``lift(v)`` is the smallest
change of the activation that moves its pooled vector by ``v``:

* ``"flatten"``: ``lift(v) = v`` reshaped, so ``S_v(x) = grad.flatten() @ v``;
* ``"mean"``: ``v_c`` added at every position of channel ``c``;
* ``"max"``: ``v_c`` added at the position of channel ``c``'s maximum (the only place where a
  small change moves the maximum).

It is computed by inserting a zero offset ``lift(delta)`` into the layer's output and
differentiating the logit w.r.t. ``delta``: one backward pass per batch gives the pooled-space
gradient of every input, and the derivatives along all CAVs are then one matrix product. This
works for frozen models too (nothing upstream needs to require grad).

Scores over the class inputs ``X_k`` (Kim et al. 2018, section 3.3 and their code):

* sign count: ``|{x : S_v(x) > 0}| / |X_k|``;
* magnitude: ``sum_x max(S_v(x), 0) / sum_x |S_v(x)|``, a ratio in ``[0, 1]`` (captum's
  ``"magnitude"`` is the *mean* of ``S_v`` instead, an unbounded number; we report that mean
  as ``mean_derivative``).

Runs and the null. Run ``i`` (``i = 1..n_runs``) fits a CAV of the concept against random set
``R_i``; null run ``i`` fits a CAV of another random set ``P_i`` against the same ``R_i``, so every
null run has its own random "concept", as in Kim et al.'s code, where the random baseline pools
many random concepts.

Two significance tests, both always computed (``test=`` picks the one behind ``p_value`` and
``significant``; the default is ``"set"``):

* ``"ttest"`` (Kim et al. 2018): two-sided ``scipy.stats.ttest_ind`` (equal variances) of the
  concept's per-run sign counts against the null's. The concept's runs all share the *same*
  concept examples, so they are not independent replicates of "a concept": a random set of
  images used as the concept is flagged significant far more often than ``alpha`` (on the decoy
  digits CNN, 25-40% of random concepts at ``alpha = 0.05``), and a planted watermark's p-value
  swings between 1e-5 and 0.09 with the seed of the random draws.
* ``"set"``: treats the concept set as the unit of replication. The concept's mean over runs of
  ``mean_derivative`` is compared with the spread of single null runs (a t prediction interval:
  ``t = (m - mean(null)) / (sd(null) * sqrt(1 + 1/M))``, ``M - 1`` degrees of freedom). Under the
  null the concept's mean varies at most as much as a single run, so the test is valid
  (conservative): about 1-2% of random concepts are flagged on the same model at 0.05, while a
  planted watermark is still found with flatten pooling. It uses the mean derivative because the
  sign count saturates at 0 or 1 and then cannot separate a concept from a random direction.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon.activations import capture
from latentsurgeon.activations.batching import (
    DataLike,
    as_loader,
    batch_inputs,
    loader_length,
    model_device,
    to_device,
)
from latentsurgeon.activations.pooling import check_pooling, pool
from latentsurgeon.concepts.cav import CAV, METHODS
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import (
    get_layer,
    hooked,
    preserve_model_state,
    primary_tensor,
    replace_primary,
)

logger = logging.getLogger("latentsurgeon")

__all__ = ["TCAVResult", "directional_derivatives", "pooled_gradients", "tcav", "tcav_scores"]


# -- result --------------------------------------------------------------------------------------
TESTS = ("ttest", "set")


@dataclass
class TCAVResult:
    """What :func:`tcav` found for one concept, class and layer.

    Attributes:
        layer, target, pooling, method: what was tested.
        sign_count: ``(n_runs,)`` TCAV sign-count score of each concept CAV.
        magnitude: ``(n_runs,)`` magnitude score (ratio in ``[0, 1]``) of each concept CAV.
        mean_derivative: ``(n_runs,)`` mean of ``S_v(x)`` over the inputs, per concept CAV.
        random_sign_count, random_magnitude, random_mean_derivative: ``(n_null,)`` the same for
            the random-vs-random CAVs (empty without a null).
        test: which test ``p_value`` and :attr:`significant` use (``"ttest"`` or ``"set"``).
        p_value: the p-value of ``test``.
        p_value_ttest: Kim et al.'s t-test on the sign counts.
        p_value_magnitude: the same t-test on the magnitude scores.
        p_value_set: the concept-set-level test on the mean derivative (see the module doc).
            All p-values are NaN without a null of at least 2 runs.
        alpha, n_tests: significance level and Bonferroni factor; :attr:`significant` is
            ``p_value < alpha / n_tests``.
        cav_accuracy: ``(n_runs,)`` held-out accuracy of each concept CAV (how separable the
            concept is from each random set).
        derivatives: ``(n_runs, n_inputs)`` directional derivatives ``S_v(x)``.
        concept_cavs, random_cavs: the CAVs used; pass them to :func:`tcav` again to score new
            inputs without refitting.
    """

    layer: str
    target: int
    pooling: str
    method: str
    sign_count: np.ndarray
    magnitude: np.ndarray
    mean_derivative: np.ndarray
    random_sign_count: np.ndarray
    random_magnitude: np.ndarray
    random_mean_derivative: np.ndarray
    test: str
    p_value: float
    p_value_ttest: float
    p_value_magnitude: float
    p_value_set: float
    alpha: float
    n_tests: int
    cav_accuracy: np.ndarray
    derivatives: torch.Tensor = field(repr=False)
    concept_cavs: list[CAV] = field(repr=False)
    random_cavs: list[CAV] = field(repr=False)

    @property
    def n_runs(self) -> int:
        return len(self.sign_count)

    @property
    def mean(self) -> float:
        """Mean sign-count score of the concept over the runs (the TCAV score)."""
        return float(np.mean(self.sign_count))

    @property
    def std(self) -> float:
        """Standard deviation (ddof=1) of the concept's sign-count scores (0 for one run)."""
        return float(np.std(self.sign_count, ddof=1)) if self.n_runs > 1 else 0.0

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_sign_count)) if len(self.random_sign_count) else math.nan

    @property
    def random_std(self) -> float:
        n = len(self.random_sign_count)
        return float(np.std(self.random_sign_count, ddof=1)) if n > 1 else math.nan

    @property
    def magnitude_mean(self) -> float:
        return float(np.mean(self.magnitude))

    @property
    def threshold(self) -> float:
        """The p-value threshold applied: ``alpha / n_tests`` (Bonferroni)."""
        return self.alpha / self.n_tests

    @property
    def significant(self) -> bool:
        """``p_value < alpha / n_tests``; False when there is no p-value."""
        return bool(np.isfinite(self.p_value) and self.p_value < self.threshold)

    def significant_at(self, alpha: float = 0.05, n_tests: int = 1, test: str | None = None) -> bool:
        """Significance at another level, Bonferroni factor or test (``"ttest"``/``"set"``)."""
        p = {"ttest": self.p_value_ttest, "set": self.p_value_set, None: self.p_value}[test]
        return bool(np.isfinite(p) and p < alpha / n_tests)

    def summary(self) -> str:
        """One line: scores, null, p-values and the verdict."""
        verdict = "significant" if self.significant else "not significant"
        bonf = f", Bonferroni x{self.n_tests}" if self.n_tests > 1 else ""
        return (f"TCAV class {self.target} @ {self.layer} ({self.method}, {self.pooling}): "
                f"sign count {self.mean:.3f} +/- {self.std:.3f} over {self.n_runs} runs, "
                f"random {self.random_mean:.3f} +/- {self.random_std:.3f}, "
                f"magnitude {self.magnitude_mean:.3f}; p(ttest) = {self.p_value_ttest:.3g}, "
                f"p(set) = {self.p_value_set:.3g}: {verdict} by {self.test} at "
                f"alpha={self.alpha}{bonf}")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serialisable); CAVs and derivatives are left out."""
        def floats(a: np.ndarray) -> list[float]:
            return [float(x) for x in a]

        out: dict[str, Any] = {"layer": self.layer, "target": self.target,
                               "pooling": self.pooling, "method": self.method, "test": self.test}
        for key in ("sign_count", "magnitude", "mean_derivative", "random_sign_count",
                    "random_magnitude", "random_mean_derivative", "cav_accuracy"):
            out[key] = floats(getattr(self, key))
        for key in ("mean", "std", "random_mean", "random_std", "p_value", "p_value_ttest",
                    "p_value_magnitude", "p_value_set", "alpha"):
            out[key] = float(getattr(self, key))
        out["n_tests"] = self.n_tests
        out["significant"] = self.significant
        return out


# -- gradients -----------------------------------------------------------------------------------
def _pooled_dim(acts: torch.Tensor, pooling: str) -> int:
    if acts.dim() <= 2 or pooling in ("flatten", "none"):
        return int(np.prod(acts.shape[1:]))
    return int(acts.shape[1])


def _lift(acts: torch.Tensor, delta: torch.Tensor, pooling: str) -> torch.Tensor:
    """The smallest change of ``acts (N, C, *spatial)`` that moves ``pool(acts)`` by
    ``delta (N, D)`` (see the module doc)."""
    if acts.dim() <= 2 or pooling in ("flatten", "none"):
        return delta.reshape(acts.shape)
    view = delta.reshape(*delta.shape, *([1] * (acts.dim() - 2)))
    if pooling == "mean":
        return view.expand_as(acts)
    # max: only the arg-max position moves a channel's maximum (first one on ties, like argmax).
    flat = acts.detach().flatten(2)
    onehot = torch.zeros_like(flat).scatter_(2, flat.argmax(2, keepdim=True), 1.0)
    return onehot.view_as(acts) * view


def _target_output(output: Any, target: int) -> torch.Tensor:
    out = primary_tensor(output)
    if out.dim() == 1:
        if target != 0:
            raise ShapeMismatchError(
                f"The model returns one value per input (shape {tuple(out.shape)}); use target=0.")
        return out
    if not 0 <= target < out.shape[1] and not -out.shape[1] <= target < 0:
        raise ShapeMismatchError(
            f"target={target} is out of range for outputs of shape {tuple(out.shape)}.")
    return out.reshape(len(out), out.shape[1], -1)[:, target].sum(-1)


def pooled_gradients(
    model: nn.Module,
    layer: str,
    inputs: DataLike,
    target: int,
    *,
    pooling: str = "flatten",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    bar: Any = None,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Gradient of the class-``target`` logit w.r.t. the pooled activation of ``layer``.

    Returns:
        ``(G, shape)``: ``G`` is ``(N, D)`` float64 on the CPU with ``S_v(x_i) = G[i] @ v``;
        ``shape`` is the per-input activation shape of ``layer``.
    """
    check_pooling(pooling)
    get_layer(model, layer)
    device = torch.device(device) if device is not None else model_device(model)
    loader = as_loader(inputs, batch_size)
    deltas: list[torch.Tensor] = []
    shapes: list[tuple[int, ...]] = []

    def insert(name: str, module: nn.Module, args: tuple, output: Any) -> Any:
        acts = primary_tensor(output)
        if pooling == "none" and acts.dim() > 2:
            raise ShapeMismatchError(
                "TCAV needs one vector per input: use pooling='flatten', 'max' or 'mean' for "
                f"activations of shape {tuple(acts.shape)}.")
        delta = torch.zeros(len(acts), _pooled_dim(acts, pooling), dtype=acts.dtype,
                            device=acts.device, requires_grad=True)
        deltas.append(delta)
        shapes.append(tuple(acts.shape[1:]))
        # Adds exactly zero: the forward pass is unchanged, but the logit now depends on delta.
        return replace_primary(output, acts + _lift(acts, delta, pooling))

    grads: list[torch.Tensor] = []
    with preserve_model_state(model), hooked(model, layer, forward=insert), torch.enable_grad():
        model.eval()
        for batch in loader:
            deltas.clear()
            output = model(to_device(batch_inputs(batch), device))
            if len(deltas) != 1:
                raise LatentSurgeonError(
                    f"Layer {layer!r} ran {len(deltas)} times in one forward pass; TCAV needs a "
                    "layer that runs exactly once.")
            (grad,) = torch.autograd.grad(_target_output(output, target).sum(), deltas[0],
                                          allow_unused=True)
            if grad is None:
                raise LatentSurgeonError(
                    f"The model's output does not depend on layer {layer!r}'s output.")
            grads.append(grad.detach().to("cpu", torch.float64))
            if bar is not None:
                bar.update(1)
    if not grads:
        raise LatentSurgeonError("No inputs: the class inputs are empty.")
    return torch.cat(grads), shapes[0]


def tcav_scores(derivatives: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sign-count and magnitude scores of ``derivatives (R, N)`` -> two ``(R,)`` arrays.

    Magnitude is ``sum(max(S, 0)) / sum(|S|)`` (0 where every derivative is 0).
    """
    d = derivatives.double()
    sign = (d > 0).double().mean(1)
    total = d.abs().sum(1)
    magnitude = torch.where(total > 0, d.clamp(min=0).sum(1) / total.clamp(min=1e-300),
                            torch.zeros_like(total))
    return sign.numpy(), magnitude.numpy()


def _directions(cavs: Sequence[CAV], dim: int, shape: tuple[int, ...]) -> torch.Tensor:
    rows = []
    for cav in cavs:
        cav._check_fitted()
        if list(cav.input_shape_) != list(shape) or cav.direction_.numel() != dim:
            raise ShapeMismatchError(
                f"A CAV fitted on activations of per-sample shape {tuple(cav.input_shape_)} "
                f"(pooling {cav.pooling!r}, {cav.direction_.numel()} dims) does not fit this "
                f"layer's activations {shape} pooled to {dim} dims.")
        rows.append(cav.direction_.double())
    return torch.stack(rows)


def directional_derivatives(
    model: nn.Module,
    layer: str,
    inputs: DataLike,
    target: int,
    cavs: CAV | Sequence[CAV],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``S_v(x)`` for every CAV and input: ``(n_cavs, N)`` float64 (see the module doc).

    All CAVs must share a pooling; one forward and one backward pass per batch serve all of them.
    """
    cavs = [cavs] if isinstance(cavs, CAV) else list(cavs)
    pooling = _common_pooling(cavs)
    grads, shape = pooled_gradients(model, layer, inputs, target, pooling=pooling,
                                    batch_size=batch_size, device=device)
    return _directions(cavs, grads.shape[1], shape) @ grads.T


# -- activations of the example sets --------------------------------------------------------------
def _pooled_activations(model: nn.Module, layer: str, data: DataLike, pooling: str, *,
                        batch_size: int, device: torch.device,
                        bar: Any = None) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(N, D)`` float64 pooled activations of ``data`` at ``layer``, and the raw shape."""
    parts: list[torch.Tensor] = []
    shape: tuple[int, ...] = ()
    with capture(model, layer) as cap, torch.no_grad():
        model.eval()  # capture restores the mode on exit
        for batch in as_loader(data, batch_size):
            model(to_device(batch_inputs(batch), device))
            acts = cap[layer]
            if pooling == "none" and acts.dim() > 2:
                raise ShapeMismatchError(
                    "A CAV needs one vector per sample: use pooling='flatten', 'max' or 'mean' "
                    f"for activations of shape {tuple(acts.shape)}.")
            shape = tuple(acts.shape[1:])
            parts.append(pool(acts.float(), pooling).reshape(len(acts), -1).cpu())
            if bar is not None:
                bar.update(1)
    if not parts:
        raise LatentSurgeonError("An example set is empty.")
    return torch.cat(parts).double().numpy(), shape


def _n_batches(data: Any, batch_size: int) -> int:
    try:
        return len(as_loader(data, batch_size))
    except TypeError:
        return 0


def _n_samples(data: Any) -> int:
    """Number of samples in ``data`` (0 when unknown)."""
    try:
        return loader_length(as_loader(data))
    except (TypeError, LatentSurgeonError):
        return 0


def _common_pooling(cavs: Sequence[CAV]) -> str:
    poolings = {cav.pooling for cav in cavs}
    if len(poolings) != 1:
        raise LatentSurgeonError(f"All CAVs must share one pooling; got {sorted(poolings)}.")
    return poolings.pop()


def _cav_list(value: Any) -> list[CAV] | None:
    if isinstance(value, CAV):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, CAV) for v in value):
        return list(value)
    return None


def _fit_cav(positive: np.ndarray, negative: np.ndarray, shape: tuple[int, ...],
             params: Mapping[str, Any]) -> CAV:
    X = np.concatenate([negative, positive])
    y = np.concatenate([np.zeros(len(negative), int), np.ones(len(positive), int)])
    return CAV(**params)._fit_vectors(X, y, shape)


def _ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided equal-variance t-test (Kim et al.); NaN with fewer than 2 values per side."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # scipy returns NaN for two constant samples
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():
        # Sign counts are often all 0 or all 1 on one side; scipy warns about precision then.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)


def _set_test(runs: np.ndarray, null: np.ndarray) -> float:
    """Prediction-interval t-test of ``mean(runs)`` against single null runs (see module doc)."""
    if len(runs) < 1 or len(null) < 2:
        return math.nan
    m = float(np.mean(runs))
    sd = float(np.std(null, ddof=1))
    if sd == 0:
        return 1.0 if m == float(null[0]) else 0.0
    t = (m - float(np.mean(null))) / (sd * math.sqrt(1.0 + 1.0 / len(null)))
    return float(2.0 * stats.t.sf(abs(t), len(null) - 1))


class _RandomSets:
    """Which random inputs the runs use: negatives ``R_1..R_n`` and null positives ``P_1..P_n``.

    From a pool tensor, run ``i`` draws (seeded) ``R_i`` and a disjoint ``P_i``; the union of the
    drawn rows goes through the model once. From a list of sets ``[S_0, ..., S_n]``,
    ``R_i = S_i`` and ``P_i = S_{i-1}``; each set goes through the model once.
    """

    def __init__(self, random: Any, n_runs: int | None, set_size: int | None, seed: int) -> None:
        self.random = random
        self.explicit = not isinstance(random, torch.Tensor)
        if self.explicit:
            if not isinstance(random, (list, tuple)) or len(random) < 2:
                raise LatentSurgeonError(
                    "random must be a tensor of random inputs to draw sets from, or a list of at "
                    "least 2 random input sets.")
            available = len(random) - 1
            if n_runs is not None and n_runs > available:
                raise LatentSurgeonError(
                    f"n_runs={n_runs} needs {n_runs + 1} random sets but {len(random)} were given.")
            self.n_runs = n_runs or available
            self.sets = list(random[: self.n_runs + 1])
            return
        n_pool = len(random)
        self.n_runs = n_runs or 10
        size = set_size if set_size is not None else n_pool // 2
        if size < 2 or 2 * size > n_pool:
            raise LatentSurgeonError(
                f"Cannot draw random sets of {size} inputs from a pool of {n_pool}: a null run's "
                "two random sets must not overlap, so the pool needs 2 * set_size inputs. Pass "
                "set_size= or more random inputs.")
        gen = torch.Generator().manual_seed(seed)
        self.negatives, self.positives = [], []
        for _ in range(self.n_runs):
            perm = torch.randperm(n_pool, generator=gen)
            self.negatives.append(perm[:size])
            self.positives.append(perm[size:2 * size])

    def n_batches(self, batch_size: int) -> int:
        if self.explicit:
            return sum(_n_batches(s, batch_size) for s in self.sets)
        rows = torch.unique(torch.cat(self.negatives + self.positives))
        return math.ceil(len(rows) / batch_size)

    def activations(self, model: nn.Module, layer: str, pooling: str, *, batch_size: int,
                    device: torch.device, bar: Any
                    ) -> tuple[list[np.ndarray], list[np.ndarray], tuple[int, ...]]:
        """Pooled activations ``(negatives, null positives, per-input shape)``."""
        if self.explicit:
            out = [_pooled_activations(model, layer, s, pooling, batch_size=batch_size,
                                       device=device, bar=bar) for s in self.sets]
            shapes = {shape for _, shape in out}
            if len(shapes) != 1:
                raise ShapeMismatchError(f"The random sets give activations of shapes {shapes}.")
            acts = [a for a, _ in out]
            return acts[1:], acts[:-1], out[0][1]
        rows = torch.unique(torch.cat(self.negatives + self.positives))  # sorted
        acts, shape = _pooled_activations(model, layer, self.random[rows], pooling,
                                          batch_size=batch_size, device=device, bar=bar)

        def take(idx: torch.Tensor) -> np.ndarray:
            return acts[torch.searchsorted(rows, idx).numpy()]

        return ([take(i) for i in self.negatives], [take(i) for i in self.positives], shape)


def _scores(cavs: Sequence[CAV], grads: torch.Tensor, shape: tuple[int, ...]
            ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    derivatives = _directions(cavs, grads.shape[1], shape) @ grads.T
    sign, magnitude = tcav_scores(derivatives)
    return derivatives, sign, magnitude, derivatives.mean(1).numpy()


# -- the test --------------------------------------------------------------------------------------
def tcav(
    model: nn.Module,
    layer: str,
    inputs: DataLike,
    target: int,
    concept: Any,
    random: Any = None,
    *,
    random_cavs: Sequence[CAV] | None = None,
    n_runs: int | None = None,
    set_size: int | None = None,
    pooling: str = "flatten",
    method: str = "logistic",
    cav_params: Mapping[str, Any] | None = None,
    test: str = "set",
    alpha: float = 0.05,
    n_tests: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TCAVResult:
    """Test whether class ``target``'s output is sensitive to a concept at ``layer`` (TCAV).

    Args:
        model: the classifier; run in eval mode (its mode and hooks are restored).
        layer: one layer name (``model.named_modules()``).
        inputs: inputs of the class to explain ``(N, ...)`` (tensor, tuple, Dataset or loader).
        target: index of the output (logit) whose sensitivity is measured.
        concept: either example inputs of the concept ``(N_c, ...)`` (a CAV is fitted against
            each random set), or one fitted :class:`CAV` or a list of them (used as they are;
            their pooling and per-sample shape must match the layer's activations).
        random: random inputs: a tensor ``(N_r, ...)`` from which the random sets are drawn
            (seeded; see the module doc), or a list ``[S_0, ..., S_n]`` of input sets. Needed
            to fit concept CAVs or the null.
        random_cavs: fitted random-vs-random CAVs for the null (e.g. ``result.random_cavs`` of an
            earlier call); else they are fitted from ``random``.
        n_runs: number of concept CAVs (and null CAVs). Default: 10 for a pool, ``len(random) - 1``
            for a list of sets, the number of CAVs given as ``concept``.
        set_size: size of each set drawn from a pool. Default: the number of concept examples
            (balanced CAV training), at most half the pool.
        pooling: ``"flatten"`` (default, as Kim et al.), ``"max"`` or ``"mean"``; see the
            module doc for the derivative after pooling. Ignored for given CAVs (theirs is used).
        method: CAV method (:data:`latentsurgeon.concepts.cav.METHODS`); default
            ``"logistic"``, the linear-classifier CAV of Kim et al.
        cav_params: further :class:`CAV` arguments (``C``, ``filter_method``, ``test_size``).
        test: ``"set"`` (default: the concept-set level test, valid although all runs share
            the concept examples) or ``"ttest"`` (Kim et al.'s t-test on sign counts, which
            flags random concepts far more often than ``alpha``; see the module doc). Both
            p-values are always reported; this picks ``p_value`` and ``significant``.
        alpha: significance level.
        n_tests: Bonferroni factor, the number of hypotheses tested together (concepts x
            layers x classes); significance needs ``p_value < alpha / n_tests``.
        seed: seeds the random-set draws and the CAV fits.
        batch_size: inputs per forward/backward pass.
        device: where the inputs go (default: the model's device).
        progress: show a progress bar.

    Returns:
        A :class:`TCAVResult`.

    Example::

        res = tcav(model, "features", class0_images, 0, watermarked_images, train_images)
        res.mean, res.p_value, res.significant
        again = tcav(model, "features", new_images, 0, res.concept_cavs,
                     random_cavs=res.random_cavs)       # no refitting
    """
    if not 0.0 < alpha < 1.0:
        raise LatentSurgeonError(f"alpha must lie in (0, 1), got {alpha}.")
    if n_tests < 1:
        raise LatentSurgeonError(f"n_tests must be >= 1, got {n_tests}.")
    if n_runs is not None and n_runs < 1:
        raise LatentSurgeonError(f"n_runs must be >= 1, got {n_runs}.")
    if method not in METHODS:
        raise LatentSurgeonError(f"Unknown CAV method {method!r}; expected one of {METHODS}.")
    if test not in TESTS:
        raise LatentSurgeonError(f"Unknown test {test!r}; expected one of {TESTS}.")
    check_pooling(pooling)
    get_layer(model, layer)
    device = torch.device(device) if device is not None else model_device(model)
    given = _cav_list(concept)
    null_given = _cav_list(random_cavs) if random_cavs is not None else None
    if random_cavs is not None and null_given is None:
        raise LatentSurgeonError("random_cavs must be a list of fitted CAVs.")

    if given is not None:
        pooling = _common_pooling(given + (null_given or []))
        params = given[0].get_params(deep=False)
        method = params["method"]
        if n_runs is not None and n_runs > len(given):
            raise LatentSurgeonError(f"n_runs={n_runs} but only {len(given)} CAVs were given.")
        given = given[:n_runs] if n_runs is not None else given
        n_runs = len(given)
    else:
        params = {**(cav_params or {}), "method": method, "pooling": pooling}
        if random is None:
            raise LatentSurgeonError(
                "Fitting concept CAVs needs random inputs: pass random= (a tensor of random inputs "
                "or a list of random sets), or pass fitted CAVs as the concept.")
    sets = None
    if (given is None or null_given is None) and random is not None:
        size = set_size
        if size is None and isinstance(random, torch.Tensor):
            n_concept = _n_samples(concept) if given is None else 0
            size = min(n_concept, len(random) // 2) if n_concept >= 2 else len(random) // 2
        sets = _RandomSets(random, n_runs, size, seed)
        n_runs = sets.n_runs if given is None else n_runs

    n_fits = (0 if given is not None else n_runs) + (n_runs if null_given is None
                                                     and sets is not None else 0)
    total = (_n_batches(inputs, batch_size) + n_fits
             + (sets.n_batches(batch_size) if sets is not None else 0)
             + (_n_batches(concept, batch_size) if given is None else 0))
    bar = tqdm(total=total, desc="tcav", unit="step", disable=not progress, leave=False)
    try:
        grads, shape = pooled_gradients(model, layer, inputs, target, pooling=pooling,
                                        batch_size=batch_size, device=device, bar=bar)
        negatives: list[np.ndarray] = []
        null_positives: list[np.ndarray] = []
        if sets is not None:
            negatives, null_positives, random_shape = sets.activations(
                model, layer, pooling, batch_size=batch_size, device=device, bar=bar)
            if random_shape != shape:
                raise ShapeMismatchError(
                    f"Random inputs give activations of shape {random_shape}, the class inputs "
                    f"{shape}.")

        if given is not None:
            concept_cavs = given
        else:
            concept_acts, concept_shape = _pooled_activations(
                model, layer, concept, pooling, batch_size=batch_size, device=device, bar=bar)
            if concept_shape != shape:
                raise ShapeMismatchError(
                    f"Concept inputs give activations of shape {concept_shape}, the class inputs "
                    f"{shape}.")
            concept_cavs = []
            for i in range(n_runs):
                concept_cavs.append(_fit_cav(concept_acts, negatives[i], shape,
                                             {**params, "seed": seed + i}))
                bar.update(1)

        if null_given is not None:
            null_cavs = null_given
        elif sets is not None:
            null_cavs = []
            for i in range(n_runs):
                null_cavs.append(_fit_cav(null_positives[i], negatives[i], shape,
                                          {**params, "seed": seed + 10_000 + i}))
                bar.update(1)
        else:
            null_cavs = []
    finally:
        bar.close()

    derivatives, sign, magnitude, mean_deriv = _scores(concept_cavs, grads, shape)
    if null_cavs:
        _, r_sign, r_magnitude, r_mean_deriv = _scores(null_cavs, grads, shape)
    else:
        logger.warning("TCAV without a random-vs-random null: no p-value. Pass random= inputs or "
                       "random_cavs= to test significance.")
        r_sign = r_magnitude = r_mean_deriv = np.zeros(0)
    p_ttest = _ttest(sign, r_sign)
    p_set = _set_test(mean_deriv, r_mean_deriv)
    result = TCAVResult(
        layer=layer, target=int(target), pooling=pooling, method=method,
        sign_count=sign, magnitude=magnitude, mean_derivative=mean_deriv,
        random_sign_count=r_sign, random_magnitude=r_magnitude,
        random_mean_derivative=r_mean_deriv,
        test=test, p_value=p_ttest if test == "ttest" else p_set, p_value_ttest=p_ttest,
        p_value_magnitude=_ttest(magnitude, r_magnitude), p_value_set=p_set,
        alpha=float(alpha), n_tests=int(n_tests),
        cav_accuracy=np.array([float(c.scores_.get("accuracy", math.nan))
                               if isinstance(getattr(c, "scores_", None), dict) else math.nan
                               for c in concept_cavs]),
        derivatives=derivatives, concept_cavs=list(concept_cavs), random_cavs=list(null_cavs),
    )
    logger.info("%s", result.summary())
    return result
