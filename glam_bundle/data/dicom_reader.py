"""DICOM reader of the bundle: pixel values as a radiologist sees them, with laterality, view and spacing."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from monai.data import PydicomReader
from monai.config import PathLike
from monai.utils import ensure_tuple
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2.x (what MONAI Label's stack needs): the same functions lived here
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

from glam_bundle.constants import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, VIEWS
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.image_checks import (
    DeclaredSize,
    DeferredError,
    check_declared_size,
    check_file,
    format_exception,
    is_dicom_file,
    missing_meta,
    normalise_size_limit,
)

__all__ = [
    "MammogramDicomReader",
    "dicom_declared_size",
    "dicom_film_hint",
    "dicom_patient_orientation",
    "dicom_spacing",
    "dicom_view",
    "plausible_mammogram_spacing",
]

# SOP classes of images acquired by an X-ray unit (digital mammography, digital X-ray, computed radiography,
# breast tomosynthesis and its projections): the pixels come from a detector, not from a film scanner.
_ACQUIRED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX for processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG for presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG for processing",
    "1.2.840.10008.5.1.4.1.1.13.1.3": "breast tomosynthesis",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "breast projection X-ray for presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "breast projection X-ray for processing",
}
# Secondary Capture Image Storage (and its multi-frame variants): a converted image, e.g. a scanned film.
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# Acquisition tags only an X-ray unit writes (exposure, detector, compression): a converted film has none.
_ACQUISITION_KEYWORDS = ("KVP", "ExposureTime", "Exposure", "XRayTubeCurrent", "DetectorID", "BodyPartThickness",
                         "CompressionForce", "AnodeTargetMaterial", "RelativeXRayExposure")
# Film digitisers named in Manufacturer / SecondaryCaptureDeviceManufacturer of scanned-film archives.
_FILM_DIGITISERS = ("LUMISYS", "HOWTEK", "VIDAR", "DBA", "ARRAY", "KONICA LD", "ICAD", "CANON CX")

# DICOM tags kept in the pruned metadata: MONAI's geometry tags plus ImagerPixelSpacing, which
# projection radiographs (MG) carry instead of PixelSpacing.
_IMAGER_PIXEL_SPACING = "00181164"
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


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

    DICOM-level problems (missing file, not a DICOM, no pixel data, undecodable pixel data, multi-frame
    (:func:`check_single_frame`), a raw "FOR PROCESSING" image (:func:`check_for_presentation`)) raise
    :class:`BadInputError` from ``get_data``. Content checks (size, constant, NaN) are done by
    :class:`MammogramReader`.

    Size limits: the header is read first (``stop_before_pixels=True``); a file whose Rows x Columns x
    NumberOfFrames exceeds ``max_pixels``, or whose decoded size (with BitsAllocated and SamplesPerPixel)
    exceeds ``max_bytes``, is refused with a :class:`BadInputError` before its pixel data are read.

    Args:
        apply_voi: apply the VOI LUT / windowing stored in the file.
        max_pixels: largest accepted number of pixels (default ``constants.MAX_IMAGE_PIXELS``, 8000x8000);
            None: no limit.
        max_bytes: largest accepted decoded size in bytes (default ``constants.MAX_IMAGE_BYTES``, 8000x8000 at
            16 bits); None: no limit.
        channel_dim, affine_lps_to_ras, prune_metadata, kwargs: as for :class:`monai.data.PydicomReader`;
            ``swap_ij`` is always ``False`` (rows first).
    """

    def __init__(
        self,
        apply_voi: bool = True,
        channel_dim: str | int | None = None,
        affine_lps_to_ras: bool = True,
        prune_metadata: bool = True,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        max_bytes: int | None = MAX_IMAGE_BYTES,
        **kwargs,
    ):
        # Private: the limits do not change what a file decodes to (and so stay out of cache fingerprints).
        self._max_pixels = normalise_size_limit("max_pixels", max_pixels)
        self._max_bytes = normalise_size_limit("max_bytes", max_bytes)
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
        return all(is_dicom_file(f"{name}") for name in ensure_tuple(filename))

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
                check_file(name)
                header = read_dicom(name, **{**kwargs_, "stop_before_pixels": True})
                check_single_frame(name, header)
                check_declared_size(name, dicom_declared_size(header), self._max_pixels, self._max_bytes)
                check_for_presentation(name, header)
                datasets.append(read_dicom(name, **kwargs_))
            except BadInputError as error:
                datasets.append(DeferredError(error))
            except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct/KeyError... on bad files
                problem = f"corrupt or non-DICOM file ({format_exception(exc)})"
                datasets.append(DeferredError(BadInputError(name, problem)))
        self.filenames = filenames
        self.has_series = False
        return datasets if len(filenames) > 1 else datasets[0]

    def get_data(self, data) -> tuple[np.ndarray, dict]:
        """Return the float32 (H, W) display-value array and metadata; raise BadInputError for a bad file."""
        for item in ensure_tuple(data):
            if isinstance(item, DeferredError):
                raise item.error
        return super().get_data(data)

    def _get_meta_dict(self, img) -> dict:
        metadata = super()._get_meta_dict(img)
        imager_pixel_spacing = img.get("ImagerPixelSpacing")
        if self.prune_metadata and imager_pixel_spacing is not None:
            metadata[_IMAGER_PIXEL_SPACING] = {"vr": "DS", "Value": [float(v) for v in imager_pixel_spacing]}
        metadata["laterality"] = missing_meta(_dicom_laterality(img))
        metadata["view"] = missing_meta(dicom_view(img))
        metadata["patient_orientation"] = missing_meta(dicom_patient_orientation(img))
        film, film_source = dicom_film_hint(img)
        metadata["film_hint"], metadata["film_hint_source"] = missing_meta(film), missing_meta(film_source)
        spacing, spacing_source = dicom_spacing(img)
        metadata["file_spacing_mm"] = list(spacing) if spacing else [0.0, 0.0]
        metadata["file_spacing_source"] = missing_meta(spacing_source)
        metadata["lossy_compression"] = _dicom_lossy(img)
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
        if not any(keyword in img for keyword in _PIXEL_DATA_KEYWORDS):
            raise BadInputError(filename, "DICOM has no pixel data")
        try:
            stored = img.pixel_array
        except Exception as exc:  # truncated or undecodable pixel data: pydicom raises various types
            raise BadInputError(filename, f"cannot decode DICOM pixel data ({format_exception(exc)})") from exc
        padding = pixel_padding(stored, img)
        values = self._to_display(stored, img)
        if str(getattr(img, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
            low, high = self._display_range(img)
            values = (low + high) - values
        if padding is not None:
            # Padding is no image: its stored value may sit at either end (a MONOCHROME1 file padded with 0
            # turned white, and then the whole image read as a negative). It is background: the image's own black,
            # so that it and the unpadded air form one flat background.
            values[padding] = values[~padding].min()
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


def read_dicom(filename: PathLike, **kwargs):
    """``pydicom.dcmread``, also for a file written without the 128-byte preamble and File Meta header (ACR-NEMA
    style, older archives). Such a file is read with ``force=True`` and kept only when it holds an image (Rows and
    Columns); its transfer syntax, which only the missing header would name, is the uncompressed encoding pydicom
    found. Raises :class:`BadInputError` naming the file otherwise."""
    try:
        return dcmread(filename, **kwargs)
    except InvalidDicomError:
        ds = dcmread(filename, **{**kwargs, "force": True})
    if "Rows" not in ds or "Columns" not in ds:
        raise BadInputError(filename, "corrupt or non-DICOM file (neither the 'DICM' marker nor a DICOM image header)")
    file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in file_meta:  # (a File Meta group written without the preamble names it)
        implicit_vr, little_endian = getattr(ds, "original_encoding", None) or (ds.is_implicit_VR, ds.is_little_endian)
        file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
        )
        ds.file_meta = file_meta
    return ds


def pixel_padding(stored: np.ndarray, ds) -> np.ndarray | None:
    """Where the stored values are padding (PixelPaddingValue, up to PixelPaddingRangeLimit when given): a bool
    array like ``stored``, or None when the file declares no padding or every pixel would be padding.

    Unsigned values are compared within BitsStored: pydicom 3 drops the bits above HighBit, pydicom 2 keeps them,
    and a padding value may be written with them set (0xFFFF in a 12-bit image)."""
    try:
        first = int(ds.PixelPaddingValue)
        last = int(ds.get("PixelPaddingRangeLimit", first))
    except (AttributeError, TypeError, ValueError):
        return None
    values = np.asarray(stored)
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 0:
        bits = (1 << int(getattr(ds, "BitsStored", 16) or 16)) - 1
        values, first, last = values.astype(np.int64) & bits, first & bits, last & bits
    low, high = min(first, last), max(first, last)
    padding = (values >= low) & (values <= high)
    return padding if padding.any() and not padding.all() else None


def check_single_frame(filename: PathLike, ds) -> None:
    """Refuse a multi-frame DICOM (a tomosynthesis volume, a series in one file) from its header, before its size
    is weighed: it is no 2-D mammogram however large the limit. Raises :class:`BadInputError` naming the file."""
    frames = _dicom_int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise BadInputError(
            filename,
            f"multi-frame DICOM ({frames} frames: a tomosynthesis volume or several images in one file); GLAM reads "
            "one 2-D mammogram: use the 2-D or synthesised 2-D view",
        )


def check_for_presentation(filename: PathLike, ds) -> None:
    """Refuse a raw detector image ("FOR PROCESSING": PresentationIntentType or the SOP class says so).

    Its values follow the detected X-ray dose before the vendor's processing (log, equalisation, contrast), so it
    looks nothing like the processed "FOR PRESENTATION" mammograms GLAM is trained on; archives often keep both
    for one view. Raises :class:`BadInputError` naming the file.
    """
    intent = _dicom_text(ds, "PresentationIntentType")
    sop_class = _ACQUIRED_SOP_CLASSES.get(str(ds.get("SOPClassUID", "") or "").strip(), "")
    if intent == "FOR PROCESSING" or sop_class.endswith("for processing"):
        source = "PresentationIntentType" if intent == "FOR PROCESSING" else f"SOP class {sop_class!r}"
        raise BadInputError(
            filename,
            f"raw detector image ('FOR PROCESSING', from {source}); GLAM reads the processed 'FOR PRESENTATION' "
            "mammogram: use that image of the view instead",
        )


def _dicom_int(ds, keyword: str, default: int) -> int:
    try:
        value = int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default
    return max(value, 0)


def dicom_declared_size(ds) -> DeclaredSize:
    """Decoded size a DICOM header declares: Rows x Columns [x NumberOfFrames], BitsAllocated, SamplesPerPixel."""
    rows, columns = _dicom_int(ds, "Rows", 0), _dicom_int(ds, "Columns", 0)
    frames = _dicom_int(ds, "NumberOfFrames", 1)
    shape = (rows, columns) if frames <= 1 else (rows, columns, frames)
    return DeclaredSize(shape, _dicom_int(ds, "BitsAllocated", 16) or 16, _dicom_int(ds, "SamplesPerPixel", 1) or 1)


def _dicom_text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def _dicom_laterality(ds) -> str | None:
    return _dicom_text(ds, "ImageLaterality") or _dicom_text(ds, "Laterality")


# The two screening views in DICOM's CID 4014, SNOMED-RT and SNOMED CT codes: MG files must carry
# ViewCodeSequence, while ViewPosition is optional there and often empty.
_VIEW_CODES = {"R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO"}
_VIEW_MEANINGS = {"craniocaudal": "CC", "mediolateraloblique": "MLO"}


def dicom_view(ds) -> str | None:
    """View of a DICOM image: ViewPosition when it is CC or MLO, else the ViewCodeSequence's code (or its meaning,
    e.g. "cranio-caudal"; an exaggerated or other view does not match), else ViewPosition as it is (another view,
    which the transforms ignore) or None."""
    position = _dicom_text(ds, "ViewPosition")
    if position in VIEWS:
        return position
    for item in ds.get("ViewCodeSequence") or []:
        code = str(item.get("CodeValue", "") or "").strip()
        meaning = re.sub(r"[^a-z]", "", str(item.get("CodeMeaning", "") or "").lower())
        view = _VIEW_CODES.get(code) or _VIEW_MEANINGS.get(meaning)
        if view:
            return view
    return position


def dicom_patient_orientation(ds) -> str | None:
    """PatientOrientation (0020,0020), the patient directions of the rows and of the columns, as "ROW\\COLUMN"
    (a left CC as radiologists hang it: "A\\R"; a right MLO: "P\\FL"), or None when absent or not two values of
    the letters A, P, L, R, H, F (CBIS-DDSM writes the view there)."""
    value = ds.get("PatientOrientation")
    if value is None:
        return None
    parts = str(value).split("\\") if isinstance(value, str) else [str(part) for part in value]
    parts = [part.strip().upper() for part in parts]
    if len(parts) == 2 and all(part and set(part) <= set("APLRHF") for part in parts):
        return "\\".join(parts)
    return None


def dicom_film_hint(ds) -> tuple[str | None, str | None]:
    """What a DICOM header says about the image's origin: ``("film" | "digital" | None, source)``.

    In order (first rule that speaks wins; the source names the tag):

    1. DetectorType (0018,7004) "FILM" -> film; "DIRECT"/"SCINTILLATOR"/"STORAGE" -> digital.
    2. ConversionType (0008,0064) "DF" (digitized film) -> film.
    3. SOP Class UID of an acquired image (MG/DX/CR/tomosynthesis IODs) or a PresentationIntentType
       (present only in DX/MG images) -> digital.
    4. Manufacturer or SecondaryCaptureDeviceManufacturer naming a film digitiser -> film.
    5. A Secondary Capture with Modality MG (ConversionType e.g. "WSD" or "DV") and no acquisition tag
       (kVp, exposure, detector, compression) -> film: a converted mammogram that no X-ray unit wrote,
       as CBIS-DDSM's; with acquisition tags -> digital (an exported digital image).
    Otherwise ``(None, None)``: the pixels decide.
    """
    detector = _dicom_text(ds, "DetectorType")
    if detector == "FILM":
        return "film", "dicom:DetectorType"
    if detector in ("DIRECT", "SCINTILLATOR", "STORAGE"):
        return "digital", "dicom:DetectorType"
    conversion = _dicom_text(ds, "ConversionType")
    if conversion == "DF":
        return "film", "dicom:ConversionType"
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if sop_class in _ACQUIRED_SOP_CLASSES:
        return "digital", "dicom:SOPClassUID"
    if _dicom_text(ds, "PresentationIntentType"):
        return "digital", "dicom:PresentationIntentType"
    makers = " ".join(
        filter(None, (_dicom_text(ds, "Manufacturer"), _dicom_text(ds, "SecondaryCaptureDeviceManufacturer")))
    )
    if any(name in makers for name in _FILM_DIGITISERS):
        return "film", "dicom:Manufacturer"
    if sop_class.startswith(_SECONDARY_CAPTURE_PREFIX) or conversion:
        if _dicom_text(ds, "Modality") == "MG":
            if any(keyword in ds for keyword in _ACQUISITION_KEYWORDS):
                return "digital", "dicom:acquisition-tags"
            return "film", "dicom:ConversionType" if conversion else "dicom:SOPClassUID"
    return None, None


def dicom_spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel spacing (row, column) in mm and the tag it came from, or ``(None, None)``.

    ImagerPixelSpacing (the detector pitch, what the model frame's 0.1 mm refers to) first, then PixelSpacing,
    then the Nominal Scanned Pixel Spacing (0018,2010) of secondary captures such as scanned film; a value
    outside :func:`plausible_mammogram_spacing` is skipped.
    """
    for keyword in ("ImagerPixelSpacing", "PixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        try:
            values = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            continue
        if len(values) >= 2 and all(plausible_mammogram_spacing(v) for v in values[:2]):
            return (values[0], values[1]), f"dicom:{keyword}"
    return None, None


def plausible_mammogram_spacing(value: float) -> bool:
    """Is ``value`` (mm) a pixel pitch a mammogram can have? Detectors and film digitisers are 0.025-0.2 mm;
    0.01-0.5 mm is accepted (downscaled copies included). Placeholders such as 1 (a Secondary Capture's or a
    converted PNG's default) are not."""
    return bool(np.isfinite(value) and 0.01 <= value <= 0.5)


# Transfer syntaxes that lose information: JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 and
# HTJ2K (lossy or lossless-or-lossy variants).
_LOSSY_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.203",
)


def _dicom_lossy(ds) -> bool:
    """Has the image been through lossy compression (LossyImageCompression "01", or a lossy transfer syntax)?"""
    if str(ds.get("LossyImageCompression", "") or "").strip() == "01":
        return True
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return syntax in _LOSSY_TRANSFER_SYNTAXES
