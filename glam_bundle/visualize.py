"""The GLAM figure: inference figures and TensorBoard images (style constants: :mod:`glam_bundle.figure_style`).

:func:`glam_figure` builds a matplotlib ``Figure``; :func:`save_figure_png` writes one atomically;
:func:`save_glam_figure` does both (the inference writer's call). Layout, left to right:

- the input image with the ground-truth lesion outlines (benign green, malignant red) and the selected patch
  boxes (gold, numbered when more than one). A patch lying mostly in the black background outside the breast
  (:func:`breast_fraction` below ``outside_threshold``) is drawn as an orange dashed box labelled "outside the
  breast", and its legend entry says so with its share of breast tissue. The pectoral muscle is not flagged:
  no detector tried here found it reliably (see :func:`breast_fraction`);
- one column per saliency map given: S_g (global), S_l (local, only when given), S_c (combined), the benign
  channel (green overlay) above the malignant one (red overlay), the input panel two rows tall beside them;
  with a single map (e.g. the global-only stage's S_g) one row: input, benign, malignant. Every map panel has
  its colour bar on the fixed 0–1 scale, labelled with the class, and repeats that class's lesion outlines and
  the patches;
- the title: image name, the image-level labels (1 = lesion present) and the predicted probabilities (ŷ);
  below the panels a legend naming the outline colours and the patch boxes.

Maps of any resolution are drawn over the whole image (S_g on its 184×120 grid, S_c at 2944×1920), and large
arrays are drawn subsampled (at most ``max_rows`` rows), so that a 2944×1920 case takes well under a second.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.constants import CLASS_NAMES  # noqa: E402
from glam_bundle.networks.global_network import breast_mask_from_image  # noqa: E402
from glam_bundle.figure_style import (  # noqa: E402
    CLASS_COLOUR_MAPS,
    CLASS_COLOURS,
    FLAG_COLOUR,
    IMAGE_CMAP,
    LABEL_SIZE,
    LEGEND_SIZE,
    NOTE_SIZE,
    PANEL_TITLE_SIZE,
    PATCH_COLOUR,
    SALIENCY_RANGE,
    SALIENCY_TICKS,
    TICK_SIZE,
    TITLE_SIZE,
)

__all__ = [
    "CLASS_COLOURS",
    "PATCH_COLOUR",
    "MAP_TITLES",
    "OUTSIDE_BREAST_NOTE",
    "display_step",
    "downsample",
    "breast_fraction",
    "patch_notes",
    "colour_bar_label",
    "legend_title",
    "format_title",
    "glam_figure",
    "save_figure_png",
    "save_glam_figure",
]

# Saliency maps in drawing order: argument name -> panel title.
MAP_TITLES = {
    "saliency_global": "global saliency S_g",
    "saliency_local": "local saliency S_l",
    "saliency": "combined saliency S_c",
}
# What each map is, for the legend's title (a reader without the docs learns what the overlays show).
MAP_EXPLANATIONS = {
    "saliency_global": "S_g from the global module",
    "saliency_local": "S_l from the local module, inside the patches only",
    "saliency": "S_c combining S_g and S_l",
}
OUTSIDE_BREAST_NOTE = "outside the breast"  # text of the note (tests and readers search for it)
PREDICTION_NAMES = {"y_global": "ŷ_g (global module)", "y_local": "ŷ_l (local module)",
                    "y_fusion": "ŷ_f (fusion)"}
LABELS_PREFIX = "true labels (1 = lesion present)"
_OUTLINE = [patheffects.withStroke(linewidth=2.6, foreground="white")]  # outlines readable on any background


def _alpha_ramp(name: str) -> ListedColormap:
    """Overlay colour map: the saturated half of ``name`` ("Greens", "Reds") with an opacity that grows with the
    value, so low saliency leaves the mammogram visible and high saliency covers it in the class colour."""
    values = np.linspace(0, 1, 256)
    colours = matplotlib.colormaps[name](0.45 + 0.5 * values)
    colours[:, 3] = 0.9 * values**0.7
    return ListedColormap(colours, name=f"{name}_alpha")


def legend_title(keys: Sequence[str], patches: bool = False) -> str | None:
    """What the saliency overlays (and the patch boxes, with ``patches``) show, for the legend's title; None
    with neither."""
    parts = []
    if keys:
        parts.append("saliency overlays: how strongly each pixel points to a lesion of the panel's class (0–1; "
                     + "; ".join(MAP_EXPLANATIONS[key] for key in MAP_TITLES if key in keys) + ")")
    if patches:
        parts.append("boxes: the patches selected for the local module's closer look")
    return "\n".join(parts) or None


def colour_bar_label(key: str, class_name: str) -> str:
    """Label of a saliency panel's colour bar: the class and the map, and what the scale means."""
    symbol = MAP_TITLES[key].rsplit(" ", 1)[-1]
    return f"{class_name} saliency {symbol} (0 = none, 1 = highest)"


def display_step(height: int, max_rows: int = 736) -> int:
    """Subsampling factor that draws ``height`` rows as at most ``max_rows`` (4 for 2944 rows)."""
    return max(1, math.ceil(height / max_rows))


def downsample(array: np.ndarray, step: int, reduce: str = "stride") -> np.ndarray:
    """Subsample the last two axes by ``step``: ``"stride"`` keeps every step-th pixel (images, maps),
    ``"max"`` takes the maximum of each step×step block (masks: small lesions stay visible)."""
    array = np.asarray(array)
    if step <= 1:
        return array
    if reduce == "stride":
        return array[..., ::step, ::step]
    if reduce != "max":
        raise ValueError(f"reduce must be 'stride' or 'max', got {reduce!r}")
    height, width = array.shape[-2:]
    pad = ((0, 0),) * (array.ndim - 2) + ((0, -height % step), (0, -width % step))
    padded = np.pad(array, pad, mode="edge")
    shape = padded.shape[:-2] + (padded.shape[-2] // step, step, padded.shape[-1] // step, step)
    return padded.reshape(shape).max(axis=(-3, -1))


def breast_fraction(
    image: np.ndarray,
    patch_locations: np.ndarray,
    crop_size: Sequence[int],
    image_size: Sequence[int] | None = None,
) -> np.ndarray:
    """Fraction of each patch's pixels that show breast, (K,) in [0, 1].

    Background is the black outside the breast, which stays the image's minimum after standardisation (the
    preprocessing sets every pixel outside the breast to one value): pixels within 0.1% of the intensity range
    of the minimum count as background (the rule the network applies with ``breast_mask_from_image``).

    The pectoral muscle is not measured. A detector was tried (Otsu threshold of the upper chest-wall quadrant
    of an MLO view, the bright component in the corner, a straight-edged triangle fitted to it, a contrast
    check): on 32 MLO images (24 mini-MIAS, 6 mini-DDSM, 2 phantoms, 736×480 frame) it accepted none at a
    residual that would have kept dense tissue out, so a patch on the muscle is drawn without comment.

    Args:
        image: (h, w) image, possibly subsampled.
        patch_locations: (K, 2) upper-left (row, col) in full-resolution pixels.
        crop_size: patch size (rows, cols) in full-resolution pixels.
        image_size: full-resolution (H, W); None: ``image.shape``.
    """
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape
    full_h, full_w = image_size if image_size is not None else (height, width)
    breast = breast_mask_from_image(torch.from_numpy(image)[None, None])[0, 0].numpy() > 0
    sy, sx = height / full_h, width / full_w
    fractions = []
    for row, col in np.asarray(patch_locations, dtype=float).reshape(-1, 2):
        r0, c0 = max(int(round(row * sy)), 0), max(int(round(col * sx)), 0)
        r1 = min(max(int(round((row + crop_size[0]) * sy)), r0 + 1), height)
        c1 = min(max(int(round((col + crop_size[1]) * sx)), c0 + 1), width)
        region = breast[r0:r1, c0:c1]
        fractions.append(float(region.mean()) if region.size else 0.0)
    return np.asarray(fractions, dtype=float)


def patch_notes(
    image: np.ndarray,
    patch_locations: np.ndarray,
    crop_size: Sequence[int],
    image_size: Sequence[int] | None = None,
    outside_threshold: float = 0.5,
) -> list[str]:
    """One note per patch, "" for an unremarkable one, else "outside the breast (12% breast tissue)" for a patch
    with less than ``outside_threshold`` breast tissue (:func:`breast_fraction`; arguments as there)."""
    fractions = breast_fraction(image, patch_locations, crop_size, image_size)
    return [f"{OUTSIDE_BREAST_NOTE} ({fraction:.0%} breast tissue)" if fraction < outside_threshold else ""
            for fraction in fractions]


def _label_text(value: float) -> str:
    return "unknown" if value is None or value < 0 else str(int(round(float(value))))


def format_title(
    name: str = "",
    labels: Sequence[float] | None = None,
    predictions: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    width: int = 120,
) -> str:
    """Figure title: the image name, then "true labels (1 = lesion present): benign 0, malignant 1  |  predicted
    probability ŷ_g (global module): benign 0.123, malignant 0.874" (one "predicted" part per entry when
    ``predictions`` is a dict such as {"y_global": ..., "y_fusion": ...}; a plain sequence reads "predicted
    probability ŷ"), wrapped between parts to lines of at most ``width`` characters. Labels < 0 read
    "unknown"."""
    parts = []
    if labels is not None:
        parts.append(LABELS_PREFIX + ": " + ", ".join(f"{c} {_label_text(v)}" for c, v in zip(CLASS_NAMES, labels)))
    if predictions is not None:
        entries = predictions.items() if isinstance(predictions, Mapping) else [("", predictions)]
        for key, values in entries:
            source = PREDICTION_NAMES.get(key, f"ŷ ({key})" if key else "ŷ")
            parts.append(f"predicted probability {source}: "
                         + ", ".join(f"{c} {float(v):.3f}" for c, v in zip(CLASS_NAMES, values)))
    body: list[str] = []  # the parts, several to a line while they fit
    for part in parts:
        if body and len(body[-1]) + 5 + len(part) <= width:
            body[-1] += "  |  " + part
        else:
            body.append(part)
    return "\n".join(([name] if name else []) + body)


def _draw_outlines(ax, mask, classes, extent, linewidth=1.3) -> None:
    for channel in classes:
        if mask[channel].any():
            ax.contour(mask[channel] > 0.5, levels=[0.5], colors=[CLASS_COLOURS[channel]], extent=extent,
                       origin="upper", linewidths=linewidth).set(path_effects=_OUTLINE)


def _patch_box(xy=(0, 0), width=1, height=1, flagged=False, linewidth=1.4, **kwargs) -> Rectangle:
    """A selected patch's box: gold, or orange dashed when flagged (also the legend's handles)."""
    return Rectangle(xy, width, height, fill=False, edgecolor=FLAG_COLOUR if flagged else PATCH_COLOUR,
                     lw=linewidth, linestyle="--" if flagged else "-", **kwargs)


def _draw_patches(ax, locations, crop_size, numbered, notes, linewidth=1.4, label_notes=False) -> None:
    width, height = abs(ax.get_xlim()[1] - ax.get_xlim()[0]), abs(ax.get_ylim()[0] - ax.get_ylim()[1])
    stroke = [patheffects.withStroke(linewidth=2, foreground="black")]
    for k, ((row, col), note) in enumerate(zip(locations, notes), start=1):
        box = _patch_box((col, row), crop_size[1], crop_size[0], flagged=bool(note), linewidth=linewidth)
        box.set_path_effects([patheffects.withStroke(linewidth=linewidth + 1.2, foreground="black")])
        ax.add_patch(box)
        colour = FLAG_COLOUR if note else PATCH_COLOUR
        if numbered:
            ax.text(col + 8, row + 8, str(k), color=colour, fontsize=NOTE_SIZE, fontweight="bold", va="top",
                    ha="left", path_effects=stroke)
        if note and label_notes:  # a short label at the box; the legend gives the share of breast tissue
            above = row >= 0.1 * height  # above the box, or below it when the box is at the top edge
            right = col + crop_size[1] / 2 > width / 2  # aligned with the box's edge nearer the middle
            ax.text(col + crop_size[1] if right else col,
                    row - 0.01 * height if above else row + crop_size[0] + 0.01 * height,
                    f"patch {k}: {OUTSIDE_BREAST_NOTE}" if numbered else f"patch {OUTSIDE_BREAST_NOTE}",
                    color=colour, fontsize=NOTE_SIZE, fontweight="bold", ha="right" if right else "left",
                    va="bottom" if above else "top", gid="outside-breast-note", path_effects=stroke)


def glam_figure(
    image: np.ndarray,
    saliency_global: np.ndarray | None = None,
    saliency: np.ndarray | None = None,
    saliency_local: np.ndarray | None = None,
    patch_locations: np.ndarray | None = None,
    crop_size: Sequence[int] = (512, 512),
    mask: np.ndarray | None = None,
    name: str = "",
    labels: Sequence[float] | None = None,
    predictions: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    image_size: Sequence[int] | None = None,
    step: int | None = None,
    max_rows: int = 736,
    outside_threshold: float = 0.5,
    dpi: int = 100,
) -> Figure:
    """Build the GLAM figure of one case (see the module docstring for the layout).

    Args:
        image: (h, w) preprocessed (standardised) image; it may already be subsampled, see ``image_size``.
        saliency_global: (2, h', w') S_g (benign, malignant) at any resolution, or None.
        saliency: (2, h', w') S_c, or None.
        saliency_local: (2, h', w') S_l, or None (drawn only when given).
        patch_locations: (K, 2) upper-left (row, col) of the selected patches, in full-resolution pixels.
        crop_size: patch size (rows, cols) in full-resolution pixels.
        mask: (2, h', w') ground-truth lesion masks (benign, malignant), or None.
        name: image name, first line of the title.
        labels: (benign, malignant) image-level labels (< 0: unknown), or None.
        predictions: (benign, malignant) probabilities, or a dict {"y_global": (b, m), ...}, or None.
        image_size: full-resolution (H, W) that coordinates refer to; None: ``image.shape``.
        step: subsampling of arrays with ``image_size`` rows; None: the smallest that draws at most ``max_rows``.
        max_rows: see ``step``.
        outside_threshold: a patch with less than this fraction of breast pixels gets the "outside the breast"
            note.
        dpi: figure resolution.

    Returns:
        the Figure (not registered with pyplot; write it with :func:`save_figure_png` or
        ``SummaryWriter.add_figure``).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    full_h, full_w = (int(v) for v in (image_size if image_size is not None else image.shape))
    extent = (0, full_w, full_h, 0)  # every array is drawn in full-resolution pixel units
    step = step or display_step(full_h, max_rows)

    def shown(array, reduce="stride"):
        array = np.asarray(array, dtype=np.float32)
        factor = max(1, round(step * array.shape[-2] / full_h))
        return downsample(array, factor, reduce)

    image_shown = shown(image)
    mask_shown = shown(mask, "max") if mask is not None else None
    maps = {key: np.asarray(value, dtype=np.float32)
            for key, value in (("saliency_global", saliency_global), ("saliency_local", saliency_local),
                               ("saliency", saliency)) if value is not None}
    locations = np.zeros((0, 2)) if patch_locations is None else np.asarray(patch_locations, float).reshape(-1, 2)
    numbered = len(locations) > 1

    # Geometry. Two maps or more: the input panel is two rows tall, each map has a column (benign above,
    # malignant below). At most one map: one row, input | benign | malignant. Map panels carry a colour bar.
    aspect = full_w / full_h
    n_maps = len(maps)
    stacked = n_maps >= 2
    panel_h = 2.9 if stacked else 4.2
    panel_w = panel_h * aspect
    if stacked:
        fig_w = 2 * panel_w + 0.6 + n_maps * (panel_w + 0.75)
        fig_h = 2 * panel_h + 2.0
    else:
        fig_w = (1 + 2 * n_maps) * (panel_w + 0.75)
        fig_h = panel_h + 1.7
    fig = Figure(figsize=(max(fig_w, 6.5), fig_h), dpi=dpi, layout="constrained")
    if stacked:
        grid = fig.add_gridspec(2, 1 + n_maps, width_ratios=[2 * panel_w + 0.3] + [panel_w + 0.6] * n_maps)
        input_cell = grid[:, 0]
        map_cells = [[grid[channel, column] for channel in range(len(CLASS_NAMES))]
                     for column in range(1, 1 + n_maps)]
    else:
        grid = fig.add_gridspec(1, 1 + 2 * n_maps)
        input_cell = grid[0, 0]
        map_cells = [[grid[0, 1 + channel] for channel in range(len(CLASS_NAMES))]] if n_maps else []

    # Input panel: ground truth, patches (flagged ones dashed orange and labelled), legend.
    notes = patch_notes(image, locations, crop_size, (full_h, full_w), outside_threshold) if len(locations) else []
    ax = fig.add_subplot(input_cell)
    ax.imshow(image_shown, cmap=IMAGE_CMAP, extent=extent, interpolation="antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    if mask_shown is not None:
        _draw_outlines(ax, mask_shown, range(len(CLASS_NAMES)), extent, linewidth=1.6)
    _draw_patches(ax, locations, crop_size, numbered, notes, linewidth=1.8, label_notes=True)
    ax.set_title("input" + (" + ground truth" if mask is not None else " (no ground-truth mask)")
                 + (" + selected patch" + ("es" if numbered else "") if len(locations) else ""),
                 fontsize=PANEL_TITLE_SIZE)
    handles = []
    if mask is not None:
        handles += [Line2D([], [], color=colour, lw=2, path_effects=_OUTLINE,
                           label=f"{cls} lesion outline (ground truth)")
                    for cls, colour in zip(CLASS_NAMES, CLASS_COLOURS)]
    size = f"{int(crop_size[0])}×{int(crop_size[1])} px"
    if len(locations) and not any(notes):
        handles.append(_patch_box(linewidth=1.8, label=f"selected patch{'es' if numbered else ''} ({size})"))
    elif len(locations):  # one entry per patch, the flagged ones with their note
        for k, note in enumerate(notes, start=1):
            handles.append(_patch_box(flagged=bool(note), linewidth=1.8,
                                      label=f"selected patch{f' {k}' if numbered else ''} ({size})"
                                      + (f": {note}" if note else "")))
    if handles or maps:
        # outlines in the first column, patches in the second (or all in one row when that is short); the title
        # says what the overlays show
        title = legend_title(list(maps), patches=len(locations) > 0)
        if title:  # wrapped to the figure's width (about 14 characters of the legend's font per inch)
            title = "\n".join(textwrap.fill(line, int(max(fig_w, 6.5) * 14)) for line in title.split("\n"))
        if not handles:  # nothing to name but the overlays: their explanation is the only entry, without a handle
            handles, title = [Line2D([], [], lw=0, label=title)], None
        columns = 2 if mask is not None and len(handles) > 3 else len(handles)
        fig.legend(handles=handles, loc="outside lower center", ncol=columns, fontsize=LEGEND_SIZE, frameon=False,
                   title=title, title_fontsize=LEGEND_SIZE, handlelength=None if title or handles[0].get_lw() else 0)

    # Saliency panels: one column per map, benign on top, malignant below; colour bars on the fixed 0-1 scale.
    for cells, (key, values) in zip(map_cells, maps.items()):
        if values.ndim != 3 or values.shape[0] != len(CLASS_NAMES):
            raise ValueError(f"{key} must be ({len(CLASS_NAMES)}, H, W), got shape {values.shape}")
        values_shown = shown(values)
        for channel, cls in enumerate(CLASS_NAMES):
            ax = fig.add_subplot(cells[channel])
            ax.imshow(image_shown, cmap=IMAGE_CMAP, extent=extent, interpolation="antialiased")
            overlay = ax.imshow(values_shown[channel], cmap=_alpha_ramp(CLASS_COLOUR_MAPS[channel]),
                                vmin=SALIENCY_RANGE[0], vmax=SALIENCY_RANGE[1], extent=extent,
                                interpolation="nearest")
            overlay.set_gid(f"{key}:{cls}")
            if mask_shown is not None:
                _draw_outlines(ax, mask_shown, [channel], extent, linewidth=1.0)
            _draw_patches(ax, locations, crop_size, numbered, notes, linewidth=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{MAP_TITLES[key]}: {cls}", fontsize=PANEL_TITLE_SIZE, color=CLASS_COLOURS[channel])
            bar = fig.colorbar(overlay, ax=ax, fraction=0.08, pad=0.02, ticks=list(SALIENCY_TICKS))
            bar.ax.tick_params(labelsize=TICK_SIZE)
            bar.ax.set_facecolor("#8c8c8c")  # the bar shows the overlay as it looks on breast tissue
            bar.set_label(colour_bar_label(key, cls), fontsize=LABEL_SIZE, color=CLASS_COLOURS[channel])
    title = format_title(name, labels, predictions, width=int(max(fig_w, 6.5) * 11))
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def save_figure_png(fig: Figure, path: str | Path) -> Path:
    """Write a figure as a PNG, atomically (a reader never sees a half-written file)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)  # no-op for Figures built without pyplot; frees pyplot figures
    return path


def save_glam_figure(
    path: str | Path,
    image: np.ndarray,
    saliency: np.ndarray | None = None,
    patch_locations: np.ndarray | None = None,
    crop_size: Sequence[int] = (512, 512),
    mask: np.ndarray | None = None,
    title: str = "",
    predictions: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    step: int | None = None,
    *,
    saliency_global: np.ndarray | None = None,
    saliency_local: np.ndarray | None = None,
    labels: Sequence[float] | None = None,
    **kwargs,
) -> Path:
    """Build :func:`glam_figure` and write it as a PNG atomically (the arguments of 0.1.0 keep their order:
    ``title`` is the image name, ``saliency`` S_c).

    Returns:
        ``path``.
    """
    fig = glam_figure(image, saliency_global=saliency_global, saliency=saliency, saliency_local=saliency_local,
                      patch_locations=patch_locations, crop_size=crop_size, mask=mask, name=title, labels=labels,
                      predictions=predictions, step=step, **kwargs)
    return save_figure_png(fig, path)
