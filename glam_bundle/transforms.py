"""Mammogram preprocessing of the GLAM bundle as MONAI dictionary transforms.

The chain reproduces the original GLAM/NYU pipeline (``glam_reference.md`` §5): breast mask (§5.1 steps 2-5),
left-right orientation so that every breast faces right, crop to the breast bounding box with 50-px buffers
(§5.1), best-centre window of 2944x1920 with the original zero padding rules (§5.2, §5.3) and per-image
standardisation. Scanned film (CBIS-DDSM, MIAS) gets a robust breast mask (Otsu threshold + the largest
component at the chest-wall side), optional background suppression and an optional resampling step to
the NYU pixel scale. Training adds the original crop-position / crop-size noise of the window.

Conventions: images are channel-first ``(C, H, W)`` with row = height index; the model window is
``(H, W) = (2944, 1920)``; masks share the image geometry and are moved with nearest-neighbour/threshold
semantics. Geometry transforms take ``keys`` = the image key and every mask key that must follow it; the
image key (``image_key``) drives the geometry. Items whose ``"mask_frame"`` is ``"model"`` carry lesion
masks already drawn in the preprocessed 2944x1920 frame (the NYU sample segmentation): the geometry
transforms then leave the ``model_frame_keys`` alone (the original never flips or windows masks).

Geometry bookkeeping is written into the image's ``MetaTensor.meta`` so a model-frame pixel can be mapped
back to the raw image: ``"flipped"`` (bool, left-right flip applied), ``"crop_box"`` (rows/cols
``[y0, y1, x0, x1]`` of the crop in the oriented raw frame), ``"best_center"`` ([row, col] in the crop),
``"window_pad"`` ([top, bottom, right] zero padding) and ``"window_box"`` ([top, bottom, left, right] of the
window in the padded crop), ``"resample_factor"`` ([row, col]) and, after noise, ``"noise_box"``.

``default_preprocessing`` assembles the whole chain; ``make_cached_dataset`` wraps it in a
``PersistentDataset`` whose cache key changes with every preprocessing parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import (
    BorderPad,
    CastToTyped,
    Compose,
    EnsureTyped,
    Flip,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    RandomizableTransform,
    Resize,
    SpatialCrop,
)
from monai.transforms.traits import RandomizableTrait
from monai.transforms.transform import Randomizable, Transform
from monai.utils import SpaceKeys, TraceKeys, convert_to_tensor, ensure_tuple

from glam_bundle.data.cache import CACHE_MODES, allow_cached_meta, item_fingerprint, make_cached_dataset, transform_fingerprint  # noqa: F401
from glam_bundle.data.errors import BadInputError

__all__ = [
    "NYU_PIXEL_SPACING_MM",
    "MODEL_WINDOW",
    "BreastMaskd",
    "OrientBreastd",
    "CropBreastd",
    "BestCenterWindowd",
    "RandWindowNoised",
    "ResampleToSpacingd",
    "StackMasksd",
    "MakeLabeld",
    "original_breast_mask",
    "film_breast_mask",
    "otsu_threshold",
    "chest_wall_on_right",
    "crop_geometry",
    "best_center",
    "window_geometry",
    "map_to_model_frame",
    "transform_fingerprint",
    "default_preprocessing",
    "allow_cached_meta",
    "make_cached_dataset",
]

# Pixel spacing assumed for the NYU 2944x1920 model frame. Not stated by the GLAM authors: NYU's screening
# mammograms were acquired on full-field digital units whose detector pitch is 0.07-0.1 mm; 0.1 mm makes the
# 2944-row window 29.4 cm tall (a 24x30 cm detector) and the sample CC views (2023 and 2144 rows) 20-21 cm,
# both anatomically plausible. Treat it as an assumption when resampling other data to the NYU scale.
NYU_PIXEL_SPACING_MM = 0.1
MODEL_WINDOW = (2944, 1920)
_VIEWS = ("CC", "MLO")
_LATERALITIES = ("L", "R")


# ----------------------------------------------------------------------------------------------------------
# helpers on plain arrays
# ----------------------------------------------------------------------------------------------------------


def _plane(img) -> np.ndarray:
    """First channel of a (C, H, W) tensor/array as a numpy (H, W) array (no copy when possible)."""
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.ndim != 3:
        raise ValueError(f"expected a channel-first (C, H, W) image, got shape {arr.shape}.")
    return arr[0]


def _source(img) -> str:
    """File name stored by LoadImage in the meta data, for error messages."""
    meta = getattr(img, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<in-memory image>"))


def _as_meta_tensor(img) -> MetaTensor:
    """The image as a MetaTensor (meta data is where the geometry bookkeeping lives)."""
    out = convert_to_tensor(img, track_meta=True)
    return out if isinstance(out, MetaTensor) else MetaTensor(out)


def _largest_component(mask: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Largest 4-connected component of ``mask`` (ties -> lowest label, as the original's idxmax).

    Args:
        mask: (H, W) bool.
        candidates: optional bool per label (index 0 = background) restricting the choice; when no
            candidate is set, every component is eligible.
    """
    labels, count = ndi.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    if candidates is not None and candidates[1:].any():
        sizes = np.where(candidates, sizes, 0)
    return labels == int(np.argmax(sizes))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the histogram split maximising the between-class variance.

    Written here because MONAI's ``ForegroundMask`` needs scikit-image, which the bundle does not depend on.
    Pixels strictly above the returned value form the bright class.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)[:-1]
    weight_high = values.size - weight_low
    sum_low = np.cumsum(hist * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (np.dot(hist, centres) - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def original_breast_mask(image: np.ndarray, iterations: int = 100) -> np.ndarray:
    """The original crop_mammogram foreground (§5.1 steps 2-5) of a digital mammogram.

    pixel > 0, binary erosion ``iterations`` times with SciPy's default cross, largest 4-connected
    component, binary dilation ``iterations`` times.

    Args:
        image: (H, W) raw intensities (background exactly 0).

    Returns:
        (H, W) bool mask.
    """
    mask = image > 0
    if iterations > 0:
        mask = ndi.binary_erosion(mask, iterations=iterations)
    mask = _largest_component(mask)
    if iterations > 0 and mask.any():
        mask = ndi.binary_dilation(mask, iterations=iterations)
    return mask


def film_breast_mask(image: np.ndarray, chest_wall: str | None = None, smoothing: float = 1 / 200) -> np.ndarray:
    """Breast mask of a scanned film mammogram (non-zero background, film border, burned-in labels).

    1. ``t_high`` = Otsu threshold of the non-zero pixels (zero = padding/no film), separating tissue
       from film background; ``t_low`` = Otsu threshold of the non-zero pixels at or below ``t_high``
       (faint tissue near the skin line vs film background), at least the film background's histogram
       peak + 3 standard deviations of the pixels below the peak.
    2. Seed: components of the opened ``image > t_high`` (opening of radius ``smoothing * min(H, W)``
       cuts thin bridges to labels and removes thin film-border lines); the largest one that reaches
       the chest-wall side of the film (within 2 % of the width from the first/last column where the film
       covers at least half the rows) wins -- labels and markers float in the background, the breast
       leans on the chest wall. ``chest_wall`` ("left"/"right") restricts the side; None accepts both.
    3. Grow the seed through the opened ``image > t_low`` (hysteresis), fill holes and dilate by the
       opening radius so the skin line is kept.

    Args:
        image: (H, W) raw intensities.
        chest_wall: side of the chest wall in this image, or None when unknown.
        smoothing: opening radius as a fraction of the shorter image side.

    Returns:
        (H, W) bool mask (empty when the image has no non-zero pixel).
    """
    image = np.asarray(image, dtype=np.float32)
    nonzero = image > 0
    if not nonzero.any():
        return np.zeros(image.shape, dtype=bool)
    height, width = image.shape
    radius = max(1, round(min(height, width) * smoothing))
    t_high = otsu_threshold(image[nonzero])
    dark = image[nonzero & (image <= t_high)]
    t_low = otsu_threshold(dark) if dark.size else 0.0
    if dark.size:
        # Without faint tissue in the dark class, Otsu splits the film background's own noise: keep t_low
        # above the background peak + 3 standard deviations of its lower (pure noise) half.
        hist, edges = np.histogram(dark, bins=256)
        peak = float(edges[int(np.argmax(hist))] + edges[int(np.argmax(hist)) + 1]) / 2
        below = dark[dark < peak]
        spread = float(np.sqrt(np.mean((below - peak) ** 2))) if below.size else 0.0
        t_low = max(t_low, peak + 3 * spread)

    bright = ndi.binary_opening(image > t_high, iterations=radius)
    labels, count = ndi.label(bright)
    if count == 0:
        return np.zeros(image.shape, dtype=bool)
    film_columns = np.flatnonzero(nonzero.mean(axis=0) >= 0.5)
    if film_columns.size == 0:
        film_columns = np.flatnonzero(nonzero.any(axis=0))
    tolerance = max(2, round(0.02 * width))
    candidates = np.zeros(count + 1, dtype=bool)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        at_left = box[1].start <= film_columns[0] + tolerance
        at_right = box[1].stop - 1 >= film_columns[-1] - tolerance
        candidates[index] = {"left": at_left, "right": at_right}.get(chest_wall, at_left or at_right)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    if candidates[1:].any():
        sizes = np.where(candidates, sizes, 0)
    seed = labels == int(np.argmax(sizes))

    faint = ndi.binary_opening(image > t_low, iterations=radius) | seed
    faint_labels, _ = ndi.label(faint)
    mask = np.isin(faint_labels, np.unique(faint_labels[seed]))
    mask = ndi.binary_fill_holes(mask)
    return ndi.binary_dilation(mask, iterations=radius) & nonzero | mask


def chest_wall_on_right(mask: np.ndarray) -> bool:
    """Content rule for the breast's orientation: is the chest wall on the right of this (H, W) mask?

    The chest wall is a long vertical edge of the breast region while the nipple side tapers to a point,
    so the breast has more pixels in the outer tenth of its bounding box on the chest-wall side.
    """
    columns = np.asarray(mask, dtype=bool).sum(axis=0)
    occupied = np.flatnonzero(columns)
    if occupied.size == 0:
        return False
    first, last = int(occupied[0]), int(occupied[-1])
    band = max(1, (last - first + 1) // 10)
    return int(columns[last - band + 1 : last + 1].sum()) > int(columns[first : first + band].sum())


def crop_geometry(mask: np.ndarray, buffer: int = 50, rightmost_from_ratio: float = 1 / 3, legacy_offset: int = 0) -> dict:
    """crop_mammogram's bounding box and anchor points (§5.1 steps 6-12) of a right-facing breast mask.

    The original computes these on the unflipped image with mode 'right' (left breasts) or 'left' (right
    breasts). For a breast that faces right here this is mode 'right'; for an image that the original
    would have flipped, its mirrored 'left' mode reports every column one larger than the flipped frame's
    index (``w - x`` instead of ``w - 1 - x``), which ``legacy_offset=1`` reproduces.

    Args:
        mask: (H, W) bool breast mask, chest wall on the left.
        buffer: pixels added above/below and on the nipple side (right), limited by the image.
        rightmost_from_ratio: the top ``int(h * ratio)`` rows of the crop are ignored for the rightmost point.
        legacy_offset: added to the reported columns (1 for images the original flipped).

    Returns:
        dict with ``crop_box`` [y0, y1, x0, x1] (end exclusive), ``rightmost_points`` [[row_first,
        row_last], col], ``bottommost_points`` [row, [col_first, col_last]] (w.r.t. the crop) and
        ``distance_from_starting_side`` (x0 before buffering, QC only).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty breast mask")
    height, width = mask.shape
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    bottom_row = y1 - 1
    bottom_cols = np.flatnonzero(mask[bottom_row])
    distance = x0
    y0 -= min(y0, buffer)
    y1 += min(height - y1, buffer)
    x1 += min(width - x1, buffer)

    cropped = mask[y0:y1, x0:x1]
    ignore = int(cropped.shape[0] * rightmost_from_ratio)
    search = cropped[ignore:]
    rightmost_col = int(np.flatnonzero(search.any(axis=0))[-1])
    rightmost_rows = np.flatnonzero(search[:, rightmost_col]) + ignore
    bottom_cols = bottom_cols - x0 + legacy_offset
    return {
        "crop_box": [y0, y1, x0, x1],
        "rightmost_points": [[int(rightmost_rows[0]), int(rightmost_rows[-1])], rightmost_col + legacy_offset],
        "bottommost_points": [bottom_row - y0, [int(bottom_cols[0]), int(bottom_cols[-1])]],
        "distance_from_starting_side": distance,
    }


def best_center(
    foreground: np.ndarray,
    view: str,
    rightmost_col: int,
    bottommost_row: int,
    window: Sequence[int] = MODEL_WINDOW,
) -> tuple[int, int]:
    """The original's optimal window centre (§5.2) on the cropped, right-facing image.

    Candidate centres per axis run from ``half`` to ``size - half`` (or the image centre ``size // 2``
    when the image is smaller than the window); CC forces the column to ``rightmost_col - w//2 - 1``,
    MLO the single centre ``(bottom - h//2 - 1, rightmost_col - w//2 - 1)`` with ``bottom`` the lower of
    ``bottommost_row`` and the last foreground row within the right-most ``w`` columns. Among several
    candidates the window (start shifted to 0 when negative, end clipped to the image) holding the most
    foreground pixels wins; ties go to the candidate closest to the image centre, first in row-major order.

    Args:
        foreground: (H, W) bool, the original uses ``cropped_image > 0``.
        view: "CC" or "MLO".
        rightmost_col, bottommost_row: from :func:`crop_geometry`.
        window: (h, w) window size.

    Returns:
        (row, col); the column may be negative.
    """
    height, width = foreground.shape
    half_h, half_w = int(window[0]) // 2, int(window[1]) // 2
    centre = (height // 2, width // 2)

    def axis_candidates(size: int, half: int, fallback: int) -> np.ndarray:
        return np.arange(half, size - half + 1) if size - half >= half else np.array([fallback])

    rows = axis_candidates(height, half_h, centre[0])
    cols = axis_candidates(width, half_w, centre[1])
    if view == "CC":
        cols = np.array([rightmost_col - half_w - 1])
    elif view == "MLO":
        lowest = np.flatnonzero(foreground[:, -int(window[1]) :].any(axis=1))
        bottom = min(bottommost_row, int(lowest[-1])) if lowest.size else bottommost_row
        rows = np.array([bottom - half_h - 1])
        cols = np.array([rightmost_col - half_w - 1])
    else:
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}.")
    if rows.size * cols.size == 1:
        return int(rows[0]), int(cols[0])

    counts = np.zeros((height + 1, width + 1), dtype=np.int64)
    counts[1:, 1:] = foreground.astype(np.int64).cumsum(0).cumsum(1)

    def window_span(centres: np.ndarray, half: int, length: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.maximum(centres - half, 0)
        return start, np.minimum(start + length, size)

    r0, r1 = window_span(rows, half_h, int(window[0]), height)
    c0, c1 = window_span(cols, half_w, int(window[1]), width)
    inside = counts[r1][:, c1] - counts[r0][:, c1] - counts[r1][:, c0] + counts[r0][:, c0]
    best_rows, best_cols = np.nonzero(inside == inside.max())  # row-major order
    distance = (rows[best_rows] - centre[0]) ** 2 + (cols[best_cols] - centre[1]) ** 2
    pick = int(np.argmin(distance))
    return int(rows[best_rows[pick]]), int(cols[best_cols[pick]])


def window_geometry(
    shape: Sequence[int],
    center: Sequence[int],
    view: str,
    window: Sequence[int] = MODEL_WINDOW,
    margin: Sequence[int] = (0, 0),
) -> tuple[list[int], list[int]]:
    """Zero padding and window of the original ``sample_crop_best_center`` (§5.3 steps 3-5).

    The window of size ``window`` is centred at ``center`` (top = row - h//2, left = col - w//2). An axis
    shorter than ``window + margin`` (CC rows: ``window + 2 * margin``) is zero-padded -- CC rows split
    top/bottom (``pad // 2`` on top), MLO rows at the bottom, columns on the right -- and the window is then
    placed at ``margin`` (CC rows) or 0 on that axis. Finally a window sticking out is shifted inside.
    ``margin`` is the room kept for crop noise (max_crop_noise + max_crop_size_noise; 0 at inference).

    Args:
        shape: (H, W) of the cropped image.
        center: best centre (row, col).
        view: "CC" or "MLO".

    Returns:
        ``pad`` [top, bottom, right] and ``box`` [top, bottom, left, right] in the padded image.
    """
    height, width = int(shape[0]), int(shape[1])
    (win_h, win_w), (margin_h, margin_w) = (int(v) for v in window), (int(v) for v in margin)
    top, left = int(center[0]) - win_h // 2, int(center[1]) - win_w // 2
    bottom, right = top + win_h, left + win_w
    pad_top = pad_bottom = pad_right = 0
    if view == "CC" and height < win_h + 2 * margin_h:
        pad = win_h - height + 2 * margin_h
        pad_top, pad_bottom = pad // 2, pad - pad // 2
        top, bottom = margin_h, margin_h + win_h
    elif view == "MLO" and height < win_h + margin_h:
        pad_bottom = win_h - height + margin_h
        top, bottom = 0, win_h
    elif view not in _VIEWS:
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}.")
    if width < win_w + margin_w:
        pad_right = win_w - width + margin_w
        left, right = 0, win_w
    padded_h, padded_w = height + pad_top + pad_bottom, width + pad_right

    def shift_inside(start: int, end: int, size: int, length: int) -> tuple[int, int]:
        if start < 0:
            return 0, length
        if end > size:
            return size - length, size
        return start, end

    top, bottom = shift_inside(top, bottom, padded_h, win_h)
    left, right = shift_inside(left, right, padded_w, win_w)
    return [pad_top, pad_bottom, pad_right], [top, bottom, left, right]


# ----------------------------------------------------------------------------------------------------------
# item-level helpers
# ----------------------------------------------------------------------------------------------------------


def _meta_value(img, key: str) -> Any:
    meta = getattr(img, "meta", None) or {}
    return meta.get(key)


def _resolve_view(data: Mapping, image, default: str) -> str:
    """View from the item, else from the reader's meta (DICOM ViewPosition), else ``default``."""
    for value in (data.get("view"), _meta_value(image, "view")):
        if isinstance(value, str) and value.upper() in _VIEWS:
            return value.upper()
    return default


def _resolve_laterality(data: Mapping, image) -> str | None:
    """Laterality "L"/"R" from the item, else from the reader's meta (DICOM tags), else None."""
    for value in (data.get("laterality"), _meta_value(image, "laterality")):
        if isinstance(value, str) and value.upper()[:1] in _LATERALITIES and value.upper() not in ("", "NONE"):
            return value.upper()[:1]
    return None


def _chest_wall_side(data: Mapping, image, flip_key: str) -> str | None:
    """Side of the chest wall in the raw image from laterality and the exam's horizontal_flip flag.

    With horizontal_flip 'NO' (the default) left breasts face right (chest wall left) and right breasts
    face left; 'YES' means the stored images are mirrored.
    """
    laterality = _resolve_laterality(data, image)
    if laterality is None:
        return None
    mirrored = str(data.get(flip_key, "NO")).upper() == "YES"
    return "right" if (laterality == "R") != mirrored else "left"


def _model_frame(data: Mapping, frame_key: str) -> bool:
    return str(data.get(frame_key, "raw")).lower() == "model"


class _GeometryMapTransform(MapTransform):
    """Base of the geometry transforms: the image drives the geometry, mask keys follow it.

    Keys listed in ``model_frame_keys`` are skipped for items whose ``frame_key`` is ``"model"``. The
    breast mask (``"breast_mask"``) always follows when the item has one, even if ``keys`` omits it: later
    steps read it and must see it in the image's geometry.
    """

    breast_mask_key = "breast_mask"

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.model_frame_keys = ensure_tuple(model_frame_keys)
        self.frame_key = frame_key

    def follow_keys(self, data: Mapping) -> list[Hashable]:
        """Keys (other than the image) that take the image's geometry for this item."""
        skip = self.model_frame_keys if _model_frame(data, self.frame_key) else ()
        keys = [key for key in self.key_iterator(data) if key != self.image_key and key not in skip]
        if self.breast_mask_key in data and self.breast_mask_key not in keys:
            keys.append(self.breast_mask_key)
        return keys


# ----------------------------------------------------------------------------------------------------------
# dictionary transforms
# ----------------------------------------------------------------------------------------------------------


class BreastMaskd(MapTransform):
    """Breast foreground mask of the raw image, stored under ``mask_key`` as a (1, H, W) bool MetaTensor.

    Methods:

    - ``"original"``: the GLAM/NYU rule for digital mammograms with a zero background
      (:func:`original_breast_mask`: pixel > 0, erosion ``iterations``, largest component, dilation).
    - ``"film"``: scanned film (:func:`film_breast_mask`): Otsu thresholds and the largest component at
      the chest-wall side, so film borders, markers and burned-in labels are not taken for breast. The
      chest-wall side comes from laterality (item or reader meta) and ``horizontal_flip`` when known.
    - ``"auto"``: ``"film"`` when the original rule's region holds a film background (more than 2 % of
      it darker than 5 % of its 95th percentile, see :meth:`has_film_background`), else ``"original"``.

    Keys: ``keys`` holds the image key ((C, H, W), channel 0 is used). With ``suppress_background`` the
    image pixels outside the mask are set to 0 (film background and labels vanish; after standardisation
    they equal the padding, as in digital images). The method used is recorded in the image meta
    ``"breast_mask_method"``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "breast_mask",
        method: str = "original",
        iterations: int = 100,
        suppress_background: bool = False,
        flip_key: str = "horizontal_flip",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if method not in ("original", "film", "auto"):
            raise ValueError(f"method must be 'original', 'film' or 'auto', got {method!r}.")
        self.mask_key = mask_key
        self.method = method
        self.iterations = iterations
        self.suppress_background = suppress_background
        self.flip_key = flip_key

    @staticmethod
    def has_film_background(image: np.ndarray, original_mask: np.ndarray, fraction: float = 0.02) -> bool:
        """The ``"auto"`` test: does the original rule's region hold a film background?

        In a digital mammogram the background is exactly 0, so the pixel > 0 region is the breast and
        only its skin line is dark: in the NYU sample 1.0 % of the region is darker than 5 % of its 95th
        percentile. A scanned film's background is dark but not 0 and lies inside the region: CBIS-DDSM
        2.3-3.1 %, mini-MIAS 3.9-38 % (except mdb152, 1.3 %, whose breast covers the whole film; the
        original rule is right there anyway). A heuristic: name the method when the source is known.
        """
        values = image[original_mask]
        if values.size == 0:
            return True
        return float(np.mean(values <= 0.05 * np.percentile(values, 95))) > fraction

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = _as_meta_tensor(d[key])
            plane = _plane(image)
            method = self.method
            if method in ("original", "auto"):
                mask = original_breast_mask(plane, self.iterations)
                if method == "auto":
                    method = "film" if self.has_film_background(plane, mask) else "original"
            if method == "film":
                mask = film_breast_mask(plane, _chest_wall_side(d, image, self.flip_key))
            if not mask.any():
                raise BadInputError(_source(image), "no breast found (empty foreground mask)")
            if self.suppress_background:
                image = image.clone()
                image[:, ~torch.as_tensor(mask)] = 0
            image.meta["breast_mask_method"] = method
            d[key] = image
            d[self.mask_key] = MetaTensor(torch.as_tensor(mask)[None], meta={"filename_or_obj": _source(image)})
        return d


class OrientBreastd(_GeometryMapTransform):
    """Flip image and masks left-right so that the breast faces right (chest wall on the left).

    ``mode="laterality"``: left breasts stay, right breasts are flipped (the original with
    horizontal_flip 'NO'; 'YES' in the item's ``flip_key`` reverses this). Laterality comes from the item
    key ``"laterality"``, else from the image meta (the reader copies DICOM ImageLaterality/Laterality).
    When laterality is unknown, or with ``mode="auto"``, the image content decides
    (:func:`chest_wall_on_right` on ``breast_mask_key``, or on pixel > 0 when there is no breast mask).

    Keys: ``keys`` = the image (C, H, W) and the masks that follow it ((C, H, W), any dtype). Writes the
    image meta ``"flipped"`` and ``"orientation_rule"`` ("laterality"/"content") and sets the item's
    ``"laterality"``/``"view"`` to the resolved values ("none" when unknown) so batches collate.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        image_key: str = "image",
        mode: str = "laterality",
        breast_mask_key: str = "breast_mask",
        flip_key: str = "horizontal_flip",
        default_view: str = "CC",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        if mode not in ("laterality", "auto"):
            raise ValueError(f"mode must be 'laterality' or 'auto', got {mode!r}.")
        self.mode = mode
        self.breast_mask_key = breast_mask_key
        self.flip_key = flip_key
        self.default_view = default_view
        self.flipper = Flip(spatial_axis=1)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = _as_meta_tensor(d[self.image_key])
        side = _chest_wall_side(d, image, self.flip_key) if self.mode == "laterality" else None
        rule = "laterality"
        if side is None:
            rule = "content"
            reference = d.get(self.breast_mask_key)
            reference = _plane(reference) if reference is not None else _plane(image) > 0
            side = "right" if chest_wall_on_right(reference) else "left"
        flipped = side == "right"
        laterality = _resolve_laterality(d, image) or "none"
        view = _resolve_view(d, image, self.default_view)
        if flipped:
            image = self.flipper(image)
            for key in self.follow_keys(d):
                d[key] = self.flipper(d[key])
        image.meta.update(
            {
                "flipped": flipped,
                "orientation_rule": rule,
                "oriented_shape": [int(v) for v in image.shape[1:]],
                "laterality": laterality,
                "view": view,
            }
        )
        d[self.image_key] = image
        d["laterality"], d["view"] = laterality, view
        return d


class CropBreastd(_GeometryMapTransform):
    """crop_mammogram (§5.1): crop image and masks to the breast bounding box with 50-px buffers.

    Works on right-facing images (after :class:`OrientBreastd`); the box comes from ``breast_mask_key``
    ((1, H, W) bool). Buffers: ``buffer`` rows above and below, ``buffer`` columns on the nipple (right)
    side, each limited by the image. Records in the image meta ``"crop_box"`` [y0, y1, x0, x1] and the
    anchor points the best-centre step needs, ``"rightmost_points"`` and ``"bottommost_points"`` (see
    :func:`crop_geometry`). With ``legacy_flip_offset`` the anchor columns of flipped images carry the
    original's +1 (it measured them on the unflipped image), which reproduces its best centres exactly.

    Keys: ``keys`` = image (C, H, W) and the masks that follow it; output spatial size (y1-y0, x1-x0).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        image_key: str = "image",
        breast_mask_key: str = "breast_mask",
        buffer: int = 50,
        rightmost_from_ratio: float = 1 / 3,
        legacy_flip_offset: bool = True,
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        self.breast_mask_key = breast_mask_key
        self.buffer = buffer
        self.rightmost_from_ratio = rightmost_from_ratio
        self.legacy_flip_offset = legacy_flip_offset

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = _as_meta_tensor(d[self.image_key])
        if self.breast_mask_key not in d:
            raise KeyError(f"CropBreastd needs the breast mask '{self.breast_mask_key}' (run BreastMaskd first).")
        mask = _plane(d[self.breast_mask_key]).astype(bool)
        if not mask.any():
            raise BadInputError(_source(image), "no breast found (empty foreground mask)")
        offset = int(self.legacy_flip_offset and bool(image.meta.get("flipped", False)))
        geometry = crop_geometry(mask, self.buffer, self.rightmost_from_ratio, offset)
        y0, y1, x0, x1 = geometry["crop_box"]
        cropper = SpatialCrop(roi_start=(y0, x0), roi_end=(y1, x1))
        image = cropper(image)
        for key in self.follow_keys(d):
            d[key] = cropper(d[key])
        image.meta.update(geometry)
        d[self.image_key] = image
        return d


class BestCenterWindowd(_GeometryMapTransform):
    """The original's best-centre window (§5.2 + §5.3) of size ``window_size`` (default 2944x1920).

    On the cropped, right-facing image: foreground = image > 0 (channel 0); the best centre from
    :func:`best_center` with the view's rule (CC: right edge anchored at the breast's rightmost point,
    rows optimised; MLO: anchored at the bottom-most and rightmost points); zero padding when the image
    is smaller than the window (CC rows split top/bottom, MLO rows at the bottom, columns on the right);
    a window sticking out is shifted inside. Needs the meta written by :class:`CropBreastd`.

    With crop noise to come (:class:`RandWindowNoised`), pass the same ``max_crop_noise`` and
    ``max_crop_size_noise``: the padding then keeps the original's noise margin and the output is the
    window extended by up to that margin on each side (what the noise may reach); meta ``"window_box"``
    is then given relative to the output. With zero noise (inference) the output is exactly the window.

    Keys: ``keys`` = image (C, H, W) and the masks that follow it (zero/False padded). View from the
    item's ``"view"`` or the image meta, else ``default_view``. Meta written: ``"best_center"``,
    ``"window_pad"`` [top, bottom, right], ``"window_box"``.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        window_size: Sequence[int] = MODEL_WINDOW,
        image_key: str = "image",
        default_view: str = "CC",
        max_crop_noise: Sequence[int] = (0, 0),
        max_crop_size_noise: int = 0,
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        self.window_size = tuple(int(v) for v in window_size)
        self.default_view = default_view
        self.max_crop_noise = tuple(int(v) for v in max_crop_noise)
        self.max_crop_size_noise = int(max_crop_size_noise)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = _as_meta_tensor(d[self.image_key])
        if "rightmost_points" not in image.meta:
            raise KeyError("BestCenterWindowd needs the crop meta data of CropBreastd (rightmost/bottommost points).")
        view = _resolve_view(d, image, self.default_view)
        plane = _plane(image)
        center = best_center(
            plane > 0, view, int(image.meta["rightmost_points"][1]), int(image.meta["bottommost_points"][0]), self.window_size
        )
        margin = [noise + self.max_crop_size_noise for noise in self.max_crop_noise]
        (pad_top, pad_bottom, pad_right), box = window_geometry(plane.shape, center, view, self.window_size, margin)
        padded_h, padded_w = plane.shape[0] + pad_top + pad_bottom, plane.shape[1] + pad_right
        top, bottom = max(box[0] - margin[0], 0), min(box[1] + margin[0], padded_h)
        left, right = max(box[2] - margin[1], 0), min(box[3] + margin[1], padded_w)
        pad = BorderPad(spatial_border=[pad_top, pad_bottom, 0, pad_right], mode="constant", value=0)
        cut = SpatialCrop(roi_start=(top, left), roi_end=(bottom, right))
        image = cut(pad(image))
        for key in self.follow_keys(d):
            d[key] = cut(pad(d[key]))
        image.meta.update(
            {
                "view": view,
                "best_center": [int(center[0]), int(center[1])],
                "window_pad": [pad_top, pad_bottom, pad_right],
                "window_box": [box[0] - top, box[1] - top, box[2] - left, box[3] - left],
                "window_origin": [top, left],
            }
        )
        d[self.image_key] = image
        d["view"] = view
        return d


class RandWindowNoised(RandomizableTransform, _GeometryMapTransform):
    """The original training augmentation of the window: crop-position noise and crop-size noise.

    Input: the output of :class:`BestCenterWindowd` built with the same noise settings (the window with
    its noise margin, meta ``"window_box"``). As the original ``sample_crop_best_center`` +
    ``sample_crop``: a position multiplier per axis ~ U(-1, 1) (forced away from an image border the
    window touches) moves the window by ``round(m * min(max_crop_noise, room))``; then each of the four
    borders moves by ``round(u * n)``, u ~ U(-1, 1), where n = min(max_crop_size_noise, room left on
    every side) for the longer axis and ``round(n * short/long)`` for the shorter; the cut is resized
    back to ``window_size`` (bicubic for the image as the original's cv2 INTER_CUBIC, nearest for masks; both
    with half-pixel centres, PyTorch's ``nearest-exact``, so masks stay aligned). Defaults are the original's
    ``max_crop_noise=(100, 100)``, ``max_crop_size_noise=100``.

    Keys: image (C, H, W) and masks; masks in the model frame (``frame_key`` "model") are window-sized:
    they are placed in the margin frame (zero outside) and cut the same way. Meta ``"noise_box"`` records
    the window [top, bottom, left, right] that was cut, relative to the input.
    """

    backend = [*Resize.backend]

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        window_size: Sequence[int] = MODEL_WINDOW,
        max_crop_noise: Sequence[int] = (100, 100),
        max_crop_size_noise: int = 100,
        prob: float = 1.0,
        image_key: str = "image",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        RandomizableTransform.__init__(self, prob)
        _GeometryMapTransform.__init__(self, keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        self.window_size = tuple(int(v) for v in window_size)
        self.max_crop_noise = np.asarray(max_crop_noise, dtype=np.int64)
        self.max_crop_size_noise = int(max_crop_size_noise)
        self._position = np.zeros(2)
        self._size = np.zeros(4)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        # Same draws as the original: the position multiplier only when there is position noise.
        self._position = self.R.uniform(-1.0, 1.0, size=2) if self.max_crop_noise.any() else np.zeros(2)
        self._size = self.R.uniform(-1.0, 1.0, size=4)

    def noise_box(self, shape: Sequence[int], box: Sequence[int]) -> list[int]:
        """The noisy window [top, bottom, left, right] for an input of spatial ``shape`` holding ``box``."""
        height, width = int(shape[0]), int(shape[1])
        top, bottom, left, right = (int(v) for v in box)
        position = self._position.copy()
        for axis, (start, end, size) in enumerate(((top, bottom, height), (left, right, width))):
            if start == 0:
                position[axis] = abs(position[axis])
            elif end == size:
                position[axis] = -abs(position[axis])
        room = np.array(
            [height - bottom if position[0] >= 0 else top, width - right if position[1] >= 0 else left]
        )
        shift = np.round(position * np.minimum(self.max_crop_noise, room)).astype(np.int64)
        top, bottom, left, right = top + shift[0], bottom + shift[0], left + shift[1], right + shift[1]

        size_noise = min(self.max_crop_size_noise, top, height - bottom, left, width - right)
        win_h, win_w = self.window_size
        if win_h >= win_w:
            vertical, horizontal = size_noise, round(size_noise * win_w / win_h)
        else:
            vertical, horizontal = round(size_noise * win_h / win_w), size_noise
        borders = np.round(np.array([vertical, vertical, horizontal, horizontal]) * self._size).astype(np.int64)
        return [int(top + borders[0]), int(bottom + borders[1]), int(left + borders[2]), int(right + borders[3])]

    def __call__(self, data: Mapping, randomize: bool = True) -> dict:
        d = dict(data)
        if randomize:
            self.randomize()
        image = _as_meta_tensor(d[self.image_key])
        shape = tuple(image.shape[1:])
        box = image.meta.get("window_box", [0, shape[0], 0, shape[1]])
        if not self._do_transform:
            noisy = [int(v) for v in box]
        else:
            noisy = self.noise_box(shape, box)
        cut = SpatialCrop(roi_start=(noisy[0], noisy[2]), roi_end=(noisy[1], noisy[3]))
        resize_image = Resize(self.window_size, mode="bicubic")
        resize_mask = Resize(self.window_size, mode="nearest-exact")

        def place(mask):
            # a model-frame mask covers exactly the noise-free window: put it into the margin frame
            border = [box[0], shape[0] - box[1], box[2], shape[1] - box[3]]
            return BorderPad(spatial_border=border, mode="constant", value=0)(mask)

        out = cut(image)
        if tuple(out.shape[1:]) != self.window_size:
            out = resize_image(out)
        model_keys = self.model_frame_keys if _model_frame(d, self.frame_key) else ()
        keys = [key for key in self.key_iterator(d) if key != self.image_key]
        if self.breast_mask_key in d and self.breast_mask_key not in keys:
            keys.append(self.breast_mask_key)
        for key in keys:
            mask = place(d[key]) if key in model_keys else d[key]
            mask = cut(mask)
            if tuple(mask.shape[1:]) != self.window_size:
                dtype = mask.dtype
                mask = resize_mask(mask.float())
                mask = mask > 0.5 if dtype == torch.bool else mask.to(dtype)
            d[key] = mask
        out.meta["noise_box"] = noisy
        d[self.image_key] = out
        return d


class ResampleToSpacingd(_GeometryMapTransform):
    """Rescale an image of known pixel spacing to the NYU scale (bilinear image, nearest-exact masks).

    The NYU model frame is assumed to have ``target_spacing`` = :data:`NYU_PIXEL_SPACING_MM` = 0.1 mm per
    pixel (an assumption, see the constant's comment; the GLAM paper does not state it). The output size
    is ``round(size * pixel_spacing / target_spacing)`` per axis, e.g. mini-MIAS (0.2 mm, 1024x1024) ->
    2048x2048. Run it before :class:`BreastMaskd` (the original's 100-pixel erosion is in NYU pixels).

    Keys: image (C, H, W) and masks (model-frame masks are skipped). Meta ``"resample_factor"``
    [row, col] (output/input size) and ``"pixel_spacing_mm"`` (after resampling).

    Args:
        pixel_spacing: source spacing in mm, a float or (row, col).
        target_spacing: spacing of the model frame in mm.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        pixel_spacing: float | Sequence[float] = 0.2,
        target_spacing: float = NYU_PIXEL_SPACING_MM,
        image_key: str = "image",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        spacing = ensure_tuple(pixel_spacing)
        self.pixel_spacing = tuple(float(s) for s in (spacing * 2 if len(spacing) == 1 else spacing))
        self.target_spacing = float(target_spacing)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = _as_meta_tensor(d[self.image_key])
        size = tuple(
            max(1, round(n * s / self.target_spacing)) for n, s in zip(image.shape[1:], self.pixel_spacing)
        )
        factor = [size[0] / image.shape[1], size[1] / image.shape[2]]
        image = Resize(size, mode="bilinear")(image)
        image.meta.update({"resample_factor": factor, "pixel_spacing_mm": self.target_spacing})
        for key in self.follow_keys(d):
            mask = d[key]
            dtype = mask.dtype
            mask = Resize(size, mode="nearest-exact")(mask.float())
            d[key] = mask > 0.5 if dtype == torch.bool else mask.to(dtype)
        d[self.image_key] = image
        return d


class StackMasksd(MapTransform):
    """Build the (2, H, W) lesion mask (benign, malignant) and its (2,) float32 ``has_mask`` flags.

    The mask is ``dtype`` (float32 by default, values 0/1); :func:`default_preprocessing` keeps it bool
    through the geometry steps and the cache (4x smaller) and casts it to float32 at the end.

    ``keys`` = the per-class mask keys in channel order (default ``("mask_benign", "mask_malignant")``),
    each a loaded (C, H, W) image (any value > 0 counts as lesion) or absent (zeros, flag 0). The mask must
    have its image's spatial size, or ``model_frame_size`` when the item's ``frame_key`` is ``"model"``;
    otherwise :class:`BadInputError` names the mask file. The per-class keys are removed (their content is
    in ``mask_key``) and ``frame_key`` is set to the resolved "raw"/"model", so batches collate.
    """

    def __init__(
        self,
        keys: KeysCollection = ("mask_benign", "mask_malignant"),
        image_key: str = "image",
        mask_key: str = "mask",
        has_mask_key: str = "has_mask",
        frame_key: str = "mask_frame",
        model_frame_size: Sequence[int] = MODEL_WINDOW,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.mask_key = mask_key
        self.has_mask_key = has_mask_key
        self.frame_key = frame_key
        self.model_frame_size = tuple(int(v) for v in model_frame_size)
        self.dtype = dtype

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.image_key]
        model_frame = _model_frame(d, self.frame_key)
        expected = self.model_frame_size if model_frame else tuple(image.shape[1:])
        channels, flags = [], []
        for key in self.keys:
            mask = d.pop(key, None)
            if mask is None:
                channels.append(torch.zeros(expected, dtype=self.dtype))
                flags.append(0.0)
                continue
            if tuple(mask.shape[1:]) != expected:
                frame = "the model frame (mask_frame 'model')" if model_frame else "its image"
                raise BadInputError(
                    _source(mask),
                    f"mask is {mask.shape[1]}x{mask.shape[2]} (HxW) but {frame} is {expected[0]}x{expected[1]}",
                )
            channels.append((torch.as_tensor(mask) > 0).any(dim=0).to(self.dtype))
            flags.append(1.0)
        d[self.mask_key] = MetaTensor(torch.stack(channels).as_subclass(torch.Tensor))
        d[self.has_mask_key] = torch.tensor(flags, dtype=torch.float32)
        d[self.frame_key] = "model" if model_frame else "raw"
        return d


class MakeLabeld(MapTransform):
    """Image-level label ``label_key``: float32 (2,) = [benign, malignant], -1 where unknown.

    ``keys`` = the class keys in channel order (default ``("benign", "malignant")``); a missing key,
    ``None`` or a negative value means unknown. The class keys are removed (their content is in the label)
    so that items with and without them collate.
    """

    def __init__(self, keys: KeysCollection = ("benign", "malignant"), label_key: str = "label"):
        super().__init__(keys, allow_missing_keys=True)
        self.label_key = label_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        values = []
        for key in self.keys:
            value = d.pop(key, None)
            value = -1.0 if value is None else float(value)
            values.append(-1.0 if value < 0 else value)
        d[self.label_key] = torch.tensor(values, dtype=torch.float32)
        return d


def map_to_model_frame(meta: Mapping, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Map (row, col) points of the raw image into the preprocessed window, using the image meta data.

    Follows the bookkeeping of :class:`ResampleToSpacingd` (``resample_factor``, pixel centres scaled),
    :class:`OrientBreastd` (``flipped``, ``oriented_shape``), :class:`CropBreastd` (``crop_box``) and
    :class:`BestCenterWindowd` (``window_pad``, ``window_origin``, ``window_box``). Crop noise is not
    modelled (use it on inference items).

    Args:
        points: (N, 2) raw (row, col) coordinates.

    Returns:
        (N, 2) float array of (row, col) in the model window; points may fall outside it.
    """
    points = np.array(points, dtype=np.float64).reshape(-1, 2)
    factor = meta.get("resample_factor")
    if factor is not None:
        points = (points + 0.5) * np.asarray(factor, dtype=np.float64).reshape(1, 2) - 0.5
    if bool(meta.get("flipped", False)):
        points[:, 1] = int(meta["oriented_shape"][1]) - 1 - points[:, 1]
    y0, _, x0, _ = (int(v) for v in meta["crop_box"])
    pad_top = int(meta["window_pad"][0])
    origin = np.asarray(meta["window_origin"], dtype=np.float64) + np.asarray(meta["window_box"])[[0, 2]]
    points[:, 0] += pad_top - y0
    points[:, 1] -= x0
    return points - origin.reshape(1, 2)


# ----------------------------------------------------------------------------------------------------------
# the chain and caching
# ----------------------------------------------------------------------------------------------------------


def default_preprocessing(
    image_size: Sequence[int] = MODEL_WINDOW,
    film: bool = False,
    augment: bool = False,
    spacing: float | Sequence[float] | None = None,
    max_crop_noise: Sequence[int] = (100, 100),
    max_crop_size_noise: int = 100,
) -> Compose:
    """The whole GLAM preprocessing chain as a MONAI ``Compose`` (for scripts and tests).

    LoadImaged (MammogramReader) -> MakeLabeld -> StackMasksd -> [ResampleToSpacingd] -> BreastMaskd ->
    OrientBreastd -> CropBreastd -> BestCenterWindowd -> [RandWindowNoised] -> NormalizeIntensityd ->
    EnsureTyped. Output item: ``image`` MetaTensor (1, h, w) float32 standardised, ``label`` (2,),
    ``mask`` (2, h, w), ``has_mask`` (2,) (all float32), ``breast_mask`` (1, h, w) bool, with (h, w) =
    ``image_size``, plus ``view``, ``laterality``, ``mask_frame`` strings and the other item keys. Lesion
    masks stay bool until the final EnsureTyped (cheaper geometry, 4x smaller cache entries).

    Args:
        image_size: model window (H, W).
        film: scanned film: robust breast mask and background suppression (else the original rule).
        augment: add the original crop-position/-size noise (training).
        spacing: source pixel spacing in mm; when given, images are first resampled to the NYU scale.
        max_crop_noise, max_crop_size_noise: noise amplitudes used when ``augment``.
    """
    from glam_bundle.data.readers import MammogramReader  # deferred: readers import pydicom/PIL

    geometry_keys = ("image", "mask", "breast_mask")
    noise = {"max_crop_noise": tuple(max_crop_noise), "max_crop_size_noise": int(max_crop_size_noise)}
    transforms: list = [
        LoadImaged(keys="image", reader=MammogramReader(), image_only=True, ensure_channel_first=True),
        LoadImaged(
            keys=("mask_benign", "mask_malignant"),
            reader=MammogramReader(allow_constant=True),
            image_only=True,
            ensure_channel_first=True,
            allow_missing_keys=True,
        ),
        MakeLabeld(keys=("benign", "malignant"), label_key="label"),
        StackMasksd(keys=("mask_benign", "mask_malignant"), model_frame_size=image_size, dtype=torch.bool),
    ]
    if spacing is not None:
        transforms.append(ResampleToSpacingd(keys=("image", "mask"), pixel_spacing=spacing))
    transforms += [
        BreastMaskd(keys="image", method="film" if film else "original", suppress_background=film),
        OrientBreastd(keys=geometry_keys),
        CropBreastd(keys=geometry_keys),
        BestCenterWindowd(keys=geometry_keys, window_size=image_size, **(noise if augment else {})),
    ]
    if augment:
        transforms.append(RandWindowNoised(keys=geometry_keys, window_size=image_size, **noise))
    transforms += [
        # MONAI's NormalizeIntensity is the original (x - mean) / std with the population std (ddof 0);
        # it differs only for std == 0 (divides by 1; the original by 1e-5), where both give 0.
        NormalizeIntensityd(keys="image"),
        EnsureTyped(keys=("image", "label", "mask", "has_mask"), dtype=torch.float32),
    ]
    return Compose(transforms)
