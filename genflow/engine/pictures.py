"""What people look at: image grids of samples, scatter plots of 2-D samples."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor


def save_samples(
    samples: Tensor, path: Path, levels: int | None, reference: Tensor | None = None
) -> Path:
    """Images (N, C, H, W) in [0, levels) -> PNG grid; 2-D points (N, 2) -> scatter plot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = samples.detach().cpu()
    if samples.dim() == 4:
        from torchvision.utils import save_image

        images = samples.float() / (levels - 1) if levels else samples.float()
        nrow = max(1, int(math.sqrt(len(images))))
        save_image(images.clamp(0, 1), path, nrow=nrow, padding=1, pad_value=0.35)
        return path
    if samples.dim() == 2 and samples.shape[1] == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 if reference is not None else 1
        fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4), squeeze=False)
        plots = [(samples, "samples")]
        if reference is not None:
            plots.insert(0, (reference.detach().cpu(), "data"))
        for ax, (points, title) in zip(axes[0], plots, strict=True):
            ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=2, alpha=0.5)
            ax.set_title(title)
            ax.set_aspect("equal")
        lim = torch.cat([p for p, _ in plots]).abs().quantile(0.99).item() * 1.1
        for ax in axes[0]:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    raise ValueError(f"cannot draw samples of shape {tuple(samples.shape)}")
