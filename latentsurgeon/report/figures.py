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
                     masks: torch.Tensor | None = None,
                     label: str = "|attribution| / image's max over the rows") -> Any:
    """One row per model: ``attributions[name] (N, 1, H, W)`` as heatmaps beside the inputs.

    Every image (column) shares one scale across the rows, the largest absolute attribution any
    model gives it, so a row that is darker than another really has less attribution there; a
    colour bar shows the scale.
    """
    names = list(attributions)
    n = len(images)
    fig, axes = plt.subplots(len(names) + 1, n, figsize=(1.25 * n + 0.8, 1.35 * (len(names) + 1)),
                             squeeze=False)
    heats = {name: attributions[name][:, 0].abs().cpu() for name in names}
    column_max = torch.stack([h.flatten(1).amax(1) for h in heats.values()]).amax(0)
    column_max = torch.where(column_max > 0, column_max, torch.ones_like(column_max))
    shown = None
    for col in range(n):
        axes[0, col].imshow(images[col, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        if masks is not None:
            axes[0, col].contour(masks[col].float().cpu(), levels=[0.5], colors="red",
                                 linewidths=0.8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for row, name in enumerate(names, start=1):
        heat = heats[name]
        for col in range(n):
            shown = axes[row, col].imshow(heat[col] / column_max[col], cmap="inferno", vmin=0,
                                          vmax=1)
            if masks is not None:
                axes[row, col].contour(masks[col].float().cpu(), levels=[0.5], colors="cyan",
                                       linewidths=0.6)
        axes[row, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes[1:, :].ravel().tolist(), fraction=0.02, pad=0.01)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=6)
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
