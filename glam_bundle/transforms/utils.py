"""Item-level helpers shared by the transform families: image planes and meta data, view, laterality,
chest-wall side and the lesion-mask frame of an item."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import convert_to_tensor

from glam_bundle.constants import LATERALITIES, VIEWS

__all__ = [
    "image_plane",
    "source_name",
    "as_meta_tensor",
    "resolve_view",
    "resolve_laterality",
    "chest_wall_side",
    "is_model_frame",
]


def image_plane(img) -> np.ndarray:
    """First channel of a (C, H, W) tensor/array as a numpy (H, W) array (no copy when possible)."""
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.ndim != 3:
        raise ValueError(f"expected a channel-first (C, H, W) image, got shape {arr.shape}.")
    return arr[0]


def source_name(img) -> str:
    """File name stored by LoadImage in the meta data, for error messages."""
    meta = getattr(img, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<in-memory image>"))


def as_meta_tensor(img) -> MetaTensor:
    """The image as a MetaTensor (meta data is where the geometry bookkeeping lives)."""
    out = convert_to_tensor(img, track_meta=True)
    return out if isinstance(out, MetaTensor) else MetaTensor(out)


def _meta_value(img, key: str) -> Any:
    """``img.meta[key]``, or None when the image has no meta data or no such entry."""
    meta = getattr(img, "meta", None) or {}
    return meta.get(key)


def resolve_view(data: Mapping, image, default: str) -> str:
    """View from the item, else from the reader's meta (DICOM ViewPosition), else ``default``."""
    for value in (data.get("view"), _meta_value(image, "view")):
        if isinstance(value, str) and value.upper() in VIEWS:
            return value.upper()
    return default


def resolve_laterality(data: Mapping, image) -> str | None:
    """Laterality "L"/"R" from the item, else from the reader's meta (DICOM tags), else None."""
    for value in (data.get("laterality"), _meta_value(image, "laterality")):
        if isinstance(value, str) and value.upper()[:1] in LATERALITIES and value.upper() not in ("", "NONE"):
            return value.upper()[:1]
    return None


def chest_wall_side(data: Mapping, image, flip_key: str) -> str | None:
    """Side of the chest wall in the raw image from laterality and the exam's horizontal_flip flag.

    With horizontal_flip 'NO' (the default) left breasts face right (chest wall left) and right breasts
    face left; 'YES' means the stored images are mirrored.
    """
    laterality = resolve_laterality(data, image)
    if laterality is None:
        return None
    mirrored = str(data.get(flip_key, "NO")).upper() == "YES"
    return "right" if (laterality == "R") != mirrored else "left"


def is_model_frame(data: Mapping, frame_key: str) -> bool:
    """Are the item's lesion masks drawn in the model frame (``data[frame_key] == "model"``; default "raw")?"""
    return str(data.get(frame_key, "raw")).lower() == "model"
