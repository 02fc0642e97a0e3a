"""Contact sheet of preprocessed mammograms: one PNG grid with breast and lesion mask outlines.

Reads a datalist JSON (the bundle's format; ``--split`` picks a split, default all) or a folder of images,
runs :func:`glam_bundle.transforms.default_preprocessing` on each item and draws the downsampled
standardised window with the breast mask (cyan), benign (green) and malignant (red) lesion outlines (the
colours of every bundle figure, :mod:`glam_bundle.figure_style`; a legend under the grid names them). Items that
fail show their error instead. The PNG is written atomically.

Examples::

    python scripts/contact_sheet.py datalist.json sheet.png --split test
    python scripts/contact_sheet.py ../shared/data/mini_ddsm ddsm.png --recursive        # film/spacing "auto"
    python scripts/contact_sheet.py ../shared/data/mini_mias/images mias.png --film true --spacing 0.2

Each tile's title names the image and what was decided, with the rule that decided it: film/digital
(``film_source``), spacing (``spacing_source``), view and laterality (``view_source``/``laterality_source``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from monai.transforms import Compose, DeleteItemsd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from glam_bundle.data.datalist import datalist_from_folder, load_datalist  # noqa: E402
from glam_bundle.data.errors import BadInputError  # noqa: E402
from glam_bundle.constants import MODEL_FRAME_SIZE  # noqa: E402
from glam_bundle.transforms import default_preprocessing  # noqa: E402
from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.figure_style import (  # noqa: E402
    BREAST_COLOUR,
    CLASS_COLOURS,
    FLAG_COLOUR,
    IMAGE_CMAP,
)

OUTLINE_COLOURS = {"breast": BREAST_COLOUR, "benign": CLASS_COLOURS[0], "malignant": CLASS_COLOURS[1]}
OUTLINE_LABELS = {"breast": "breast mask", "benign": "benign lesion (ground truth)",
                  "malignant": "malignant lesion (ground truth)"}
TILE_TITLE_SIZE = 6  # tiles are small: their three-line titles, the sheet's title and legend use a smaller font


def load_items(source: str | os.PathLike, split: str | None = None, recursive: bool = False) -> list[dict]:
    """Items of a datalist JSON (one split or all) or of every image in a folder."""
    source = Path(source)
    if source.is_dir():
        return datalist_from_folder(source, recursive=recursive)
    return load_datalist(source, split)


def downsample(tensor: torch.Tensor, factor: int, reduce: str = "mean") -> np.ndarray:
    """(C, H, W) -> (C, H/factor, W/factor): mean for images, max for masks (small lesions stay visible)."""
    batch = tensor.float()[None]
    pooled = F.avg_pool2d(batch, factor) if reduce == "mean" else F.max_pool2d(batch, factor)
    return pooled[0].numpy()


def tile_title(item: dict, out: dict | None) -> str:
    name = Path(item["image"]).name
    if out is None:
        return name
    meta = out["image"].meta
    label = out["label"].tolist()
    label_text = "/".join("?" if v < 0 else str(int(v)) for v in label)
    flip = " flip" if bool(meta.get("flipped", False)) else ""
    kind = "film" if bool(meta.get("film", False)) else "digital"
    spacing = meta.get("source_spacing_mm", [0, 0])
    spacing = f"{float(spacing[0]):.3g}mm" if float(spacing[0]) > 0 else "?mm"
    return (
        f"{name[-30:]}\n{out.get('view', '?')}({meta.get('view_source', '?')}) "
        f"{out.get('laterality', '?')}({meta.get('laterality_source', '?')}){flip} B/M {label_text}\n"
        f"{kind}({meta.get('film_source', '?')}) {spacing}({meta.get('spacing_source', '?')})"
    )


def draw_tile(axis, item: dict, out: dict | None, error: str | None, factor: int) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(tile_title(item, out), fontsize=TILE_TITLE_SIZE)
    if out is None:
        axis.text(0.5, 0.5, error or "failed", ha="center", va="center", wrap=True, fontsize=TILE_TITLE_SIZE,
                  color=FLAG_COLOUR, transform=axis.transAxes)
        return
    image = downsample(out["image"], factor)[0]
    low, high = np.percentile(image, [1, 99.5])
    axis.imshow(image, cmap=IMAGE_CMAP, vmin=low, vmax=high if high > low else low + 1)
    outlines = [("breast", downsample(out["breast_mask"], factor, "max")[0])]
    mask = downsample(out["mask"], factor, "max")
    outlines += [("benign", mask[0]), ("malignant", mask[1])]
    for name, plane in outlines:
        if plane.any() and not plane.all():
            axis.contour(plane, levels=[0.5], colors=OUTLINE_COLOURS[name], linewidths=0.8)


def contact_sheet(
    source: str | os.PathLike,
    output: str | os.PathLike,
    split: str | None = None,
    film: bool | str = "auto",
    spacing: float | str | None = "auto",
    image_size: tuple[int, int] = MODEL_FRAME_SIZE,
    columns: int = 6,
    max_images: int = 48,
    factor: int = 16,
    recursive: bool = False,
) -> Path:
    """Preprocess the items of ``source`` and write the grid PNG to ``output`` (atomically).

    Returns:
        the output path.
    """
    items = load_items(source, split, recursive)[:max_images]
    chain = default_preprocessing(image_size=image_size, film=film, spacing=spacing)
    transform = Compose([t for t in chain.transforms if not isinstance(t, DeleteItemsd)])  # keep the breast mask
    rows = max(1, -(-len(items) // columns))
    tile_h = 2.6 * image_size[0] / max(image_size)
    tile_w = 2.6 * image_size[1] / max(image_size)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * tile_w, rows * (tile_h + 0.4)), squeeze=False)
    for axis in axes.flat[len(items):]:
        axis.axis("off")
    for axis, item in zip(axes.flat, items):
        try:
            out, error = transform(dict(item)), None
        except BadInputError as exc:
            out, error = None, str(exc)
        except Exception as exc:  # MONAI wraps transform errors; show the root cause on the tile
            cause = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            out, error = None, f"{type(cause).__name__}: {cause}"
        draw_tile(axis, item, out, error, factor)
    handles = [Line2D([], [], color=OUTLINE_COLOURS[name], lw=1.5, label=label)
               for name, label in OUTLINE_LABELS.items()]
    figure.suptitle("Preprocessed images. Tile titles: name; view, laterality, benign/malignant labels (? unknown);\n"
                    "film or digital, pixel spacing; in brackets the rule that decided each",
                    fontsize=TILE_TITLE_SIZE + 1)
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=TILE_TITLE_SIZE + 1,
                  frameon=False)
    height = figure.get_figheight()  # margins in inches: the legend below, the two-line title above
    figure.tight_layout(rect=(0, 0.3 / height, 1, 1 - 0.4 / height))

    output = Path(output)
    try:
        with atomic_output(output) as temp:
            figure.savefig(temp, dpi=100, format="png")
    finally:
        plt.close(figure)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="datalist JSON or image folder")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--split", default=None, help="datalist split (default: all splits)")
    parser.add_argument("--film", default="auto", help='"auto" (default: per image), true or false')
    parser.add_argument(
        "--spacing", default="auto", help='"auto" (default: per image), a pixel spacing in mm, or "none"'
    )
    parser.add_argument("--image-size", type=int, nargs=2, default=list(MODEL_FRAME_SIZE), metavar=("H", "W"))
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--max-images", type=int, default=48)
    parser.add_argument("--factor", type=int, default=16, help="downsampling factor of the tiles")
    parser.add_argument("--recursive", action="store_true", help="list sub-folders of an image folder")
    args = parser.parse_args(argv)
    if args.spacing.lower() == "none":
        args.spacing = None
    elif args.spacing.lower() != "auto":
        args.spacing = float(args.spacing)
    path = contact_sheet(
        args.source, args.output, args.split, args.film, args.spacing, tuple(args.image_size),
        args.columns, args.max_images, args.factor, args.recursive,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
