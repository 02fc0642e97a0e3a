"""Size limits before allocation: a file whose header declares a huge image is refused, by name, before a pixel
is decoded; an empty file is called empty, whatever its suffix.

The hostile files are written cheaply: only their headers declare the huge size (a 13,000 x 13,000 16-bit PNG
whose IDAT holds one compressed row, a DICOM with huge Rows/Columns and two bytes of pixel data, NIfTI,
MetaImage and NRRD headers). Peak memory while refusing them is measured in a subprocess against one that
refuses empty files only.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged
from PIL import Image

from glam_bundle.constants import (
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    NIFTI_SUFFIXES,
    PIL_SUFFIXES,
)
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.readers import MammogramDicomReader, MammogramReader
from glam_bundle.transforms import load_transforms
from tests.conftest import REPO_ROOT
from tests.dicom_helpers import write_dicom

HUGE = 13000  # 13,000 x 13,000 at 16 bits = 338 MB decoded


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_header(path: Path, height: int = HUGE, width: int = HUGE, bit_depth: int = 16) -> Path:
    """A PNG whose IHDR declares (height, width) gray at ``bit_depth`` bits; IDAT holds one zero row."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + width * bit_depth // 8), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", row) + _png_chunk(b"IEND", b""))
    return path


def write_jpeg_header(path: Path, height: int = HUGE, width: int = HUGE) -> Path:
    """A small JPEG whose SOF0 frame header is patched to declare (height, width)."""
    Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)).save(path, format="JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def write_dicom_header(path: Path, rows: int = HUGE, columns: int = HUGE) -> Path:
    """A DICOM declaring rows x columns 16-bit pixels with two bytes of pixel data."""
    write_dicom(path, np.ones((1, 1), dtype=np.uint16), bits_stored=16)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path)
    return path


def write_nifti_header(path: Path, shape=(HUGE, HUGE)) -> Path:
    """A NIfTI-1 header declaring ``shape`` uint16, followed by a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint16)
    header.set_data_shape(shape)
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * (352 - handle.tell() + 16))
    return path


def write_mha_header(path: Path, shape=(HUGE, HUGE)) -> Path:
    text = (
        "ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {shape[1]} {shape[0]}\nElementType = MET_USHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(text.encode() + b"\0" * 16)
    return path


def write_nrrd_header(path: Path, shape=(HUGE, HUGE)) -> Path:
    text = f"NRRD0004\ntype: unsigned short\ndimension: 2\nsizes: {shape[1]} {shape[0]}\nencoding: raw\nendian: little\n\n"
    path.write_bytes(text.encode() + b"\0" * 16)
    return path


HOSTILE = {
    "big.png": write_png_header,
    "big.jpg": write_jpeg_header,
    "big.dcm": write_dicom_header,
    "big.nii": write_nifti_header,
    "big.mha": write_mha_header,
    "big.nrrd": write_nrrd_header,
}


def load(path, **reader_args):
    return LoadImaged(keys="image", reader=MammogramReader(**reader_args))({"image": str(path)})["image"]


def refusal(path, **reader_args) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        load(path, **reader_args)
    return info.value


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_huge_declared_image_is_refused_naming_file_size_and_setting(tmp_path, name):
    path = HOSTILE[name](tmp_path / name)
    assert path.stat().st_size < 100_000  # the file itself is small: only its header is huge
    error = refusal(path)
    message = str(error)
    assert error.path == str(path) and message.startswith(f"{path}: declares 13000x13000 pixels")
    assert "max_pixels" in message and "max_bytes" in message and "MammogramReader(" in message
    if name != "big.jpg":
        assert "at 16 bits = 338 MB decoded" in message
    assert "DecompressionBomb" not in message  # Pillow's own limit does not fire first


def test_dicom_reader_alone_checks_the_header(tmp_path):
    path = write_dicom_header(tmp_path / "big.dcm")
    with pytest.raises(BadInputError, match="declares 13000x13000 pixels at 16 bits"):
        LoadImaged(keys="image", reader=MammogramDicomReader())({"image": str(path)})


def test_multiframe_dicom_is_refused_as_such_before_its_size(tmp_path):
    # a tomosynthesis volume (8 x 4000 x 4000 at 16 bits = 256 MB, over the size limit): the frames are the problem
    path = write_dicom(tmp_path / "frames.dcm", np.ones((1, 1), dtype=np.uint16), bits_stored=16)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4000, 4000, 8
    ds.save_as(path)
    assert str(refusal(path)) == (
        f"{path}: multi-frame DICOM (8 frames: a tomosynthesis volume or several images in one file); GLAM reads one "
        "2-D mammogram: use the 2-D or synthesised 2-D view"
    )


SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + ITK_SUFFIXES + ("",)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_file_is_called_empty(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    error = refusal(path)
    assert str(error) == f"{path}: empty file (0 bytes)"


def test_limits_are_settings(tmp_path):
    """A small image over a small limit is refused; the same with the limit lifted (None) loads."""
    path = tmp_path / "small.png"
    Image.fromarray((np.arange(600 * 520) % 4096).reshape(600, 520).astype(np.uint16)).save(path)
    message = str(refusal(path, max_pixels=100_000))
    assert "declares 600x520 pixels at 16 bits" in message and "max_pixels=100,000" in message
    assert "max_bytes=200,000" in str(refusal(path, max_bytes=200_000))
    assert tuple(load(path, max_pixels=None, max_bytes=None).shape) == (600, 520)
    assert tuple(load(path).shape) == (600, 520)
    # load_transforms passes them to the image and mask readers.
    with pytest.raises(BadInputError, match="max_pixels=1,000"):
        load_transforms(max_pixels=1000)[0]({"image": str(path)})
    with pytest.raises(ValueError, match="max_pixels"):
        MammogramReader(max_pixels="many")


def test_defaults_fit_the_largest_mammograms():
    assert MAX_IMAGE_PIXELS == 8000 * 8000 and MAX_IMAGE_BYTES == 8000 * 8000 * 2


_REFUSE_SCRIPT = """
import json, resource, sys
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.readers import MammogramReader
import nibabel, pydicom  # imported by the refusals: part of the baseline
reader = MammogramReader()
messages = []
for path in sys.argv[1:]:
    try:
        reader.get_data(reader.read(path))
        messages.append(None)
    except BadInputError as error:
        messages.append(str(error))
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "messages": messages}))
"""


def _refuse_in_subprocess(paths) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _REFUSE_SCRIPT, *map(str, paths)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_peak_memory_while_refusing_stays_small(tmp_path):
    empty = []
    for name in HOSTILE:
        (tmp_path / f"empty_{name}").write_bytes(b"")
        empty.append(tmp_path / f"empty_{name}")
    hostile = [HOSTILE[name](tmp_path / name) for name in HOSTILE]
    baseline = _refuse_in_subprocess(empty)
    refused = _refuse_in_subprocess(hostile)
    assert all(m and "empty file" in m for m in baseline["messages"])
    assert all(m and "declares 13000x13000" in m for m in refused["messages"]), refused["messages"]
    extra_mb = (refused["maxrss_kb"] - baseline["maxrss_kb"]) / 1024
    assert extra_mb < 100, f"refusing took {extra_mb:.0f} MB more than refusing empty files"


def test_itk_header_the_text_parser_does_not_know_is_read_by_itk(tmp_path):
    """A MetaImage header with an element type spelled as ITK alone knows falls back to ITK's ReadImageInformation."""
    from glam_bundle.data.image_checks import itk_declared_size

    path = tmp_path / "odd.mha"
    text = f"ObjectType = Image\nNDims = 2\nDimSize = {HUGE} 9000\nElementType = MET_USHORT_ARRAY\nElementDataFile = LOCAL\n"
    path.write_bytes(text.encode() + b"\0" * 16)
    declared = itk_declared_size(str(path))
    assert (declared.shape, declared.bits) == ((9000, HUGE), 16)
    assert "declares 9000x13000 pixels at 16 bits = 234 MB decoded" in str(refusal(path))
