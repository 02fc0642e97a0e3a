"""DICOM files made inside tests (pydicom), shared by the reader, bad-input and datalist tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def write_dicom(
    path: str | Path,
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    compress: str | None = None,
    **tags,
) -> Path:
    """Write a single-frame MG-like DICOM with ``pixels`` as stored values (None: a header without pixel
    data), optionally compressed with the transfer syntax ``compress`` (e.g. RLE Lossless), and extra ``tags``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored)
        if compress is not None:
            ds.compress(compress, encoding_plugin="pydicom")
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def recompress_with_gdcm(path: str | Path, transfer_syntax: str) -> Path:
    """Re-encode a DICOM file in place with GDCM (the decoder the bundle depends on; pydicom encodes only RLE
    without extra packages) to ``transfer_syntax``, a UID such as JPEG Lossless SV1, JPEG-LS or JPEG 2000."""
    import gdcm

    path = Path(path)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(transfer_syntax)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {path} as {transfer_syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {path}")
    return path
