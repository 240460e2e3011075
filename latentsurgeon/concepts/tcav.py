"""TCAV: testing a class's sensitivity to a concept (Kim et al. 2018, arXiv:1711.11279).

The pieces, one module each:

* :mod:`~latentsurgeon.concepts.derivatives`: the directional derivative ``S_v(x)`` of the class
  logit along a CAV ``v`` at the layer (one forward and one backward pass per batch of class
  inputs serve every CAV);
* :mod:`~latentsurgeon.concepts.random_sets`: which random inputs each run and null run uses
  (each random input goes through the model once per call);
* :mod:`~latentsurgeon.concepts.cav_fitting`: every CAV of the call fitted together (logistic
  CAVs as one batched Newton solve), each once on all its samples and once on a training split
  for its held-out accuracy;
* :mod:`~latentsurgeon.concepts.tcav_statistics`: sign count, magnitude and the two significance
  tests (``"set"``, the default, and Kim et al.'s ``"ttest"``);
* :mod:`~latentsurgeon.concepts.tcav_result`: :class:`TCAVResult`.

This module is the entry point, :func:`tcav`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._aliases import aliased, moved
from latentsurgeon._validation import Interval, Options, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    DataLike,
    analysis_device,
    batch_inputs,
    check_batch_size,
    count_samples,
    iter_batches,
    n_batches,
)
from latentsurgeon.activations.pooling import PoolingOption, same_pooled_space
from latentsurgeon.concepts._activations import _layer_activations
from latentsurgeon.concepts.cav import CAV, METHODS, fitted_cav, warn_if_orthogonal
from latentsurgeon.concepts.cav_fitting import Problem, fit_directions, held_out_split
from latentsurgeon.concepts.derivatives import (
    check_target,
    common_pooling,
    directional_derivatives,
    directions,
    gradients_and_target,
    pooled_gradients,
)
from latentsurgeon.concepts.random_sets import RandomSets
from latentsurgeon.concepts.tcav_result import TCAVResult
from latentsurgeon.concepts.tcav_statistics import TESTS, set_test, tcav_scores, ttest
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import resolve_layer

logger = logging.getLogger(__name__)

__all__ = ["TCAVResult", "directional_derivatives", "pooled_gradients", "tcav", "tcav_scores"]

_CONSTRAINTS = {
    "layer": str,
    "n_runs": [None, Interval(int, 1, None)],
    "set_size": [None, Interval(int, 2, None)],
    "pooling": PoolingOption(),
    "method": Options(METHODS),
    "cav_params": [None, dict],
    "test": Options(TESTS),
    "significance": Interval(float, 0, 1, closed="neither"),
    "n_tests": Interval(int, 1, None),
    "head": [None, str, int],
    "seed": [None, Interval(int, 0, None)],
    "progress": bool,
}


def _cav_list(value: Any) -> list[CAV] | None:
    if isinstance(value, CAV):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, CAV) for v in value):
        return list(value)
    return None


def _cav_params(cav_params: Mapping[str, Any] | None, method: str, pooling: str
                ) -> dict[str, Any]:
    """The CAV parameters of the fits, validated now rather than after the passes."""
    params = {**(cav_params or {}), "method": method, "pooling": pooling}
    try:
        probe = CAV(**params)
    except TypeError as exc:
        allowed = [p for p in CAV._get_param_names() if p not in ("method", "pooling")]
        raise InvalidParameterError(
            f"tcav(): cav_params accepts the CAV parameters {allowed}; got "
            f"{sorted(cav_params or {})}.") from exc
    probe._validate_params()
    return params


def _first_sample(data: Any) -> Any:
    """One model input from example inputs or a list of sets (None for CAVs or nothing)."""
    if data is None or _cav_list(data) is not None:
        return None
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], torch.Tensor):
        data = data[0]
    elif isinstance(data, (list, tuple)) and data and len({len(t) for t in data}) > 1:
        data = data[0]  # a list of random sets of different sizes
    try:
        return batch_inputs(next(iter(iter_batches(data, 1))))
    except (StopIteration, TypeError, LatentSurgeonError):
        return None


def _refuse_empty_inputs(model: nn.Module, target: Any, head: Any, sources: list[Any],
                         device: torch.device) -> None:
    """The class inputs are empty. Check ``target`` on one other sample first, so that an index
    out of range is reported as such (the usual cause: no inputs of a class that does not
    exist), then report the empty inputs."""
    for data in sources:
        sample = _first_sample(data)
        if sample is None:
            continue
        check_target(target, ModelAccess(model, head=head, device=device).n_outputs(sample))
        break
    raise LatentSurgeonError("tcav(): the class inputs hold no samples; pass inputs of the "
                             "class whose output is tested.")


@moved(("model", "layer", "inputs", "target", "concept", "random"))
@aliased(deprecated={"alpha": "significance", "inputs": "data"})
def tcav(
    model: nn.Module,
    layer: str,
    data: DataLike,
    target: int,
    concept: Any,
    *,
    random: Any = None,
    random_cavs: Sequence[CAV] | None = None,
    n_runs: int | None = None,
    set_size: int | None = None,
    pooling: str = "flatten",
    method: str = "logistic",
    cav_params: Mapping[str, Any] | None = None,
    test: str = "set",
    significance: float = 0.05,
    n_tests: int = 1,
    head: str | int | None = None,
    seed: int | None = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TCAVResult:
    """Test whether class ``target``'s output is sensitive to a concept at ``layer`` (TCAV).

    The order is the library's (model, layer, data, then what is tested); options are
    keyword-only. The earlier ``inputs=`` and a positional ``random`` still work, with a
    ``FutureWarning``.

    Args:
        model: the classifier; run in eval mode (its mode and hooks are restored).
        layer: one layer name (``model.named_modules()``).
        data: inputs of the class to explain ``(N, ...)`` (tensor, tuple, Dataset or loader).
        target: index of the output (logit) whose sensitivity is measured; a negative index
            counts from the end (``-1`` is the last class) and is reported as the non-negative
            index. Checked against the model's outputs before any CAV is fitted.
        concept: either example inputs of the concept ``(N_c, ...)`` (a CAV is fitted against
            each random set), or one fitted :class:`CAV` or a list of them (used as they are;
            their pooling and per-sample shape must match the layer's activations).
        random: random inputs: a tensor ``(N_r, ...)`` from which the random sets are drawn
            (seeded; see :mod:`~latentsurgeon.concepts.random_sets`), or a list
            ``[S_0, ..., S_n]`` of input sets. Needed to fit concept CAVs or the null.
        random_cavs: fitted random-vs-random CAVs for the null (e.g. ``result.random_cavs`` of an
            earlier call); else they are fitted from ``random``.
        n_runs: number of concept CAVs (and null CAVs). Default: 10 for a pool, ``len(random) - 1``
            for a list of sets, the number of CAVs given as ``concept``.
        set_size: size of each set drawn from a pool. Default: the number of concept examples
            (balanced CAV training), at most half the pool.
        pooling: ``"flatten"`` (default, as Kim et al.), ``"max"`` or ``"mean"`` (see
            :mod:`~latentsurgeon.concepts.derivatives` for the derivative after pooling);
            ``"none"`` for layers that give ``(N, D)``. Ignored for given CAVs (theirs is used).
        method: CAV method (:data:`latentsurgeon.concepts.METHODS`); default ``"logistic"``, the
            linear-classifier CAV of Kim et al.
        cav_params: further :class:`CAV` arguments (``C``, ``filter_method``, ``test_size``).
        test: ``"set"`` (default: the concept-set level test, valid although all runs share
            the concept examples) or ``"ttest"`` (Kim et al.'s t-test on sign counts, which
            flags random concepts far more often than the significance level; see
            :mod:`~latentsurgeon.concepts.tcav_statistics`). Both p-values are always
            reported; this picks ``p_value`` and ``significant``.
        significance: significance level (deprecated alias: ``alpha``).
        n_tests: Bonferroni factor, the number of hypotheses tested together (concepts x
            layers x classes); significance needs ``p_value < significance / n_tests``.
        head: where the logits are when the model returns a tuple or dict: a key, attribute or
            index (:func:`~latentsurgeon.hooks.select_logits`). None (default): the output must
            be a tensor or hold exactly one tensor; an output holding several is refused.
        seed: seeds the random-set draws and the CAV fits (None: fresh randomness).
        batch_size: inputs per forward/backward pass.
        device: where the passes run: the model's device (default); another one is refused.
        progress: show a progress bar.

    Returns:
        A :class:`TCAVResult`.

    Raises:
        InvalidParameterError: a parameter outside what it accepts (named in the message),
            ``target`` out of range of the model's outputs.
        NonFiniteError: NaN or Inf in the inputs, activations or gradients.

    Example::

        res = tcav(model, "features", class0_images, 0, watermarked_images, random=train_images)
        res.mean, res.p_value, res.significant
        again = tcav(model, "features", new_images, 0, res.concept_cavs,
                     random_cavs=res.random_cavs)       # no refitting
    """
    validate_params(
        {"layer": layer, "n_runs": n_runs, "set_size": set_size, "pooling": pooling,
         "method": method, "cav_params": cav_params, "test": test, "significance": significance,
         "n_tests": n_tests, "head": head, "seed": seed, "progress": progress},
        _CONSTRAINTS, owner="tcav()")
    check_batch_size(batch_size)
    layer = resolve_layer(model, layer)
    analysis_device(model, device)  # checked (and its deprecation said) once, here
    device = None  # every pass below runs where the model is
    if seed is None:
        seed = int(torch.Generator().seed() % 2**31)
    given = _cav_list(concept)
    null_given = _cav_list(random_cavs) if random_cavs is not None else None
    if random_cavs is not None and null_given is None:
        raise InvalidParameterError("tcav(): random_cavs must be a list of fitted CAVs; got "
                                    f"{type(random_cavs).__name__}.")
    if given is not None:
        pooling = common_pooling(given + (null_given or []))
        params = given[0].get_params(deep=False)
        method = params["method"]
        if n_runs is not None and n_runs > len(given):
            raise InvalidParameterError(
                f"tcav(): n_runs={n_runs} but only {len(given)} CAVs were given.")
        given = given[:n_runs] if n_runs is not None else given
        n_runs = len(given)
    else:
        params = _cav_params(cav_params, method, pooling)
        if random is None:
            raise InvalidParameterError(
                "tcav(): fitting concept CAVs needs random inputs: pass random= (a tensor of "
                "random inputs or a list of random sets), or pass fitted CAVs as the concept.")
    if count_samples(data) == 0:
        _refuse_empty_inputs(model, target, head, [concept, random], device)
    sets = None
    if (given is None or null_given is None) and random is not None:
        size = set_size
        if size is None and isinstance(random, torch.Tensor):
            n_concept = (count_samples(concept) or 0) if given is None else 0
            size = min(n_concept, len(random) // 2) if n_concept >= 2 else len(random) // 2
        sets = RandomSets(random, n_runs, size, seed)
        n_runs = sets.n_runs if given is None else n_runs

    total = ((n_batches(data, batch_size) or 0) + 1
             + (sets.n_batches(batch_size) if sets is not None else 0)
             + ((n_batches(concept, batch_size) or 0) if given is None else 0))
    bar = tqdm(total=total, desc="tcav", unit="step", disable=None if progress else True,
               leave=False)
    try:
        grads, shape, target, dtype = gradients_and_target(
            model, layer, data, target, pooling=pooling, head=head, batch_size=batch_size,
            device=device, bar=bar)
        concept_cavs, null_cavs = _fit_cavs(model, layer, concept, given, null_given, sets,
                                            params, shape, grads.shape[1], dtype, n_runs,
                                            seed, batch_size, device, bar)
        bar.update(1)
    finally:
        bar.close()
    return _result(layer, target, pooling, method, test, significance, n_tests, grads, shape,
                   concept_cavs, null_cavs)


def _fit_cavs(model: nn.Module, layer: str, concept: Any, given: list[CAV] | None,
              null_given: list[CAV] | None, sets: RandomSets | None, params: dict[str, Any],
              shape: tuple[int, ...], dim: int, dtype: torch.dtype, n_runs: int, seed: int,
              batch_size: int, device: torch.device, bar: Any) -> tuple[list[CAV], list[CAV]]:
    """The concept and null CAVs: given ones as they are; the others fitted together (their
    vectors in float64 for a float64 layer, else float32)."""
    pooling = params["pooling"]
    # One (concept + random inputs, D) matrix, written in place by the activation passes when
    # the sizes are known (else assembled from the passes' results).
    n_concept = count_samples(concept) if given is None else 0
    n_random = sets.n_inputs() if sets is not None else 0
    rows = None
    if n_concept is not None and n_random is not None:
        rows = torch.empty(n_concept + n_random, dim, dtype=torch.float64)
    blocks: list[torch.Tensor] = []
    concept_rows = None
    if given is None:
        acts, concept_shape = _layer_activations(
            model, layer, concept, pooling, batch_size, device, bar, what="concept inputs",
            out=rows[:n_concept] if rows is not None else None)
        if not same_pooled_space(concept_shape, shape, pooling) or acts.shape[1] != dim:
            raise ShapeMismatchError(f"Concept inputs give activations of shape {concept_shape}, "
                                     f"the class inputs {shape}.")
        concept_rows = torch.arange(len(acts))
        blocks.append(acts)
    randoms = None
    if sets is not None:
        randoms = sets.activations(model, layer, pooling, batch_size=batch_size, device=device,
                                   bar=bar, out=rows[n_concept:] if rows is not None else None)
        if not same_pooled_space(randoms.shape, shape, pooling) or randoms.rows.shape[1] != dim:
            raise ShapeMismatchError(f"Random inputs give activations of shape {randoms.shape}, "
                                     f"the class inputs {shape}.")
        blocks.append(randoms.rows)
    offset = len(blocks[0]) if concept_rows is not None else 0
    if rows is None and blocks:
        rows = torch.cat(blocks)

    problems: list[Problem] = []
    seeds: list[int] = []
    if given is None:
        for i in range(n_runs):
            problems.append(_problem(randoms.negatives[i] + offset, concept_rows,
                                     params, seed + i))
            seeds.append(seed + i)
    if null_given is None and randoms is not None:
        for i in range(n_runs):
            problems.append(_problem(randoms.negatives[i] + offset,
                                     randoms.positives[i] + offset, params, seed + 10_000 + i))
            seeds.append(seed + 10_000 + i)
    fitted = []
    if problems:
        found = fit_directions(rows, problems, method=params["method"],
                               filter_method=params.get("filter_method", "logistic"),
                               C=params.get("C", 1.0), seeds=seeds)
        state = torch.float64 if dtype == torch.float64 else torch.float32
        fitted = [fitted_cav({**params, "seed": s}, f, shape, state)
                  for f, s in zip(found, seeds, strict=True)]
    concept_cavs = given if given is not None else fitted[:n_runs]
    if given is None and concept_cavs:
        # Random CAVs may point anywhere; the concept's should follow its mean difference.
        cosines = [abs(c.mean_difference_cosine_) for c in concept_cavs]
        warn_if_orthogonal(float(np.nanmedian(cosines)) if not all(map(math.isnan, cosines))
                           else math.nan, params["method"], "tcav(): the median concept CAV")
    if null_given is not None:
        null_cavs = null_given
    elif randoms is not None:
        null_cavs = fitted[len(fitted) - n_runs:]
    else:
        null_cavs = []
    return list(concept_cavs), list(null_cavs)


def _problem(negative: torch.Tensor, positive: torch.Tensor, params: Mapping[str, Any],
             seed: int) -> Problem:
    """Negatives (label 0) then positives (label 1), split as :meth:`CAV.fit` splits."""
    labels = torch.cat([torch.zeros(len(negative), dtype=torch.long),
                        torch.ones(len(positive), dtype=torch.long)])
    train = held_out_split(labels, params.get("test_size", 0.25), seed)
    return Problem(torch.cat([negative, positive]), labels, train)


def _scores(cavs: Sequence[CAV], grads: torch.Tensor, shape: tuple[int, ...]
            ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    derivatives = directions(cavs, grads.shape[1], shape) @ grads.T
    sign, magnitude = tcav_scores(derivatives)
    return derivatives, sign, magnitude, derivatives.mean(1).numpy()


def _result(layer: str, target: int, pooling: str, method: str, test: str, significance: float,
            n_tests: int, grads: torch.Tensor, shape: tuple[int, ...], concept_cavs: list[CAV],
            null_cavs: list[CAV]) -> TCAVResult:
    derivatives, sign, magnitude, mean_deriv = _scores(concept_cavs, grads, shape)
    if null_cavs:
        _, r_sign, r_magnitude, r_mean_deriv = _scores(null_cavs, grads, shape)
    else:
        logger.warning("TCAV without a random-vs-random null: no p-value. Pass random= inputs or "
                       "random_cavs= to test significance.")
        r_sign = r_magnitude = r_mean_deriv = np.zeros(0)
    p_ttest = ttest(sign, r_sign)
    p_set = set_test(mean_deriv, r_mean_deriv)
    result = TCAVResult(
        layer=layer, target=int(target), pooling=pooling, method=method,
        sign_count=sign, magnitude=magnitude, mean_derivative=mean_deriv,
        random_sign_count=r_sign, random_magnitude=r_magnitude,
        random_mean_derivative=r_mean_deriv,
        test=test, p_value=p_ttest if test == "ttest" else p_set, p_value_ttest=p_ttest,
        p_value_magnitude=ttest(magnitude, r_magnitude), p_value_set=p_set,
        significance=float(significance), n_tests=int(n_tests),
        cav_accuracy=np.array([float(c.scores_.get("accuracy", math.nan))
                               if isinstance(getattr(c, "scores_", None), dict) else math.nan
                               for c in concept_cavs]),
        derivatives=derivatives, concept_cavs=list(concept_cavs), random_cavs=list(null_cavs),
    )
    logger.info("%s", result.summary())
    return result
