"""What a TCAV call returns: :class:`TCAVResult`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentsurgeon._aliases import aliased
from latentsurgeon.concepts.cav import CAV

__all__ = ["TCAVResult"]


@dataclass
class TCAVResult:
    """What :func:`~latentsurgeon.concepts.tcav` found for one concept, class and layer.

    Attributes:
        layer, target, pooling, method: what was tested (``target`` as a non-negative index,
            also when a negative one was passed).
        sign_count: ``(n_runs,)`` TCAV sign-count score of each concept CAV.
        magnitude: ``(n_runs,)`` magnitude score (ratio in ``[0, 1]``) of each concept CAV.
        mean_derivative: ``(n_runs,)`` mean of ``S_v(x)`` over the inputs, per concept CAV.
        random_sign_count, random_magnitude, random_mean_derivative: ``(n_null,)`` the same for
            the random-vs-random CAVs (empty without a null).
        test: which test ``p_value`` and :attr:`significant` use (``"ttest"`` or ``"set"``).
        p_value: the p-value of ``test``.
        p_value_ttest: Kim et al.'s t-test on the sign counts.
        p_value_magnitude: the same t-test on the magnitude scores.
        p_value_set: the concept-set-level test on the mean derivative
            (:mod:`~latentsurgeon.concepts.tcav_statistics`). All p-values are NaN without a null
            of at least 2 runs.
        significance, n_tests: significance level and Bonferroni factor; :attr:`significant` is
            ``p_value < significance / n_tests``.
        cav_accuracy: ``(n_runs,)`` held-out accuracy of each concept CAV (how separable the
            concept is from each random set).
        derivatives: ``(n_runs, n_inputs)`` directional derivatives ``S_v(x)``.
        concept_cavs, random_cavs: the CAVs used; pass them to ``tcav`` again to score new
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
    significance: float
    n_tests: int
    cav_accuracy: np.ndarray
    derivatives: torch.Tensor = field(repr=False)
    concept_cavs: list[CAV] = field(repr=False)
    random_cavs: list[CAV] = field(repr=False)

    @property
    def alpha(self) -> float:
        """Deprecated name of :attr:`significance`."""
        warnings.warn("TCAVResult.alpha is deprecated; use TCAVResult.significance.",
                      FutureWarning, stacklevel=2)
        return self.significance

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
        """The p-value threshold applied: ``significance / n_tests`` (Bonferroni)."""
        return self.significance / self.n_tests

    @property
    def significant(self) -> bool:
        """``p_value < significance / n_tests``; False when there is no p-value."""
        return bool(np.isfinite(self.p_value) and self.p_value < self.threshold)

    @aliased(deprecated={"alpha": "significance"})
    def significant_at(self, significance: float = 0.05, n_tests: int = 1,
                       test: str | None = None) -> bool:
        """Significance at another level, Bonferroni factor or test (``"ttest"``/``"set"``)."""
        p = {"ttest": self.p_value_ttest, "set": self.p_value_set, None: self.p_value}[test]
        return bool(np.isfinite(p) and p < significance / n_tests)

    def summary(self) -> str:
        """One line: scores, null, p-values and the verdict."""
        verdict = "significant" if self.significant else "not significant"
        bonf = f", Bonferroni x{self.n_tests}" if self.n_tests > 1 else ""
        return (f"TCAV class {self.target} @ {self.layer} ({self.method}, {self.pooling}): "
                f"sign count {self.mean:.3f} +/- {self.std:.3f} over {self.n_runs} runs, "
                f"random {self.random_mean:.3f} +/- {self.random_std:.3f}, "
                f"magnitude {self.magnitude_mean:.3f}; p(ttest) = {self.p_value_ttest:.3g}, "
                f"p(set) = {self.p_value_set:.3g}: {verdict} by {self.test} at "
                f"significance {self.significance}{bonf}")

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
                    "p_value_magnitude", "p_value_set", "significance"):
            out[key] = float(getattr(self, key))
        out["n_tests"] = self.n_tests
        out["significant"] = self.significant
        return out
