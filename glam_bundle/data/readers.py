"""Mammogram readers for MONAI's ``LoadImage`` / ``LoadImaged``, in (H, W) order with input validation.

Two readers:

- :class:`MammogramDicomReader`: a :class:`monai.data.PydicomReader` that returns what a radiologist sees:
  stored values through the modality LUT (rescale slope/intercept) and, optionally, the VOI LUT or window,
  with MONOCHROME1 inverted so that dense tissue is bright. Laterality and view go into the metadata.
- :class:`MammogramReader`: the one reader the bundle configs name. It dispatches on the file suffix to
  PIL, :class:`MammogramDicomReader`, nibabel or ITK, returns a 2-D float32 image of shape (H, W) and
  checks that the image is usable, raising :class:`glam_bundle.data.errors.BadInputError` otherwise.

Conventions (shared by the whole bundle):

- Arrays are (H, W): index 0 is the row (top to bottom), index 1 the column. MONAI's readers default to
  (W, H); here PIL uses ``reverse_indexing=False``, pydicom ``swap_ij=False`` and ITK ``reverse_indexing=True``.
- NIfTI: we store 2-D images with the NIfTI data array in (H, W) order, i.e. ``data[i, j]`` is row ``i``,
  column ``j`` -- what MONAI's ``NibabelWriter`` produces from a (1, H, W) tensor. So the nibabel array is
  used as it is, without a transpose. (A NIfTI made by ITK-based tools from a PNG stores (x, y) = (W, H)
  and would load transposed; convert such files first.)
- Metadata: every format yields the same keys, so that batches mixing formats still collate:
  ``spatial_shape`` (H, W), ``original_channel_dim`` ``"no_channel"`` (so ``EnsureChannelFirstd`` or
  ``LoadImaged(ensure_channel_first=True)`` gives (1, H, W)), ``affine`` / ``original_affine`` (4x4, columns
  in (row, column) index order), ``spacing`` (row, column), ``space``, ``source_format``, ``laterality``
  and ``view``. ``LoadImage`` adds ``filename_or_obj``. A missing laterality or view is stored as the
  string ``"none"`` (``monai.utils.TraceKeys.NONE``), as MONAI's own readers do, because PyTorch's
  ``default_collate`` cannot batch ``None``.

Errors: ``LoadImage`` catches exceptions raised by ``reader.read`` and then silently tries its default
readers, which would hide the problem (PIL, for one, opens a truncated PNG without complaint). Both readers
therefore never raise from ``read`` for a bad file: ``read`` records the :class:`BadInputError` and
``get_data`` raises it, naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.data import ITKReader, NibabelReader, PILReader, PydicomReader
from monai.data.image_reader import ImageReader
from monai.data.utils import affine_to_spacing
from monai.utils import MetaKeys, SpaceKeys, TraceKeys, ensure_tuple
from pydicom import dcmread
from pydicom.misc import is_dicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from glam_bundle.constants import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES
from glam_bundle.data.errors import BadInputError

__all__ = [
    "MammogramDicomReader",
    "MammogramReader",
    "check_image_array",
]


# DICOM tags kept in the pruned metadata: MONAI's geometry tags plus ImagerPixelSpacing, which
# projection radiographs (MG) carry instead of PixelSpacing.
_IMAGER_PIXEL_SPACING = "00181164"
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CHANNEL_NAMES = {2: "gray+alpha image", 3: "RGB image", 4: "RGBA image"}


@dataclass
class _DeferredError:
    """Stands in for an image object when reading failed; ``get_data`` raises ``error``."""

    error: BadInputError


@dataclass
class _DecodedImage:
    """A decoded 2-D (or not yet validated) array with its uniform metadata."""

    path: str
    array: np.ndarray
    meta: dict = field(default_factory=dict)


def _missing(value: Any) -> Any:
    """Metadata placeholder for an absent value (collatable, unlike ``None``)."""
    return str(TraceKeys.NONE) if value is None else value


def _check_file(path: str) -> None:
    """Raise BadInputError for a path that is not a readable file."""
    if not os.path.exists(path):
        raise BadInputError(path, "file not found")
    if os.path.isdir(path):
        raise BadInputError(path, "is a directory; expected an image file")


def _format_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _normalise_min_size(min_size: int | Sequence[int] | None) -> tuple[int, int]:
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
    if array.ndim == 3 and array.shape[-1] in _CHANNEL_NAMES:
        channels = array.shape[-1]
        raise BadInputError(
            path, f"{_CHANNEL_NAMES[channels]} ({channels} channels); expected one grayscale channel"
        )
    if array.ndim != 2:
        raise BadInputError(path, f"expected a 2-D grayscale image, got an array of shape {tuple(array.shape)}")
    height, width = array.shape
    min_height, min_width = _normalise_min_size(min_size)
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


class MammogramDicomReader(PydicomReader):
    """PydicomReader for single-frame mammography DICOM, returning display values in (H, W) order.

    Pixel values go through pydicom's modality LUT (RescaleSlope/RescaleIntercept or a Modality LUT
    Sequence) and, with ``apply_voi=True``, the VOI LUT or the first window centre/width when the file has
    one. MONOCHROME1 images are inverted within the value range reachable by the stored bits (mapped by the
    same LUTs), so that dense tissue is bright. Output is float32. Compressed transfer syntaxes pydicom
    decodes natively (RLE Lossless among them) need no extra package.

    Metadata added: ``"laterality"`` from ImageLaterality (0020,0062), else Laterality (0020,0060);
    ``"view"`` from ViewPosition (0018,5101), e.g. ``"CC"`` or ``"MLO"``; each ``"none"`` when absent.
    Mammograms are projection images without ImageOrientationPatient/ImagePositionPatient; their affine is
    then diag(row spacing, column spacing, 1, 1) from PixelSpacing or ImagerPixelSpacing (1 when absent).

    DICOM-level problems (missing file, not a DICOM, no pixel data, undecodable pixel data, multi-frame)
    raise :class:`BadInputError` from ``get_data``. Content checks (size, constant, NaN) are done by
    :class:`MammogramReader`.

    Args:
        apply_voi: apply the VOI LUT / windowing stored in the file.
        channel_dim, affine_lps_to_ras, prune_metadata, kwargs: as for :class:`monai.data.PydicomReader`;
            ``swap_ij`` is always ``False`` (rows first).
    """

    def __init__(
        self,
        apply_voi: bool = True,
        channel_dim: str | int | None = None,
        affine_lps_to_ras: bool = True,
        prune_metadata: bool = True,
        **kwargs,
    ):
        super().__init__(
            channel_dim=channel_dim,
            affine_lps_to_ras=affine_lps_to_ras,
            swap_ij=False,
            prune_metadata=prune_metadata,
            **kwargs,
        )
        self.apply_voi = apply_voi

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for ``.dcm``/``.dicom`` files and for files carrying the DICM magic bytes."""
        return all(_is_dicom_file(f"{name}") for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """Read one DICOM file per path (no series folders); failures are deferred to ``get_data``.

        Returns:
            a pydicom Dataset (or a stand-in holding the error), or a list of them for several paths.
        """
        filenames = [f"{name}" for name in ensure_tuple(data)]
        kwargs_ = {**self.kwargs, **kwargs}
        datasets: list = []
        for name in filenames:
            try:
                _check_file(name)
                datasets.append(dcmread(name, **kwargs_))
            except BadInputError as error:
                datasets.append(_DeferredError(error))
            except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct/KeyError... on bad files
                problem = f"corrupt or non-DICOM file ({_format_exception(exc)})"
                datasets.append(_DeferredError(BadInputError(name, problem)))
        self.filenames = filenames
        self.has_series = False
        return datasets if len(filenames) > 1 else datasets[0]

    def get_data(self, data) -> tuple[np.ndarray, dict]:
        """Return the float32 (H, W) display-value array and metadata; raise BadInputError for a bad file."""
        for item in ensure_tuple(data):
            if isinstance(item, _DeferredError):
                raise item.error
        return super().get_data(data)

    def _get_meta_dict(self, img) -> dict:
        metadata = super()._get_meta_dict(img)
        imager_pixel_spacing = img.get("ImagerPixelSpacing")
        if self.prune_metadata and imager_pixel_spacing is not None:
            metadata[_IMAGER_PIXEL_SPACING] = {"vr": "DS", "Value": [float(v) for v in imager_pixel_spacing]}
        metadata["laterality"] = _missing(_dicom_laterality(img))
        metadata["view"] = _missing(_dicom_text(img, "ViewPosition"))
        return metadata

    def _get_affine(self, metadata: dict, lps_to_ras: bool = True) -> np.ndarray:
        if "00200037" in metadata and "00200032" in metadata:
            return super()._get_affine(metadata, lps_to_ras)
        # Projection radiograph: no patient-space geometry, only the pixel pitch (no warning needed).
        affine = np.eye(4)
        for tag in ("00280030", _IMAGER_PIXEL_SPACING):
            values = metadata.get(tag, {}).get("Value")
            if values and len(values) >= 2 and np.isfinite(np.asarray(values[:2], dtype=float)).all():
                affine[0, 0], affine[1, 1] = float(values[0]), float(values[1])
                break
        return affine

    def _get_array_data(self, img, filename) -> np.ndarray:
        frames = int(getattr(img, "NumberOfFrames", 1) or 1)
        if frames > 1:
            raise BadInputError(filename, f"multi-frame DICOM ({frames} frames); expected one 2-D image")
        if not any(keyword in img for keyword in _PIXEL_DATA_KEYWORDS):
            raise BadInputError(filename, "DICOM has no pixel data")
        try:
            stored = img.pixel_array
        except Exception as exc:  # truncated or undecodable pixel data: pydicom raises various types
            raise BadInputError(filename, f"cannot decode DICOM pixel data ({_format_exception(exc)})") from exc
        values = self._to_display(stored, img)
        if str(getattr(img, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
            low, high = self._display_range(img)
            values = (low + high) - values
        return np.asarray(values, dtype=np.float32)

    def _to_display(self, values: np.ndarray, img) -> np.ndarray:
        """Stored values -> modality values -> (optionally) VOI values."""
        values = apply_modality_lut(values, img)
        if self.apply_voi:
            values = apply_voi_lut(values, img)  # unchanged when the file has no VOI LUT or window
        return np.asarray(values, dtype=np.float64)

    def _display_range(self, img) -> tuple[float, float]:
        """Lowest and highest display values reachable from the stored bit range."""
        bits = int(getattr(img, "BitsStored", 16) or 16)
        signed = int(getattr(img, "PixelRepresentation", 0) or 0) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = self._to_display(np.array([lo, hi], dtype=np.int64 if signed else np.uint64), img)
        return float(ends.min()), float(ends.max())


def _dicom_text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def _dicom_laterality(ds) -> str | None:
    return _dicom_text(ds, "ImageLaterality") or _dicom_text(ds, "Laterality")


def _lower_name(path: str) -> str:
    return os.path.basename(path).lower()


def _is_dicom_file(path: str) -> bool:
    name = _lower_name(path)
    if name.endswith(DICOM_SUFFIXES):
        return True
    if _backend_by_suffix(path) is not None:
        return False
    try:
        return os.path.isfile(path) and is_dicom(path)  # "DICM" magic after the 128-byte preamble
    except OSError:
        return False


def _backend_by_suffix(path: str) -> str | None:
    name = _lower_name(path)
    for backend, suffixes in (
        ("pil", PIL_SUFFIXES),
        ("dicom", DICOM_SUFFIXES),
        ("nifti", NIFTI_SUFFIXES),
        ("itk", ITK_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return backend
    return None


def _backend_for(path: str) -> str | None:
    """Backend name for a path: by suffix, else ``"dicom"`` for DICM-magic files, else None."""
    backend = _backend_by_suffix(path)
    if backend is None and _is_dicom_file(path):
        return "dicom"
    return backend


def _format_name(path: str) -> str:
    """Short human name of the file type for messages, e.g. ``"PNG"``."""
    name = _lower_name(path)
    if name.endswith(".nii.gz"):
        return "NIfTI"
    suffix = os.path.splitext(name)[1].lstrip(".").upper()
    return {"JPG": "JPEG", "TIF": "TIFF", "NII": "NIfTI", "DCM": "DICOM", "": "DICOM"}.get(suffix, suffix)


def _pil_to_array_mode(image):
    """PIL converter: expand palette images to their colours (indices are not intensities)."""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image


def _uniform_affine(affine: np.ndarray | None) -> np.ndarray:
    """Embed a (k+1)x(k+1) affine (k = 2 or 3) in a 4x4 one; identity when None."""
    out = np.eye(4)
    if affine is None:
        return out
    affine = np.asarray(affine, dtype=np.float64)
    k = affine.shape[0] - 1
    out[:k, :k] = affine[:k, :k]
    out[:k, 3] = affine[:k, k]
    return out


def _itk_affine_to_row_col(affine: np.ndarray) -> np.ndarray:
    """ITK affines index (x, y[, z]) = (column, row); reorder to our (row, column[, z]) arrays."""
    affine = _uniform_affine(affine)
    affine[:, [0, 1]] = affine[:, [1, 0]]
    return affine


def _squeeze_trailing_singletons(array: np.ndarray) -> np.ndarray:
    """(H, W, 1, ...) -> (H, W, ...): NIfTI stores 2-D images with singleton z / time axes."""
    singletons = tuple(axis for axis in range(2, array.ndim) if array.shape[axis] == 1)
    return np.squeeze(array, axis=singletons) if singletons else array


class MammogramReader(ImageReader):
    """One reader for every mammogram format the bundle accepts, returning float32 (H, W) images.

    Dispatch on the (lower-case) file suffix:

    - ``.png .jpg .jpeg .tif .tiff .pgm .ppm .bmp``: ``PILReader(reverse_indexing=False)``; 16-bit PNG keeps
      its 16-bit values, palette images are expanded to colour (and then rejected as RGB);
    - ``.dcm .dicom``, or no known suffix and the DICM magic bytes: :class:`MammogramDicomReader`;
    - ``.nii .nii.gz``: ``NibabelReader``, array used as stored, i.e. data[i, j] = row i, column j (see the
      module docstring); trailing singleton axes are dropped;
    - ``.mha .mhd .nrrd .nhdr``: ``ITKReader(reverse_indexing=True)``; a leading singleton z axis is dropped.

    Validation (raising :class:`BadInputError` whose message starts with the path, from ``get_data``):
    missing file, unsupported type, unreadable/truncated/corrupt file, DICOM without pixel data,
    multi-channel (e.g. "RGB image (3 channels); expected one grayscale channel") or non-2-D data,
    image smaller than ``min_size``, NaN/inf values, and a constant image (e.g. "all-zero image").

    Several paths are stacked into a (N, H, W) array with ``original_channel_dim`` 0 (MONAI's behaviour);
    all must have the same shape.

    Args:
        min_size: smallest accepted (H, W) -- by default one 512x512 patch; an int means a square;
            0 or None disables the check.
        allow_constant: accept constant images. Use ``True`` for lesion masks, which are all-zero when a
            breast has no lesion of that class.
        apply_voi: apply the DICOM VOI LUT / window (see :class:`MammogramDicomReader`).

    Example (a bundle config)::

        {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": true,
         "reader": {"_target_": "glam_bundle.data.readers.MammogramReader"}}
        {"_target_": "LoadImaged", "keys": ["mask_benign", "mask_malignant"], "ensure_channel_first": true,
         "reader": {"_target_": "glam_bundle.data.readers.MammogramReader", "allow_constant": true}}
    """

    def __init__(
        self,
        min_size: int | Sequence[int] | None = (512, 512),
        allow_constant: bool = False,
        apply_voi: bool = True,
    ):
        super().__init__()
        self.min_size = _normalise_min_size(min_size)
        self.allow_constant = allow_constant
        self.apply_voi = apply_voi
        self._backends: dict[str, ImageReader] = {}

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every path has a supported suffix (or is a suffix-less DICOM file)."""
        return all(_backend_for(f"{name}") is not None for name in ensure_tuple(filename))

    def _backend(self, name: str) -> ImageReader:
        # Built on first use: importing itk takes seconds and is not needed for PNG/DICOM-only datasets.
        if name not in self._backends:
            factories = {
                "pil": lambda: PILReader(converter=_pil_to_array_mode, reverse_indexing=False),
                "dicom": lambda: MammogramDicomReader(apply_voi=self.apply_voi),
                "nifti": lambda: NibabelReader(),
                "itk": lambda: ITKReader(reverse_indexing=True),
            }
            self._backends[name] = factories[name]()
        return self._backends[name]

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """Decode each path; a failure is recorded and raised later by ``get_data`` (see module docstring).

        Args:
            data: one path or a sequence of paths.
            kwargs: ignored (kept for the ``ImageReader`` interface).

        Returns:
            one decoded image object, or a list of them for several paths.
        """
        images = [self._read_one(f"{name}") for name in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def _read_one(self, path: str) -> _DecodedImage | _DeferredError:
        try:
            _check_file(path)
            backend = _backend_for(path)
            if backend is None:
                raise BadInputError(
                    path,
                    "unsupported file type; expected one of "
                    + " ".join(PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + ITK_SUFFIXES),
                )
            array, meta = getattr(self, f"_decode_{backend}")(path)
            return _DecodedImage(path, array, meta)
        except BadInputError as error:
            return _DeferredError(error)
        except Exception as exc:  # each library has its own exception types for broken files
            problem = f"truncated, corrupt or unreadable {_format_name(path)} file ({_format_exception(exc)})"
            return _DeferredError(BadInputError(path, problem))

    def _decode_pil(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("pil")
        image = reader.read(path)
        try:
            array, _ = reader.get_data(image)  # decodes the pixels: truncation shows up here
        finally:
            image.close()
        return array, {"source_format": "PIL"}

    def _decode_dicom(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("dicom")
        array, header = reader.get_data(reader.read(path))
        meta = {
            "source_format": "DICOM",
            MetaKeys.AFFINE: _uniform_affine(header[MetaKeys.AFFINE]),
            "laterality": header.get("laterality", _missing(None)),
            "view": header.get("view", _missing(None)),
        }
        return array, meta

    def _decode_nifti(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("nifti")
        array, header = reader.get_data(reader.read(path))
        return _squeeze_trailing_singletons(np.asarray(array)), {
            "source_format": "NIfTI",
            MetaKeys.AFFINE: _uniform_affine(header[MetaKeys.AFFINE]),
        }

    def _decode_itk(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("itk")
        image = reader.read(path)
        array, header = reader.get_data(image)
        if image.GetNumberOfComponentsPerPixel() == 1 and array.ndim == 3 and array.shape[0] == 1:
            array = array[0]  # (z=1, H, W) -> (H, W)
        # ITKReader returns a view into the ITK image's buffer, freed with `image`: copy it out.
        return np.array(array, copy=True), {
            "source_format": "ITK",
            MetaKeys.AFFINE: _itk_affine_to_row_col(header[MetaKeys.AFFINE]),
        }

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Validate the decoded image(s) and return ``(array, metadata)``.

        Returns:
            float32 array (H, W) -- or (N, H, W) for N paths -- and the uniform metadata described in the
            module docstring.

        Raises:
            BadInputError: the file is missing, unreadable or fails a content check.
        """
        arrays, first_meta, first_shape = [], None, None
        for item in ensure_tuple(img):
            if isinstance(item, _DeferredError):
                raise item.error
            array = check_image_array(item.array, item.path, self.min_size, self.allow_constant)
            if first_shape is None:
                first_shape, first_meta = array.shape, self._metadata(item, array.shape)
            elif array.shape != first_shape:
                raise BadInputError(item.path, f"shape {array.shape} differs from the first file's {first_shape}")
            arrays.append(array)
        if len(arrays) == 1:
            return arrays[0], first_meta
        first_meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), first_meta

    @staticmethod
    def _metadata(item: _DecodedImage, shape: tuple[int, int]) -> dict:
        affine = item.meta.get(MetaKeys.AFFINE, np.eye(4))
        return {
            MetaKeys.SPATIAL_SHAPE: np.asarray(shape, dtype=np.int64),
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            "spacing": affine_to_spacing(affine, r=2),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "source_format": item.meta["source_format"],
            "laterality": item.meta.get("laterality", _missing(None)),
            "view": item.meta.get("view", _missing(None)),
        }
