"""Checks shared by the mammogram readers: is a file there, which reader takes it, is its array a usable image.

Errors are :class:`glam_bundle.data.errors.BadInputError` naming the file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.utils import TraceKeys
from pydicom.misc import is_dicom

from glam_bundle.constants import (
    DICOM_SUFFIXES,
    GRAY_CHANNEL_TOLERANCE,
    ITK_SUFFIXES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    NIFTI_SUFFIXES,
    PIL_SUFFIXES,
)
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
        if os.path.islink(path):  # exists() follows links: a loop or a missing target lands here
            try:
                os.stat(path)
            except OSError as error:
                raise BadInputError(path, f"a symbolic link that leads to no file ({error.strerror})") from None
        raise BadInputError(path, "file not found")
    if os.path.isdir(path):
        raise BadInputError(path, "is a directory; expected an image file")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "empty file (0 bytes)")


# Where the limits are raised, named in the error.
SIZE_LIMIT_SETTING = (
    "MammogramReader(max_pixels=..., max_bytes=...); in a config, load_transforms' max_pixels / max_bytes"
)


@dataclass
class DeclaredSize:
    """What a file's header says its decoded pixel data will be, before any pixel is read.

    Attributes:
        shape: the pixel grid (rows, columns[, frames or slices...]).
        bits: bits per sample of the decoded array (rounded up to whole bytes when sizing).
        samples: samples (channels) per pixel.
    """

    shape: tuple[int, ...]
    bits: int
    samples: int = 1

    @property
    def pixels(self) -> int:
        return math.prod(int(n) for n in self.shape) if self.shape else 0

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * max(int(self.samples), 1) * max(math.ceil(int(self.bits) / 8), 1)

    def describe(self) -> str:
        grid = "x".join(str(int(n)) for n in self.shape)
        channels = f" x {self.samples} channels" if self.samples > 1 else ""
        return f"{grid} pixels{channels} at {self.bits} bits = {_megabytes(self.decoded_bytes)} decoded"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e6:.2g} MB"


def normalise_size_limit(name: str, value: int | None) -> int | None:
    """A size limit as a positive int, ``None`` (no limit) for None/0/negative; anything else a ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)):
        raise ValueError(f"{name} must be a number of {'pixels' if 'pixel' in name else 'bytes'} or None, got {value!r}.")
    return int(value) if value > 0 else None


def check_declared_size(
    path: str, declared: DeclaredSize, max_pixels: int | None = MAX_IMAGE_PIXELS, max_bytes: int | None = MAX_IMAGE_BYTES
) -> None:
    """Raise BadInputError when ``declared`` exceeds ``max_pixels`` or ``max_bytes`` (None: no limit)."""
    over = []
    if max_pixels is not None and declared.pixels > max_pixels:
        over.append(f"max_pixels={max_pixels:,}")
    if max_bytes is not None and declared.decoded_bytes > max_bytes:
        over.append(f"max_bytes={max_bytes:,} ({_megabytes(max_bytes)})")
    if over:
        raise BadInputError(
            path,
            f"declares {declared.describe()}, over the limit ({', '.join(over)}); refused before decoding. "
            f"If the file is genuine, raise the limit: {SIZE_LIMIT_SETTING}",
        )


def pil_declared_size(path: str) -> DeclaredSize:
    """Size from a PIL-readable file's header (PNG IHDR, JPEG SOF, TIFF IFD, PGM header), decoding nothing.

    The image plugins are called directly, as ``Image.open`` does, but without Pillow's own decompression-bomb
    check, so that the bundle's limit (which names the file and the setting) decides.
    """
    from PIL import Image

    Image.init()
    with open(path, "rb") as handle:
        prefix = handle.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None:
                verdict = accept(prefix)
                if not verdict or isinstance(verdict, str):
                    continue
            handle.seek(0)
            try:
                image = factory(handle, path)
            except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError, KeyError):
                continue
            width, height = image.size
            mode = image.mode
            bands = len(image.getbands())
            # Only the first frame of a multi-page file is decoded.
            bits = 16 if mode.startswith("I;16") else 32 if mode.startswith(("I", "F")) else 8
            return DeclaredSize((height, width), bits, bands)
    raise BadInputError(path, f"truncated, corrupt or unreadable {format_name(path)} file (no image header found)")


def nifti_declared_size(path: str) -> DeclaredSize:
    """Size from a NIfTI header (shape and data type), decoding nothing."""
    import nibabel as nib

    header = nib.load(path).header  # lazy: the data stay on disk
    dtype = np.dtype(header.get_data_dtype())
    return DeclaredSize(tuple(int(n) for n in header.get_data_shape()), dtype.itemsize * 8)


# MetaImage ElementType -> bytes per sample.
_MET_BYTES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "FLOAT": 4, "LONG": 8,
              "ULONG": 8, "LONG_LONG": 8, "ULONG_LONG": 8, "DOUBLE": 8}


def _nrrd_type_bytes(text: str) -> int | None:
    t = text.strip().lower()
    if t == "block":
        return None
    if "64" in t or "long" in t or "double" in t:
        return 8
    if "16" in t or "short" in t:
        return 2
    if "8" in t or "char" in t:
        return 1
    if "32" in t or "int" in t or "float" in t:
        return 4
    return None


def itk_declared_size(path: str) -> DeclaredSize | None:
    """Size from a MetaImage (.mha/.mhd) or NRRD (.nrrd/.nhdr) header, decoding nothing.

    The header text is parsed here (importing ITK costs seconds and ~0.5 GB); a header this parser does not
    understand is read by ITK's ``ImageIO.ReadImageInformation`` (no pixel data). None when neither can tell.
    """
    declared = _text_header_declared_size(path)
    return declared if declared is not None else _itk_io_declared_size(path)


def _itk_io_declared_size(path: str) -> DeclaredSize | None:
    try:
        import itk

        image_io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    except Exception:  # no ITK, or an ITK without this factory API: ITK's reader decides later
        return None
    if image_io is None:
        return None
    image_io.SetFileName(path)
    image_io.ReadImageInformation()
    shape = tuple(int(image_io.GetDimensions(i)) for i in range(image_io.GetNumberOfDimensions()))
    return DeclaredSize(shape[::-1], int(image_io.GetComponentSize()) * 8, int(image_io.GetNumberOfComponents()))


def _text_header_declared_size(path: str, max_header_bytes: int = 1 << 16) -> DeclaredSize | None:
    with open(path, "rb") as handle:
        head = handle.read(max_header_bytes)
    text = head.decode("latin-1")
    fields: dict[str, str] = {}
    if text.startswith("NRRD"):
        for line in text.splitlines()[1:]:
            if not line.strip():
                break  # a blank line ends the header
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.lstrip("=").strip()
        sizes, element = fields.get("sizes"), _nrrd_type_bytes(fields.get("type", ""))
        if not sizes or element is None:
            return None
        try:
            shape = tuple(int(n) for n in sizes.split())
        except ValueError:
            return None
        return DeclaredSize(shape[::-1], element * 8)  # fastest axis first: (x, y) -> (rows, columns)
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z_]+)\s*=\s*(.*)$", line)
        if not match:
            continue
        fields[match.group(1).strip().lower()] = match.group(2).strip()
        if match.group(1).strip().lower() == "elementdatafile":
            break
    dims, element = fields.get("dimsize"), _MET_BYTES.get(fields.get("elementtype", "").upper().replace("MET_", ""))
    if not dims or element is None:
        return None
    try:
        shape = tuple(int(n) for n in dims.split())
        channels = int(fields.get("elementnumberofchannels", "1") or 1)
    except ValueError:
        return None
    return DeclaredSize(shape[::-1], element * 8, max(channels, 1))  # (x, y) -> (rows, columns)


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


def gray_from_channels(array: np.ndarray, path: PathLike) -> np.ndarray:
    """(H, W) gray image from an (H, W, C) gray+alpha / RGB / RGBA array whose colour channels agree.

    Mammograms exported as RGB(A) or palette images (screenshots, viewers, dataset conversions) hold a gray image
    in every colour channel: the channels' mean is returned when no pixel's channels spread by more than
    ``GRAY_CHANNEL_TOLERANCE`` of the value range and the alpha channel, if any, is opaque everywhere.

    Raises:
        BadInputError: a colour image (coloured annotations, a photograph) or a transparent one, by name.
    """
    channels = array.shape[-1]
    name = f"{CHANNEL_NAMES[channels]} ({channels} channels)"
    colour, alpha = (array[..., :-1], array[..., -1]) if channels in (2, 4) else (array, None)
    if alpha is not None and alpha.min() != alpha.max():
        raise BadInputError(path, f"{name} with transparent pixels; expected one grayscale channel")
    colour = np.asarray(colour, dtype=np.float32)
    spread = colour.max(axis=-1) - colour.min(axis=-1)
    tolerance = max(GRAY_CHANNEL_TOLERANCE * float(colour.max() - colour.min()), 1.0)
    if spread.max() > tolerance:
        share = float(np.mean(spread > tolerance))
        raise BadInputError(
            path,
            f"{name} in colour ({share:.1%} of the pixels; e.g. coloured annotations); expected one grayscale "
            "channel: export the mammogram itself",
        )
    return colour.mean(axis=-1)


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
        BadInputError: a colour or transparent image (gray stored as RGB(A) is taken:
            :func:`gray_from_channels`), non-2-D array, too small, NaN/inf values, or constant image.
    """
    if array.ndim == 3 and array.shape[-1] in CHANNEL_NAMES:
        array = gray_from_channels(array, path)
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
        # "DICM" magic after the 128-byte preamble, or a bare data set (no preamble, no File Meta header)
        return os.path.isfile(path) and (is_dicom(path) or starts_as_bare_dicom_dataset(path))
    except OSError:
        return False


def starts_as_bare_dicom_dataset(path: str) -> bool:
    """Does the file begin like a DICOM data set written without preamble and File Meta header (ACR-NEMA style,
    older archives)? Its first element is then a little-endian (0002,xxxx) File Meta or (0008,xxxx) tag followed by
    an explicit VR (two capital letters) or an implicit VR's even 32-bit length."""
    with open(path, "rb") as file:
        head = file.read(8)
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00") or head[2] % 2:
        return False
    explicit_vr = head[4:6].isalpha() and head[4:6].isupper()
    implicit_length = int.from_bytes(head[4:8], "little")
    return explicit_vr or (implicit_length % 2 == 0 and implicit_length < 1024)


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
