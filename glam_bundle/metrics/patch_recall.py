"""Patch recall of the patch selection (paper appendix A): the share of lesions hit by the selected patches."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from glam_bundle.constants import CLASS_NAMES

__all__ = ["RECALL_AT", "lesion_patch_hits", "summarise_patch_recall"]

RECALL_AT = (1, 3)  # recall with the first patch (and the first three, as appendix A) besides all K


def lesion_patch_hits(
    mask: torch.Tensor | np.ndarray,
    locations: torch.Tensor | np.ndarray,
    crop_size: Sequence[int],
    classes: Sequence[int] | None = None,
    merge_distance: int | None = None,
) -> dict[str, list[int]]:
    """Which selected patch first hits each lesion (patch recall, paper appendix A).

    A lesion is a connected component (8-connectivity, ``scipy.ndimage.label``) of a class's mask after parts closer
    than ``merge_distance`` pixels are joined, so that a calcification cluster (specks a few millimetres apart)
    counts as one lesion, as a radiologist counts it; a patch hits a lesion when they share at least one pixel.

    Args:
        mask: (C, H, W) lesion masks (> 0.5 inside), C = 2 (benign, malignant).
        locations: (K, 2) upper-left (row, col) corners, in selection order.
        crop_size: (h_c, w_c).
        classes: channels to count (e.g. those with an annotated mask); all by default.
        merge_distance: gap in pixels bridged between parts of one lesion; default a tenth of the patch's shorter
            side (51 px, about 5 mm, for 512-px patches in the paper's frame); 0 keeps every component apart.

    Returns:
        ``{class name: [first hitting patch index or -1, one per lesion]}`` for the counted classes.
    """
    mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask) > 0.5
    corners = np.asarray(locations.detach().cpu() if isinstance(locations, torch.Tensor) else locations, dtype=np.int64)
    h_c, w_c = int(crop_size[0]), int(crop_size[1])
    merge_distance = min(h_c, w_c) // 10 if merge_distance is None else int(merge_distance)
    structure = np.ones((3, 3), dtype=bool)
    result: dict[str, list[int]] = {}
    for channel in range(mask.shape[0]) if classes is None else classes:
        joined = mask[channel]
        if merge_distance > 1 and joined.any():
            joined = ndimage.binary_dilation(joined, structure, iterations=merge_distance // 2)
        labelled, count = ndimage.label(joined, structure=structure)
        labelled = labelled * mask[channel]  # a patch must touch the lesion itself, not the bridged gap
        first = np.full(count + 1, -1, dtype=np.int64)
        for k, (row, col) in enumerate(corners):
            window = labelled[max(row, 0) : max(row + h_c, 0), max(col, 0) : max(col + w_c, 0)]
            hit = np.unique(window)
            hit = hit[(hit > 0) & (first[hit] < 0)]
            first[hit] = k
        result[CLASS_NAMES[channel]] = first[1:].tolist()
    return result


def summarise_patch_recall(per_image: Sequence[Mapping[str, Sequence[int]]], num_patches: int) -> dict[str, Any]:
    """Patch recall over images from their :func:`lesion_patch_hits` results.

    Returns:
        ``{"lesions": {class: n, "overall": n}, "lesions_hit": {...}, "recall": {class: hit / n, "overall": ...},
        "recall_at_1": {...}, "recall_at_3": {...}}``: ``recall`` counts a lesion hit by any of the K patches,
        ``recall_at_k`` only by the first k (NaN where there is no lesion).
    """
    first_hits: dict[str, list[int]] = {name: [] for name in CLASS_NAMES}
    for hits in per_image:
        for name, values in hits.items():
            first_hits.setdefault(name, []).extend(int(v) for v in values)
    first_hits["overall"] = [v for name in list(first_hits) for v in first_hits[name]]

    def recall(limit: int) -> dict[str, float]:
        return {
            name: (sum(0 <= v < limit for v in values) / len(values)) if values else math.nan
            for name, values in first_hits.items()
        }

    summary: dict[str, Any] = {
        "lesions": {name: len(values) for name, values in first_hits.items()},
        "lesions_hit": {name: sum(v >= 0 for v in values) for name, values in first_hits.items()},
        "recall": recall(num_patches),
    }
    for k in RECALL_AT:
        summary[f"recall_at_{k}"] = recall(min(k, num_patches))
    return summary
