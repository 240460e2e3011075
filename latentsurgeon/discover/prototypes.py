"""PCX-style prototypes (Dreyer et al. 2024): a Gaussian mixture over the concept relevances of
one class; each component is a way the model decides on that class, its prototypes are the
samples nearest the component's mean, and samples of low likelihood are outliers."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import Interval, Options
from latentsurgeon.discover.spray import normalised_vectors
from latentsurgeon.errors import InvalidParameterError

__all__ = ["PrototypeDiscovery"]


class PrototypeDiscovery(Estimator):
    """A Gaussian mixture over (L2-normalised) concept relevances ``(N, C)`` of one class.

    Args:
        n_components: mixture components (capped at ``N // 2``).
        n_prototypes: prototypes per component (the samples nearest its mean).
        covariance_type: scikit-learn's (``"diag"`` by default: C may exceed the samples).
        seed: seed of the mixture's initialisation.

    Learned attributes:
        means_: ``(K, C)`` component means (in the normalised space).
        labels_: ``(N,)`` int64 component of each sample.
        log_likelihood_: ``(N,)`` float64 log-likelihood of each sample (low = outlier).
        prototypes_: ``(K, n_prototypes)`` int64 sample indices nearest each mean (-1 pads a
            component with fewer samples).
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "n_components": Interval(int, 1, None),
        "n_prototypes": Interval(int, 1, None),
        "covariance_type": Options(["full", "tied", "diag", "spherical"]),
        "seed": [None, Interval(int, 0, None)],
    }

    def __init__(self, n_components: int = 4, n_prototypes: int = 8, *,
                 covariance_type: str = "diag", seed: int | None = 0) -> None:
        self.n_components = n_components
        self.n_prototypes = n_prototypes
        self.covariance_type = covariance_type
        self.seed = seed

    def fit(self, relevances: Any) -> PrototypeDiscovery:
        """Fit the mixture to ``relevances`` ``(N, C)`` (N >= 2).

        Raises:
            InvalidParameterError: a bad parameter, fewer than 2 samples.
            NonFiniteError: NaN or Inf in the relevances.
        """
        self._validate_params()
        x = normalised_vectors(relevances, "PrototypeDiscovery.fit(): relevances")
        if len(x) < 2:
            raise InvalidParameterError(
                "PrototypeDiscovery.fit(): relevances needs at least 2 samples; got "
                f"{len(x)}.")
        k = max(1, min(self.n_components, len(x) // 2))
        gmm = GaussianMixture(k, covariance_type=self.covariance_type, reg_covar=1e-4,
                              random_state=self.seed).fit(x)
        labels = gmm.predict(x)
        prototypes = np.full((k, self.n_prototypes), -1, dtype=np.int64)
        for j in range(k):
            inside = np.flatnonzero(labels == j)
            dist = np.linalg.norm(x[inside] - gmm.means_[j], axis=1)
            near = inside[np.argsort(dist, kind="stable")][:self.n_prototypes]
            prototypes[j, :len(near)] = near
        self.means_ = torch.from_numpy(np.ascontiguousarray(gmm.means_))
        self.labels_ = torch.from_numpy(labels.astype(np.int64))
        self.log_likelihood_ = torch.from_numpy(gmm.score_samples(x))
        self.prototypes_ = torch.from_numpy(prototypes)
        return self
