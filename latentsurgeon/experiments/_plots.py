"""The experiments' plots: curves over seeds with their t-intervals, correlation heatmaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentsurgeon.experiments._stats import mean_interval
from latentsurgeon.report import figures  # noqa: F401  (selects the headless backend)

__all__ = ["curves", "heatmap"]


def curves(ax: Any, x: Sequence[float], series: Mapping[str, np.ndarray], *,
           dashed: Sequence[str] = (), styles: Mapping[str, str] | None = None) -> None:
    """One line per series (``(n_seeds, len(x))``): the mean over seeds, and its 95%
    t-interval as a band when there are several seeds."""
    for label, values in series.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1, len(x))
        summary = [mean_interval(values[:, i]) for i in range(len(x))]
        mean = np.array([s.mean for s in summary])
        linestyle = (styles or {}).get(label, "--" if label in dashed else "-")
        (line,) = ax.plot(x, mean, marker="o", markersize=3, linestyle=linestyle, label=label)
        if values.shape[0] > 1:
            ax.fill_between(x, [s.low for s in summary], [s.high for s in summary],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ax.grid(alpha=0.3)


def heatmap(ax: Any, matrix: np.ndarray, labels: Sequence[str], title: str,
            annotations: Sequence[Sequence[str]] | None = None) -> Any:
    """A correlation matrix in ``[-1, 1]`` with its values written in the cells."""
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            text = annotations[i][j] if annotations is not None else f"{matrix[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6,
                    color="white" if abs(matrix[i, j]) > 0.6 else "black")
    ax.set_title(title, fontsize=9)
    return image
