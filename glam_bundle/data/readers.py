"""Mammogram readers for MONAI's ``LoadImage`` / ``LoadImaged``, in (H, W) order with input validation.

Two readers (the DICOM one in :mod:`glam_bundle.data.dicom_reader`, the shared checks in
:mod:`glam_bundle.data.image_checks`; both re-exported here):

- :class:`MammogramDicomReader`: a :class:`monai.data.PydicomReader` that returns what a radiologist sees:
  stored values through the modality LUT (rescale slope/intercept) and, optionally, the VOI LUT or window,
  with MONOCHROME1 inverted so that dense tissue is bright. Laterality and view go into the metadata.
- :class:`MammogramReader`: the one reader the bundle configs name. It dispatches on the file suffix to
  PIL, :class:`MammogramDicomReader`, nibabel or ITK, returns a 2-D float32 image of shape (H, W) and
  checks that the image is usable, raising :class:`glam_bundle.data.errors.BadInputError` otherwise.

Conventions (shared by the whole bundle):

- Arrays are (H, W): index 0 is the row (top to bottom), index 1 the column. MONAI's readers default to
  (W, H); here PIL uses ``reverse_indexing=False``, pydicom ``swap_ij=False`` and ITK ``reverse_indexing=True``.
- NIfTI: the data array's first axis is x, the image's columns, and the second y, its rows -- how ITK,
  SimpleITK, dcm2niix, 3D Slicer, MONAI's writers (from MONAI's (x, y)-ordered tensors) and MONAI Label's
  DICOMweb datastore (which converts each DICOM to NIfTI with ITK) store 2-D images -- so ``data[i, j]`` is
  column ``i``, row ``j`` and the nibabel array is transposed to (H, W). A trailing singleton axis (a 2-D
  image saved as a one-slice volume) is dropped first.
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

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from monai.config import PathLike
from monai.data import ITKReader, NibabelReader, PILReader
from monai.data.image_reader import ImageReader
from monai.data.utils import affine_to_spacing
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from glam_bundle.constants import (
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    NIFTI_SUFFIXES,
    PIL_SUFFIXES,
)
from glam_bundle.data.dicom_reader import MammogramDicomReader, plausible_mammogram_spacing
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.image_checks import (
    DeferredError,
    backend_for,
    check_declared_size,
    check_file,
    check_image_array,
    format_exception,
    format_name,
    itk_declared_size,
    missing_meta,
    nifti_declared_size,
    normalise_min_size,
    normalise_size_limit,
    pil_declared_size,
)

__all__ = [
    "MammogramDicomReader",
    "MammogramReader",
    "check_image_array",
]




_FILE_HINT_KEYS = ("film_hint", "film_hint_source", "file_spacing_mm", "file_spacing_source", "lossy_compression",
                   "patient_orientation")
# PIL formats whose compression alters pixel values (ringing along edges): the film pixel rule needs to know.
_LOSSY_PIL_FORMATS = ("JPEG", "MPO", "JPEG2000", "WEBP")


@dataclass
class _DecodedImage:
    """A decoded 2-D (or not yet validated) array with its uniform metadata."""

    path: str
    array: np.ndarray
    meta: dict = field(default_factory=dict)


_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_bomb_limit_at_least(max_pixels: int | None):
    """Let Pillow decode what the bundle's own limit (already checked from the header) accepted.

    Pillow refuses images over ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 Mpixel) on its own; when a user
    raises ``max_pixels`` beyond that, Pillow's global limit is lifted for the duration of the decode.
    """
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is None or (max_pixels is not None and max_pixels <= current):
        yield
        return
    with _PIL_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max(current, max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = current


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


def _xy_affine_to_row_col(affine: np.ndarray) -> np.ndarray:
    """ITK and NIfTI affines index (x, y[, z]) = (column, row); reorder to our (row, column[, z]) arrays."""
    affine = _uniform_affine(affine)
    affine[:, [0, 1]] = affine[:, [1, 0]]
    return affine


def _affine_spacing_hint(affine: np.ndarray, source: str) -> dict:
    """The (row, col) spacing of a NIfTI/ITK affine as the file's spacing when it is a plausible mammogram
    pitch (a converted PNG's placeholder 1 mm is not); nothing otherwise."""
    spacing = [float(v) for v in affine_to_spacing(affine, r=2)]
    if all(plausible_mammogram_spacing(v) for v in spacing):
        return {"file_spacing_mm": spacing, "file_spacing_source": source}
    return {}


def _squeeze_trailing_singletons(array: np.ndarray) -> np.ndarray:
    """(H, W, 1, ...) -> (H, W, ...): NIfTI stores 2-D images with singleton z / time axes."""
    singletons = tuple(axis for axis in range(2, array.ndim) if array.shape[axis] == 1)
    return np.squeeze(array, axis=singletons) if singletons else array


# Formats met in mammography archives that no reader here decodes, and what to do instead.
_UNSUPPORTED_FORMAT_ADVICE = {
    ".ljpeg": "DDSM's original lossless JPEG, which standard decoders do not read: use the case's CBIS-DDSM DICOM, "
              "or convert it to a 16-bit PNG with DDSM's own decoder",
}


def unsupported_type_problem(path: str) -> str:
    """The problem of a file no reader decodes: what it is when known, and the suffixes that are read."""
    advice = _UNSUPPORTED_FORMAT_ADVICE.get(os.path.splitext(path)[1].lower())
    expected = " ".join(PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + ITK_SUFFIXES)
    return f"{advice}; readable types: {expected}" if advice else f"unsupported file type; expected one of {expected}"


class MammogramReader(ImageReader):
    """One reader for every mammogram format the bundle accepts, returning float32 (H, W) images.

    Dispatch on the (lower-case) file suffix:

    - ``.png .jpg .jpeg .tif .tiff .pgm .ppm .bmp``: ``PILReader(reverse_indexing=False)``; 16-bit PNG keeps
      its 16-bit values, palette images are expanded to colour; an RGB(A) image whose channels agree is read
      as gray (:func:`glam_bundle.data.image_checks.gray_from_channels`), one in colour is refused;
    - ``.dcm .dicom``, or no known suffix and the DICM magic bytes: :class:`MammogramDicomReader`;
    - ``.nii .nii.gz``: ``NibabelReader``; data[i, j] = column i, row j, as ITK and MONAI store it, transposed
      to (H, W) (see the module docstring); trailing singleton axes are dropped;
    - ``.mha .mhd .nrrd .nhdr``: ``ITKReader(reverse_indexing=True)``; a leading singleton z axis is dropped.

    Validation (raising :class:`BadInputError` whose message starts with the path, from ``get_data``):
    missing file, unsupported type, unreadable/truncated/corrupt file, DICOM without pixel data,
    colour (e.g. "RGB image (3 channels) in colour (0.3% of the pixels; ...)") or non-2-D data,
    image smaller than ``min_size``, NaN/inf values, and a constant image (e.g. "all-zero image"), an empty
    file ("empty file (0 bytes)"), and a file whose header declares more than ``max_pixels`` pixels or
    ``max_bytes`` decoded bytes (checked from the header -- PNG IHDR, JPEG/TIFF/PGM headers, DICOM
    Rows/Columns/BitsAllocated/SamplesPerPixel/NumberOfFrames, NIfTI header, MetaImage/NRRD header --
    before any pixel is decoded, e.g. "declares 13000x13000 pixels at 16 bits = 338 MB decoded, over the
    limit ...").

    Several paths are stacked into a (N, H, W) array with ``original_channel_dim`` 0 (MONAI's behaviour);
    all must have the same shape.

    Args:
        min_size: smallest accepted (H, W) -- by default one 512x512 patch; an int means a square;
            0 or None disables the check.
        allow_constant: accept constant images. Use ``True`` for lesion masks, which are all-zero when a
            breast has no lesion of that class.
        apply_voi: apply the DICOM VOI LUT / window (see :class:`MammogramDicomReader`).
        max_pixels: largest accepted number of pixels a file may declare (default
            ``glam_bundle.constants.MAX_IMAGE_PIXELS`` = 8000x8000 = 64 Mpixel); None or 0: no limit.
        max_bytes: largest accepted decoded size in bytes (default ``glam_bundle.constants.MAX_IMAGE_BYTES`` =
            8000x8000 at 16 bits = 128 MB); None or 0: no limit. In the bundle configs both are arguments of
            ``load_transforms`` (e.g. ``"load_transforms": {..., "max_pixels": 100000000}``).

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
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        max_bytes: int | None = MAX_IMAGE_BYTES,
    ):
        super().__init__()
        self.min_size = normalise_min_size(min_size)
        self.allow_constant = allow_constant
        self.apply_voi = apply_voi
        # Private: the limits do not change what a file decodes to (and so stay out of cache fingerprints).
        self._max_pixels = normalise_size_limit("max_pixels", max_pixels)
        self._max_bytes = normalise_size_limit("max_bytes", max_bytes)
        self._backends: dict[str, ImageReader] = {}

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every path has a supported suffix (or is a suffix-less DICOM file)."""
        return all(backend_for(f"{name}") is not None for name in ensure_tuple(filename))

    def _backend(self, name: str) -> ImageReader:
        # Built on first use: importing itk takes seconds and is not needed for PNG/DICOM-only datasets.
        if name not in self._backends:
            factories = {
                "pil": lambda: PILReader(converter=_pil_to_array_mode, reverse_indexing=False),
                "dicom": lambda: MammogramDicomReader(
                    apply_voi=self.apply_voi, max_pixels=self._max_pixels, max_bytes=self._max_bytes
                ),
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

    def _read_one(self, path: str) -> _DecodedImage | DeferredError:
        try:
            check_file(path)
            backend = backend_for(path)
            if backend is None:
                raise BadInputError(path, unsupported_type_problem(path))
            self._check_header(path, backend)
            array, meta = getattr(self, f"_decode_{backend}")(path)
            return _DecodedImage(path, array, meta)
        except BadInputError as error:
            return DeferredError(error)
        except Exception as exc:  # each library has its own exception types for broken files
            problem = f"truncated, corrupt or unreadable {format_name(path)} file ({format_exception(exc)})"
            return DeferredError(BadInputError(path, problem))

    def _check_header(self, path: str, backend: str) -> None:
        """Refuse a file whose header declares more than the size limits, before decoding (DICOM: in its reader)."""
        if self._max_pixels is None and self._max_bytes is None:
            return
        declare = {"pil": pil_declared_size, "nifti": nifti_declared_size, "itk": itk_declared_size}.get(backend)
        declared = declare(path) if declare is not None else None
        if declared is not None:
            check_declared_size(path, declared, self._max_pixels, self._max_bytes)

    def _decode_pil(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("pil")
        with _pillow_bomb_limit_at_least(self._max_pixels):
            image = reader.read(path)
        try:
            lossy = str(getattr(image, "format", "") or "").upper() in _LOSSY_PIL_FORMATS
            array, _ = reader.get_data(image)  # decodes the pixels: truncation shows up here
        finally:
            image.close()
        return array, {"source_format": "PIL", "lossy_compression": lossy}

    def _decode_dicom(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("dicom")
        array, header = reader.get_data(reader.read(path))
        meta = {
            "source_format": "DICOM",
            MetaKeys.AFFINE: _uniform_affine(header[MetaKeys.AFFINE]),
            "laterality": header.get("laterality", missing_meta(None)),
            "view": header.get("view", missing_meta(None)),
            **{key: header[key] for key in _FILE_HINT_KEYS if key in header},
        }
        return array, meta

    def _decode_nifti(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("nifti")
        array, header = reader.get_data(reader.read(path))
        # NIfTI's first axis is x (the image's columns), as ITK, SimpleITK, dcm2niix, MONAI's writers and MONAI
        # Label's DICOMweb conversion store it: (x, y) -> (row, column)
        array = _squeeze_trailing_singletons(np.asarray(array))
        array = np.swapaxes(array, 0, 1) if array.ndim >= 2 else array
        affine = _xy_affine_to_row_col(header[MetaKeys.AFFINE])
        return array, {
            "source_format": "NIfTI",
            MetaKeys.AFFINE: affine,
            **_affine_spacing_hint(affine, "nifti:pixdim"),
        }

    def _decode_itk(self, path: str) -> tuple[np.ndarray, dict]:
        reader = self._backend("itk")
        image = reader.read(path)
        array, header = reader.get_data(image)
        if image.GetNumberOfComponentsPerPixel() == 1 and array.ndim == 3 and array.shape[0] == 1:
            array = array[0]  # (z=1, H, W) -> (H, W)
        # ITKReader returns a view into the ITK image's buffer, freed with `image`: copy it out.
        affine = _xy_affine_to_row_col(header[MetaKeys.AFFINE])
        return np.array(array, copy=True), {
            "source_format": "ITK",
            MetaKeys.AFFINE: affine,
            **_affine_spacing_hint(affine, "itk:spacing"),
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
            if isinstance(item, DeferredError):
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
            "laterality": item.meta.get("laterality", missing_meta(None)),
            "view": item.meta.get("view", missing_meta(None)),
            # What the file says about its origin and pixel size (DICOM; "none"/[0, 0] for other formats):
            # BreastMaskd and ResampleToSpacingd decide from these, the item and the pixels.
            "film_hint": item.meta.get("film_hint", missing_meta(None)),
            "film_hint_source": item.meta.get("film_hint_source", missing_meta(None)),
            "file_spacing_mm": list(item.meta.get("file_spacing_mm", [0.0, 0.0])),
            "file_spacing_source": item.meta.get("file_spacing_source", missing_meta(None)),
            "lossy_compression": bool(item.meta.get("lossy_compression", False)),
            # DICOM PatientOrientation "ROW\\COLUMN" (OrientBreastd reads the stored image's directions from it)
            "patient_orientation": item.meta.get("patient_orientation", missing_meta(None)),
        }
