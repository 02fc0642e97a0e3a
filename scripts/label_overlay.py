"""Draw label maps (``<name>_label.png`` of ``--write_label true``, or what MONAI Label returns) over their images.

One panel per image: the image in grey, the label's benign pixels green and malignant pixels red, and the
ground-truth lesion outlines (yellow) where a mask is given. For example::

    python scripts/label_overlay.py --out docs/monailabel_label_example.png \\
        --case out/a.png out/a_label.png masks/a_malignant.png --case out/b.png out/b_label.png masks/b_benign.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.figure_style import CLASS_COLOURS  # noqa: E402


def overlay(ax, image: np.ndarray, label: np.ndarray, mask: np.ndarray | None, title: str) -> None:
    """Image (H, W), label (H, W) with 0/1/2, optional (H, W) bool ground truth, on one axis."""
    ax.imshow(image, cmap="gray")
    colours = np.zeros(label.shape + (4,))
    for value in (1, 2):  # label value c + 1 is class c of CLASS_COLOURS (benign, malignant)
        colours[label == value] = (*matplotlib.colors.to_rgb(CLASS_COLOURS[value - 1]), 0.5)
    ax.imshow(colours)
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="yellow", linewidths=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", action="append", required=True, metavar="FILE",
                        help="IMAGE LABEL [MASK]: one panel; repeatable")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    fig, axes = plt.subplots(1, len(args.case), figsize=(4 * len(args.case), 5.5), squeeze=False)
    for ax, files in zip(axes[0], args.case):
        if len(files) not in (2, 3):
            parser.error(f"--case takes IMAGE LABEL [MASK], got {files}")
        image = np.asarray(Image.open(files[0])).astype(np.float32)
        label = np.asarray(Image.open(files[1]))
        mask = np.asarray(Image.open(files[2])) > 0 if len(files) == 3 else None
        if label.shape != image.shape[:2]:
            parser.error(f"{files[1]}: label {label.shape} is not the image's size {image.shape[:2]}")
        overlay(ax, image, label, mask, f"{Path(files[0]).name}\nlabel map on the image's own pixels")
    handles = [Patch(color=CLASS_COLOURS[0], alpha=0.5, label="label 1: benign"),
               Patch(color=CLASS_COLOURS[1], alpha=0.5, label="label 2: malignant"),
               Patch(edgecolor="yellow", facecolor="none", label="ground-truth lesion outline")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_output(args.out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
