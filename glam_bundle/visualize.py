"""Figures in the style of the GLAM paper's figure 1: input with ground truth, selected patches, and the
benign and malignant saliency overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.constants import CLASS_NAMES  # noqa: E402

CLASS_COLOURS = ("#2ca02c", "#d62728")


def _alpha_ramp(name: str) -> ListedColormap:
    """Colour map whose opacity grows with the value, so low saliency leaves the mammogram visible."""
    colours = matplotlib.colormaps[name](np.linspace(0, 1, 256))
    colours[:, 3] = np.linspace(0, 0.8, 256)
    return ListedColormap(colours)


def save_glam_figure(
    path: str | Path,
    image: np.ndarray,
    saliency: np.ndarray,
    patch_locations: np.ndarray,
    crop_size: Sequence[int] = (512, 512),
    mask: np.ndarray | None = None,
    title: str = "",
    predictions: Sequence[float] | None = None,
    step: int = 4,
) -> Path:
    """Write a 4-panel PNG (atomically).

    Args:
        path: output PNG.
        image: (H, W) preprocessed image.
        saliency: (2, H, W) combined saliency S_c (benign, malignant).
        patch_locations: (K, 2) upper-left (row, col) of the selected patches.
        crop_size: patch size (rows, cols).
        mask: optional (2, H, W) ground-truth masks (benign, malignant).
        title: figure title (e.g. the image name).
        predictions: optional (benign, malignant) probabilities shown in the panel titles.
        step: display subsampling factor (a 2944×1920 image is drawn at 736×480).
    """
    shown = image[::step, ::step]
    extent = (0, image.shape[1], image.shape[0], 0)  # keep axes in full-resolution pixel units
    fig, axes = plt.subplots(1, 4, figsize=(12, 5.2), dpi=100)
    for ax in axes:
        ax.imshow(shown, cmap="gray", extent=extent, interpolation="nearest")
        ax.set_axis_off()
    axes[0].set_title("input" + (" + ground truth" if mask is not None else ""), fontsize=9)
    if mask is not None:
        for channel, colour in enumerate(CLASS_COLOURS):
            if mask[channel].any():
                axes[0].contour(mask[channel][::step, ::step] > 0.5, levels=[0.5], colors=[colour], extent=extent,
                                origin="upper", linewidths=1.0)
    axes[1].set_title("selected patches", fontsize=9)
    for row, col in np.asarray(patch_locations).reshape(-1, 2):
        axes[1].add_patch(Rectangle((col, row), crop_size[1], crop_size[0], fill=False, edgecolor="yellow", lw=1.2))
    for channel, (name, cmap) in enumerate(zip(CLASS_NAMES, ("Greens", "Reds")), start=0):
        ax = axes[2 + channel]
        ax.imshow(saliency[channel][::step, ::step], cmap=_alpha_ramp(cmap), vmin=0, vmax=1, extent=extent,
                  interpolation="nearest")
        label = f"{name} saliency"
        if predictions is not None:
            label += f" (p={predictions[channel]:.3f})"
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
