"""Checks shared by the mammogram readers: is a file there, which reader takes it, is its array a usable image.

Errors are :class:`glam_bundle.data.errors.BadInputError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.utils import TraceKeys
from pydicom.misc import is_dicom

from glam_bundle.constants import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES
from glam_bundle.data.errors import BadInputError

CHANNEL_NAMES = {2: "gray+alpha image", 3: "RGB image", 4: "RGBA image"}


@dataclass
class DeferredError:
    """Stands in for an image object when reading failed; ``get_data`` raises ``error``."""

    error: BadInputError


def missing_meta(value: Any) -> Any:
    """Metadata placeholder for an absent value (collatable, unlike ``None``)."""
    return str(TraceKeys.NONE) if value is None else value


def check_file(path: str) -> None:
    """Raise BadInputError for a path that is not a readable file."""
    if not os.path.exists(path):
        raise BadInputError(path, "file not found")
    if os.path.isdir(path):
        raise BadInputError(path, "is a directory; expected an image file")


def format_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def normalise_min_size(min_size: int | Sequence[int] | None) -> tuple[int, int]:
    if not min_size:
        return 0, 0
    if isinstance(min_size, (int, np.integer)):
        return int(min_size), int(min_size)
    sizes = tuple(int(s) for s in min_size)
    if len(sizes) != 2:
        raise ValueError(f"min_size must be an int or (height, width), got {min_size!r}.")
    return sizes


def check_image_array(
    array: np.ndarray,
    path: PathLike,
    min_size: int | Sequence[int] | None = (512, 512),
    allow_constant: bool = False,
) -> np.ndarray:
    """Check that ``array`` is a usable single-channel image and return it as float32 (H, W).

    Args:
        array: decoded pixel array, expected (H, W).
        path: the file it came from (named in the error).
        min_size: smallest accepted (H, W); an int means a square; 0 or None disables the check.
        allow_constant: accept an image whose pixels all have one value (e.g. an empty lesion mask).

    Raises:
        BadInputError: multi-channel or non-2-D array, too small, NaN/inf values, or constant image.
    """
    if array.ndim == 3 and array.shape[-1] in CHANNEL_NAMES:
        channels = array.shape[-1]
        raise BadInputError(
            path, f"{CHANNEL_NAMES[channels]} ({channels} channels); expected one grayscale channel"
        )
    if array.ndim != 2:
        raise BadInputError(path, f"expected a 2-D grayscale image, got an array of shape {tuple(array.shape)}")
    height, width = array.shape
    min_height, min_width = normalise_min_size(min_size)
    if height < min_height or width < min_width:
        raise BadInputError(
            path,
            f"image is {height}x{width} (HxW), smaller than the {min_height}x{min_width} minimum (one patch)",
        )
    array = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        raise BadInputError(path, f"non-finite values ({n_nan} NaN, {array.size - int(finite.sum()) - n_nan} inf)")
    if not allow_constant:
        low, high = float(array.min()), float(array.max())
        if low == high:
            raise BadInputError(path, "all-zero image" if low == 0 else f"constant image (every pixel is {low:g})")
    return array


def lower_name(path: str) -> str:
    return os.path.basename(path).lower()


def is_dicom_file(path: str) -> bool:
    name = lower_name(path)
    if name.endswith(DICOM_SUFFIXES):
        return True
    if backend_by_suffix(path) is not None:
        return False
    try:
        return os.path.isfile(path) and is_dicom(path)  # "DICM" magic after the 128-byte preamble
    except OSError:
        return False


def backend_by_suffix(path: str) -> str | None:
    name = lower_name(path)
    for backend, suffixes in (
        ("pil", PIL_SUFFIXES),
        ("dicom", DICOM_SUFFIXES),
        ("nifti", NIFTI_SUFFIXES),
        ("itk", ITK_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return backend
    return None


def backend_for(path: str) -> str | None:
    """Backend name for a path: by suffix, else ``"dicom"`` for DICM-magic files, else None."""
    backend = backend_by_suffix(path)
    if backend is None and is_dicom_file(path):
        return "dicom"
    return backend


def format_name(path: str) -> str:
    """Short human name of the file type for messages, e.g. ``"PNG"``."""
    name = lower_name(path)
    if name.endswith(".nii.gz"):
        return "NIfTI"
    suffix = os.path.splitext(name)[1].lstrip(".").upper()
    return {"JPG": "JPEG", "TIF": "TIFF", "NII": "NIfTI", "DCM": "DICOM", "": "DICOM"}.get(suffix, suffix)
