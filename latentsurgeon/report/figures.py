"""Matplotlib figures the reports embed (headless backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def image_grid(images: torch.Tensor, titles: Sequence[str], *, masks: torch.Tensor | None = None,
               ncols: int = 8) -> Any:
    """Show ``images (N, 1, H, W)`` in a grid; ``masks (N, H, W)`` are outlined in red."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.45 * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= n:
            continue
        ax.imshow(images[index, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        if masks is not None and masks[index].any():
            ax.contour(masks[index].float().cpu(), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(titles[index], fontsize=7)
    fig.tight_layout()
    return fig


def attribution_rows(images: torch.Tensor, attributions: Mapping[str, torch.Tensor], *,
                     masks: torch.Tensor | None = None) -> Any:
    """One row per model: ``attributions[name] (N, 1, H, W)`` as heatmaps beside the inputs."""
    names = list(attributions)
    n = len(images)
    fig, axes = plt.subplots(len(names) + 1, n, figsize=(1.25 * n, 1.35 * (len(names) + 1)),
                             squeeze=False)
    for col in range(n):
        axes[0, col].imshow(images[col, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        if masks is not None:
            axes[0, col].contour(masks[col].float().cpu(), levels=[0.5], colors="red",
                                 linewidths=0.8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for row, name in enumerate(names, start=1):
        heat = attributions[name][:, 0].abs().cpu()
        for col in range(n):
            scale = float(heat[col].max()) or 1.0
            axes[row, col].imshow(heat[col] / scale, cmap="inferno", vmin=0, vmax=1)
            if masks is not None:
                axes[row, col].contour(masks[col].float().cpu(), levels=[0.5], colors="cyan",
                                       linewidths=0.6)
        axes[row, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def layer_quality(layers: Sequence[str], series: Mapping[str, Sequence[float]], *,
                  ylabel: str = "held-out score", chance: float | None = 0.5) -> Any:
    """Line plot of per-layer scores (one line per series)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, values in series.items():
        ax.plot(range(len(layers)), values, marker="o", label=label)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(range(len(layers)), layers)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def method_bars(methods: Sequence[str], clean: Sequence[float], poisoned: Sequence[float]) -> Any:
    """Grouped bars: clean vs poisoned accuracy per method."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    xs = range(len(methods))
    ax.bar([x - 0.2 for x in xs], clean, width=0.4, label="clean test")
    ax.bar([x + 0.2 for x in xs], poisoned, width=0.4, label="poisoned test")
    ax.set_xticks(list(xs), methods)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
