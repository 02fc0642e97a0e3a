"""Geometry of the original crop and best-centre window on (H, W) numpy masks (glam_reference.md §5.1-5.3), and
the mapping of raw-image points into the model frame through the meta data the geometry transforms record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from monai.utils import ensure_tuple

from glam_bundle.constants import MODEL_FRAME_SIZE, VIEWS

__all__ = ["crop_geometry", "best_center", "window_geometry", "map_to_model_frame"]


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
    window: Sequence[int] = MODEL_FRAME_SIZE,
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
    window: Sequence[int] = MODEL_FRAME_SIZE,
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
    elif view not in VIEWS:
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


def map_to_model_frame(meta: Mapping, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Map (row, col) points of the raw image into the preprocessed window, using the image meta data.

    Follows the bookkeeping of :class:`ResampleToSpacingd` (``resample_factor``, pixel centres scaled),
    :class:`OrientBreastd` (``flipped``, ``flipped_vertically``, ``oriented_shape``), :class:`CropBreastd`
    (``crop_box``) and :class:`BestCenterWindowd` (``window_pad``, ``window_origin``, ``window_box``). Crop noise
    is not modelled (use it on inference items).

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
    if bool(meta.get("flipped_vertically", False)):
        points[:, 0] = int(meta["oriented_shape"][0]) - 1 - points[:, 0]
    y0, _, x0, _ = (int(v) for v in meta["crop_box"])
    pad_top = int(meta["window_pad"][0])
    origin = np.asarray(meta["window_origin"], dtype=np.float64) + np.asarray(meta["window_box"])[[0, 2]]
    points[:, 0] += pad_top - y0
    points[:, 1] -= x0
    return points - origin.reshape(1, 2)


def spacing_pair(value, name: str) -> tuple[float, float]:
    """A spacing given as a number or (row, col) as a pair of positive floats; ValueError naming ``name``."""
    values = ensure_tuple(value)
    try:
        pair = tuple(float(v) for v in (values * 2 if len(values) == 1 else values))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number or a (row, col) pair in mm, got {value!r}.") from None
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive number or a (row, col) pair in mm, got {value!r}.")
    return pair
