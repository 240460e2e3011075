"""SpRAy: spectral relevance analysis (Lapuschkin et al. 2019, "Unmasking Clever Hans
predictors") of one set of relevance vectors (the training samples of one class).

1. every relevance map becomes a vector, normalised to unit L2 norm (so clusters group samples
   by *where* the model looks, not by how confident it is);
2. a sparse, symmetric k-nearest-neighbour affinity over those vectors (scikit-learn's
   ``kneighbors_graph``: memory grows with ``N * n_neighbors``, not ``N**2``);
3. the spectrum of the graph's normalised Laplacian (its smallest eigenvalues, through
   ``scipy.sparse.linalg.eigsh``) and scikit-learn's spectral embedding of the graph
   (``sklearn.manifold.spectral_embedding``, the function behind ``SpectralEmbedding``, with
   the first eigenvector kept);
4. the number of clusters ``k`` is the eigengap's: the ``k`` in ``cluster_range`` with the
   largest gap ``lambda_{k+1} - lambda_k``; ``KMeans`` clusters the embedding into ``k``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from scipy.sparse import csgraph
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans
from sklearn.manifold import spectral_embedding
from sklearn.neighbors import kneighbors_graph

from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import Interval, check_finite
from latentsurgeon.errors import InvalidParameterError

__all__ = ["SpRAy", "normalised_vectors"]


def normalised_vectors(relevances: Any, what: str = "relevances") -> np.ndarray:
    """``(N, ...)`` relevance maps -> ``(N, D)`` float64 rows of unit L2 norm (a zero map stays
    zero)."""
    x = relevances.detach().cpu() if isinstance(relevances, torch.Tensor) \
        else torch.as_tensor(np.asarray(relevances))
    if x.dim() < 2:
        raise InvalidParameterError(
            f"{what} must be (N, ...) with one relevance map per sample; got shape "
            f"{tuple(x.shape)}.")
    x = check_finite(x.reshape(len(x), -1).double(), what).numpy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _check_range(cluster_range: Any) -> tuple[int, int]:
    ok = (isinstance(cluster_range, (tuple, list)) and len(cluster_range) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in cluster_range)
          and 2 <= cluster_range[0] <= cluster_range[1])
    if not ok:
        raise InvalidParameterError(
            "SpRAy: cluster_range must be (low, high) ints with 2 <= low <= high; got "
            f"{cluster_range!r}.")
    return int(cluster_range[0]), int(cluster_range[1])


class SpRAy(Estimator):
    """Spectral relevance analysis of one set of relevance maps (see the module doc).

    Args:
        n_neighbors: neighbours per sample in the affinity graph.
        cluster_range: ``(low, high)``: the eigengap picks the number of clusters in it
            (default ``(2, 8)``; capped at ``N - 1`` for small sets).
        seed: seed of the embedding's eigensolver and of KMeans.

    Learned attributes:
        eigenvalues_: ``(high + 1,)`` the smallest eigenvalues of the normalised Laplacian.
        eigengaps_: ``(high + 1 - low,)`` ``lambda_{k+1} - lambda_k`` for ``k`` in the range.
        n_clusters_: the number of clusters chosen.
        embedding_: ``(N, high)`` the spectral embedding (first eigenvector included).
        labels_: ``(N,)`` int64 cluster of each sample.

    Use::

        spray = SpRAy().fit(heatmaps_of_one_class)     # (N, 1, H, W) or (N, D)
        spray.labels_, spray.n_clusters_
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "n_neighbors": Interval(int, 2, None),
        "seed": [None, Interval(int, 0, None)],
    }

    def __init__(self, n_neighbors: int = 10, cluster_range: tuple[int, int] = (2, 8), *,
                 seed: int | None = 0) -> None:
        self.n_neighbors = n_neighbors
        self.cluster_range = cluster_range
        self.seed = seed

    def fit(self, relevances: Any) -> SpRAy:
        """Cluster ``relevances`` ``(N, ...)`` (one map per sample; N >= 4).

        Raises:
            InvalidParameterError: a bad parameter, fewer than 4 samples.
            NonFiniteError: NaN or Inf in the relevances.
        """
        self._validate_params()
        low, high = _check_range(self.cluster_range)
        x = normalised_vectors(relevances, "SpRAy.fit(): relevances")
        n = len(x)
        if n < 4:
            raise InvalidParameterError(
                f"SpRAy.fit(): relevances needs at least 4 samples to cluster; got {n}.")
        high = min(high, n - 2)
        low = min(low, high)
        k = min(self.n_neighbors, n - 1)
        graph = kneighbors_graph(x, k, mode="connectivity", include_self=False)
        affinity = 0.5 * (graph + graph.T)
        laplacian = csgraph.laplacian(affinity, normed=True)
        # the smallest eigenvalues of L = the largest of I - L (eigsh converges fast there)
        shifted = -laplacian
        shifted.setdiag(shifted.diagonal() + 1.0)
        rng = np.random.default_rng(self.seed)
        values = eigsh(shifted, k=high + 1, which="LA", v0=rng.uniform(-1, 1, n))[0]
        eigenvalues = np.sort(np.clip(1.0 - values, 0.0, 2.0))
        gaps = eigenvalues[low:high + 1] - eigenvalues[low - 1:high]
        n_clusters = low + int(np.argmax(gaps))
        # the first eigenvectors too (drop_first=False): on a graph of separate components
        # they are the components' indicators; rows normalised to unit length (Ng, Jordan
        # and Weiss) before KMeans
        embedding = spectral_embedding(affinity, n_components=high, drop_first=False,
                                       random_state=self.seed)
        self.embedding_ = torch.from_numpy(np.ascontiguousarray(embedding))
        labels = self._kmeans(n_clusters)
        self.eigenvalues_ = torch.from_numpy(eigenvalues)
        self.eigengaps_ = torch.from_numpy(gaps)
        self.n_clusters_ = int(n_clusters)
        self.labels_ = labels
        return self

    def _kmeans(self, n_clusters: int) -> torch.Tensor:
        points = self.embedding_.numpy()[:, :n_clusters]
        points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
        labels = KMeans(n_clusters, n_init=10, random_state=self.seed).fit_predict(points)
        return torch.from_numpy(labels.astype(np.int64))

    def cluster(self, n_clusters: int) -> torch.Tensor:
        """``(N,)`` int64 clusters of the fitted embedding into ``n_clusters`` (2 ..
        ``embedding_.shape[1]``), e.g. the coarse split beside the eigengap's choice.

        Raises:
            InvalidParameterError: ``n_clusters`` outside that range.
        """
        self._check_fitted()
        high = int(self.embedding_.shape[1])
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) \
                or not 2 <= n_clusters <= high:
            raise InvalidParameterError(
                f"SpRAy.cluster(): n_clusters must be an int in [2, {high}]; got "
                f"{n_clusters!r}.")
        return self._kmeans(n_clusters)
