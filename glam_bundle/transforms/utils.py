"""Item-level helpers shared by the transform families: image planes and meta data, view, laterality,
chest-wall side and the lesion-mask frame of an item."""

from __future__ import annotations

import os
import re
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
    "chest_wall_side_with_rule",
    "patient_orientation",
    "stored_upside_down",
    "is_model_frame",
    "filename_view_laterality",
    "view_with_source",
    "laterality_with_source",
]

# View and laterality in the file names of common datasets: mini-DDSM "C_0001_1.LEFT_CC.jpg", CBIS-DDSM
# "Mass-Test_P_00173_LEFT_CC", NYU "0_L-CC.png", InBreast/VinDr-style "..._L_MLO", "RCC", "LMLO". The side
# token must be delimited (start, end, or a non-letter) so that words that merely contain "CC" don't match.
_NAME_PATTERNS = (
    re.compile(r"(?<![A-Z])(LEFT|RIGHT)[ _.-]*(CC|MLO)(?![A-Z])"),
    re.compile(r"(?<![A-Z])([LR])[ _.-]?(CC|MLO)(?![A-Z])"),
)


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


def filename_view_laterality(path) -> tuple[str | None, str | None]:
    """(view, laterality) spelled in a file name (the last match wins), each None when absent."""
    name = os.path.basename(str(path or "")).upper()
    for pattern in _NAME_PATTERNS:
        matches = pattern.findall(name)
        if matches:
            side, view = matches[-1]
            return view, side[:1]
    return None, None


def _named_source(image) -> str | None:
    meta = getattr(image, "meta", None) or {}
    return meta.get("filename_or_obj")


def view_with_source(data: Mapping, image) -> tuple[str | None, str | None]:
    """View and where it came from: the item ("datalist"), a source already decided by an earlier step (the
    image meta ``"view_source"``), the reader's meta (DICOM ViewPosition, "dicom"), the file name
    ("filename"); ``(None, None)`` when none says."""
    decided = _meta_value(image, "view_source")
    for value, source in (
        (data.get("view"), decided or "datalist"),
        (_meta_value(image, "view"), "dicom"),
        (filename_view_laterality(_named_source(image))[0], "filename"),
    ):
        if isinstance(value, str) and value.upper() in VIEWS:
            return value.upper(), source
    return None, None


def laterality_with_source(data: Mapping, image) -> tuple[str | None, str | None]:
    """Laterality "L"/"R" and its source: the item ("datalist"), the reader's meta (DICOM, "dicom"), the file
    name ("filename"); ``(None, None)`` when none says."""
    decided = _meta_value(image, "laterality_source")
    for value, source in (
        (data.get("laterality"), decided or "datalist"),
        (_meta_value(image, "laterality"), "dicom"),
        (filename_view_laterality(_named_source(image))[1], "filename"),
    ):
        if isinstance(value, str) and value.upper()[:1] in LATERALITIES and value.upper() not in ("", "NONE"):
            return value.upper()[:1], source
    return None, None


def resolve_view(data: Mapping, image, default: str) -> str:
    """View from the item, else the reader's meta (DICOM ViewPosition), else the file name, else ``default``."""
    return view_with_source(data, image)[0] or default


def resolve_laterality(data: Mapping, image) -> str | None:
    """Laterality "L"/"R" from the item, else the reader's meta (DICOM tags), else the file name, else None."""
    return laterality_with_source(data, image)[0]


def chest_wall_side(data: Mapping, image, flip_key: str) -> str | None:
    """Side ("left"/"right") of the chest wall in the raw image, or None; see :func:`chest_wall_side_with_rule`."""
    return chest_wall_side_with_rule(data, image, flip_key)[0]


def chest_wall_side_with_rule(data: Mapping, image, flip_key: str) -> tuple[str | None, str]:
    """Side of the chest wall in the raw image and the rule that gave it.

    Unless the item has the exam's horizontal_flip flag, DICOM PatientOrientation decides when its row direction
    is anterior (chest wall left) or posterior (right): it describes the stored pixels, whatever the vendor's
    display convention ("patient orientation"). Otherwise laterality does ("laterality"): with horizontal_flip
    'NO' (the default) left breasts face right (chest wall left) and right breasts face left; 'YES' means the
    stored images are mirrored. ``(None, "laterality")`` when neither is known.
    """
    rows, _ = patient_orientation(image)
    if flip_key not in data and rows in ("A", "P"):
        return ("left" if rows == "A" else "right"), "patient orientation"
    laterality = resolve_laterality(data, image)
    if laterality is None:
        return None, "laterality"
    mirrored = str(data.get(flip_key, "NO")).upper() == "YES"
    return ("right" if (laterality == "R") != mirrored else "left"), "laterality"


def patient_orientation(image) -> tuple[str | None, str | None]:
    """The patient directions of the image's rows and columns from the reader's ``"patient_orientation"`` meta
    (DICOM PatientOrientation, e.g. "A\\R"): the row's anterior/posterior letter ("A"/"P", None when it names
    neither or both) and the column's letters (e.g. "R", "FL"); ``(None, None)`` when unknown."""
    value = _meta_value(image, "patient_orientation")
    parts = str(value).split("\\") if isinstance(value, str) and value != "none" else []
    if len(parts) != 2:
        return None, None
    rows = "".join(letter for letter in parts[0] if letter in "AP")
    return (rows if len(rows) == 1 else None), parts[1]


def stored_upside_down(image, laterality: str | None) -> bool:
    """Does DICOM PatientOrientation say the image is stored upside down? Its columns run towards the head ("H"),
    where a mammogram's run towards the feet (MLO, e.g. "FL") or, in a CC view, across the body to the other
    breast (a left CC's columns run to the patient's right, "R"): a CC column direction naming the breast's own
    side is upside down."""
    _, columns = patient_orientation(image)
    if not columns:
        return False
    if "H" in columns or "F" in columns:
        return "H" in columns and "F" not in columns
    return laterality is not None and columns == laterality


def is_model_frame(data: Mapping, frame_key: str) -> bool:
    """Are the item's lesion masks drawn in the model frame (``data[frame_key] == "model"``; default "raw")?"""
    return str(data.get(frame_key, "raw")).lower() == "model"
