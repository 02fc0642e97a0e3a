"""MammogramReader / MammogramDicomReader: (H, W) order, values and metadata for every supported format."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import NibabelWriter, list_data_collate
from monai.transforms import LoadImage, LoadImaged
from PIL import Image
from pydicom.uid import RLELossless

from glam_bundle.data.errors import BadInputError
from glam_bundle.data.readers import (
    MammogramDicomReader,
    MammogramReader,
    check_image_array,
)
from tests.conftest import CBIS_DDSM, MINI_MIAS, NYU_SAMPLE, require
from tests.dicom_helpers import recompress_with_gdcm, write_dicom

# Non-square on purpose: a (W, H) mix-up changes the shape.
H, W = 48, 32


def ramp(height: int = H, width: int = W, scale: int = 1, dtype=np.uint16) -> np.ndarray:
    """(height, width) array whose value encodes its position: row * width + column (times scale)."""
    return (np.arange(height * width).reshape(height, width) * scale).astype(dtype)


def load(path, **reader_args):
    """Load through MONAI's LoadImage with our reader, as the bundle configs do."""
    return LoadImage(reader=MammogramReader(min_size=0, **reader_args), image_only=True)(path)


# ----------------------------------------------------------------------------------------------- PIL formats
def test_png_16bit_keeps_values_and_hw_order(tmp_path):
    pixels = ramp(scale=38)  # max 58330: needs all 16 bits
    path = tmp_path / "view.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == "I;16"

    image = load(path)
    assert image.shape == (H, W)
    assert image.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), pixels.astype(np.float32))
    assert tuple(image.meta["spatial_shape"]) == (H, W)
    assert image.meta["original_channel_dim"] == "no_channel"
    assert image.meta["laterality"] == "none" and image.meta["view"] == "none"
    assert image.meta["filename_or_obj"] == str(path)


def test_pgm_8bit_p5(tmp_path):
    pixels = ramp(dtype=np.uint8) % 251
    path = tmp_path / "scan.pgm"
    Image.fromarray(pixels).save(path)
    assert path.read_bytes()[:2] == b"P5"
    image = load(path)
    assert image.shape == (H, W)
    np.testing.assert_array_equal(image.numpy(), pixels.astype(np.float32))


def test_tiff_and_jpeg_dispatch(tmp_path):
    pixels = ramp(dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.TIF")  # upper-case suffix
    np.testing.assert_array_equal(load(tmp_path / "a.TIF").numpy(), pixels)
    gray = (ramp(dtype=np.uint16) % 200 + 20).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "b.jpg", quality=100)
    image = load(tmp_path / "b.jpg")
    assert image.shape == (H, W)
    assert np.abs(image.numpy() - gray).max() <= 8  # lossy, but the same picture in the same orientation


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_gray_mammogram_stored_as_colour_is_read_as_gray(tmp_path, mode):
    pixels = (ramp() % 256).astype(np.uint8)
    path = tmp_path / "gray_as_colour.png"
    Image.fromarray(pixels).convert(mode).save(path)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(load(path).numpy(), pixels)


def test_gray_mammogram_with_slightly_unequal_channels_is_read_as_gray(tmp_path):
    # a viewer's export or a colour JPEG of a gray image: channels a few levels apart (at most 2 % of the range)
    gray = (np.add.outer(np.arange(H), np.arange(W)) * 3).astype(np.int16)  # 0 .. 237
    tint = np.random.default_rng(0).integers(-2, 3, size=(H, W, 3))
    pixels = np.clip(gray[..., None] + tint, 0, 255).astype(np.uint8)
    path = tmp_path / "tinted.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_allclose(load(path).numpy(), pixels.astype(np.float32).mean(axis=-1))


def test_ensure_channel_first_gives_1hw(tmp_path):
    Image.fromarray(ramp()).save(tmp_path / "view.png")
    item = LoadImaged(keys="image", reader=MammogramReader(min_size=0), ensure_channel_first=True)(
        {"image": str(tmp_path / "view.png")}
    )
    assert item["image"].shape == (1, H, W)
    np.testing.assert_array_equal(item["image"][0].numpy(), ramp())


def test_reader_named_in_a_bundle_config(tmp_path):
    Image.fromarray(ramp()).save(tmp_path / "view.png")
    parser = ConfigParser(
        {
            "load": {
                "_target_": "LoadImaged",
                "keys": "image",
                "ensure_channel_first": True,
                "reader": {"_target_": "glam_bundle.data.readers.MammogramReader", "min_size": 0},
            }
        }
    )
    item = parser.get_parsed_content("load")({"image": str(tmp_path / "view.png")})
    assert item["image"].shape == (1, H, W)
    # The dotted-path string form passes LoadImaged's extra kwargs to the reader.
    loader = LoadImaged(keys="image", reader="glam_bundle.data.readers.MammogramReader", min_size=0)
    assert loader({"image": str(tmp_path / "view.png")})["image"].shape == (H, W)


def test_several_paths_are_stacked_as_channels(tmp_path):
    Image.fromarray(ramp()).save(tmp_path / "a.png")
    Image.fromarray(ramp(scale=2)).save(tmp_path / "b.png")
    image = LoadImage(reader=MammogramReader(min_size=0), ensure_channel_first=True)(
        [tmp_path / "a.png", tmp_path / "b.png"]
    )
    assert image.shape == (2, H, W)
    np.testing.assert_array_equal(image[1].numpy(), ramp(scale=2))


# ------------------------------------------------------------------------------------------------ NIfTI / ITK
def test_nifti_first_axis_is_x_as_itk_and_monai_store_it(tmp_path):
    import nibabel as nib

    pixels = ramp().astype(np.float32)  # (H, W)
    nib.save(nib.Nifti1Image(pixels.T, np.diag([0.07, 0.1, 1.0, 1.0])), tmp_path / "a.nii.gz")  # x = columns
    image = load(tmp_path / "a.nii.gz")
    assert image.shape == (H, W)
    np.testing.assert_array_equal(image.numpy(), pixels)
    np.testing.assert_allclose(image.meta["spacing"], [0.1, 0.07])  # (row, column)
    # A (W, H, 1) volume (2-D image saved as a one-slice 3-D image) loads as (H, W) too.
    nib.save(nib.Nifti1Image(pixels.T[..., None], np.eye(4)), tmp_path / "b.nii")
    np.testing.assert_array_equal(load(tmp_path / "b.nii").numpy(), pixels)


def test_nifti_written_by_monai_from_its_own_png_reading(tmp_path):
    """MONAI's default LoadImage gives a PNG as (x, y) = (W, H); its NibabelWriter's file loads as the PNG does."""
    Image.fromarray(ramp()).save(tmp_path / "a.png")
    xy = LoadImage(image_only=True, ensure_channel_first=True)(tmp_path / "a.png")
    assert tuple(xy.shape) == (1, W, H)
    writer = NibabelWriter(output_dtype=np.float32)
    writer.set_data_array(xy, channel_dim=0)
    # resample=True with equal affines is a no-op; monai 1.6.1's resample=False path fails on 2-D data.
    writer.set_metadata({"affine": np.eye(4), "original_affine": np.eye(4), "spatial_shape": (W, H)}, resample=True)
    writer.write(tmp_path / "written.nii.gz")
    np.testing.assert_array_equal(load(tmp_path / "written.nii.gz").numpy(), load(tmp_path / "a.png").numpy())


def test_dicom_converted_to_nifti_by_itk_reads_as_the_dicom(tmp_path):
    """MONAI Label's DICOMweb datastore hands the bundle each DICOM converted to NIfTI by (Simple)ITK."""
    import itk

    pixels = ramp(scale=3)
    dicom = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=16, ImagerPixelSpacing=[0.1, 0.1])
    itk.imwrite(itk.imread(str(dicom)), str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(load(tmp_path / "a.nii.gz").numpy(), load(dicom).numpy())


def test_mha_via_itk_hw_order_and_spacing(tmp_path):
    import itk

    pixels = ramp().astype(np.float32)
    itk_image = itk.image_from_array(pixels)  # numpy (H, W) -> ITK size (x=W, y=H)
    itk_image.SetSpacing((0.5, 0.25))  # (x = column pitch, y = row pitch)
    itk.imwrite(itk_image, str(tmp_path / "a.mha"))
    image = load(tmp_path / "a.mha")
    assert image.shape == (H, W)
    np.testing.assert_array_equal(image.numpy(), pixels)
    assert tuple(image.meta["spatial_shape"]) == (H, W)
    np.testing.assert_allclose(image.meta["spacing"], [0.25, 0.5])  # (row, column)


# ---------------------------------------------------------------------------------------------------- DICOM
def test_dicom_monochrome2_plain_values_and_hw(tmp_path):
    pixels = ramp()
    image = load(write_dicom(tmp_path / "a.dcm", pixels))
    assert image.shape == (H, W)
    assert image.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), pixels)


def test_dicom_rescale_slope_intercept(tmp_path):
    pixels = ramp()
    path = write_dicom(tmp_path / "a.dcm", pixels, RescaleSlope=2.0, RescaleIntercept=-100.0, RescaleType="US")
    np.testing.assert_allclose(load(path).numpy(), pixels * 2.0 - 100.0)


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = ramp()
    image = load(write_dicom(tmp_path / "a.dcm", pixels, photometric="MONOCHROME1", bits_stored=12))
    # Stored 0 is white in MONOCHROME1: it must come out as the brightest value of the 12-bit range.
    np.testing.assert_array_equal(image.numpy(), 4095.0 - pixels)
    assert image[0, 0] > image[-1, -1]


def linear_window(x: np.ndarray, centre: float, width: float, y_min: float, y_max: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI window, written out independently of pydicom."""
    c, w = centre - 0.5, width - 1.0
    y = ((x - c) / w + 0.5) * (y_max - y_min) + y_min
    y = np.where(x <= c - w / 2, y_min, y)
    return np.where(x > c + w / 2, y_max, y)


def test_dicom_window_centre_width(tmp_path):
    pixels = ramp()  # 0 .. 1535
    path = write_dicom(tmp_path / "a.dcm", pixels, WindowCenter=800, WindowWidth=600)
    expected = linear_window(pixels.astype(np.float64), 800, 600, 0.0, 4095.0)
    np.testing.assert_allclose(load(path).numpy(), expected, rtol=1e-5, atol=1e-3)
    assert load(path).numpy().min() == 0 and load(path).numpy().max() == 4095
    # apply_voi=False keeps the modality values.
    np.testing.assert_array_equal(load(path, apply_voi=False).numpy(), pixels)


def test_dicom_window_then_monochrome1(tmp_path):
    pixels = ramp()
    path = write_dicom(tmp_path / "a.dcm", pixels, photometric="MONOCHROME1", WindowCenter=800, WindowWidth=600)
    expected = 4095.0 - linear_window(pixels.astype(np.float64), 800, 600, 0.0, 4095.0)
    np.testing.assert_allclose(load(path).numpy(), expected, rtol=1e-5, atol=1e-3)


def test_dicom_laterality_and_view_metadata(tmp_path):
    both = write_dicom(tmp_path / "both.dcm", ramp(), ImageLaterality="R", Laterality="L", ViewPosition="MLO")
    image = load(both)
    assert image.meta["laterality"] == "R"  # ImageLaterality wins over the series-level Laterality
    assert image.meta["view"] == "MLO"

    series_only = write_dicom(tmp_path / "series.dcm", ramp(), Laterality="L")
    image = load(series_only)
    assert image.meta["laterality"] == "L"
    assert image.meta["view"] == "none"

    neither = load(write_dicom(tmp_path / "neither.dcm", ramp()))
    assert neither.meta["laterality"] == "none" and neither.meta["view"] == "none"


def test_dicom_view_from_view_code_sequence_when_view_position_is_empty(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def code(value, scheme, meaning):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return Sequence([item])

    cases = {
        "snomed_rt": (dict(ViewCodeSequence=code("R-10226", "SRT", "medio-lateral oblique")), "MLO"),
        "snomed_ct": (dict(ViewPosition="", ViewCodeSequence=code("399162004", "SCT", "cranio-caudal")), "CC"),
        "meaning_only": (dict(ViewCodeSequence=code("X1", "99LOCAL", "Medio-Lateral Oblique")), "MLO"),
        "exaggerated": (
            dict(ViewPosition="XCCL", ViewCodeSequence=code("R-1024A", "SRT", "cranio-caudal exaggerated laterally")),
            "XCCL",
        ),
        "position_wins": (dict(ViewPosition="CC", ViewCodeSequence=code("R-10226", "SRT", "x")), "CC"),
    }
    for name, (tags, view) in cases.items():
        assert load(write_dicom(tmp_path / f"{name}.dcm", ramp(), **tags)).meta["view"] == view, name


def test_dicom_spacing_from_imager_pixel_spacing(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", ramp(), ImagerPixelSpacing=[0.1, 0.2])
    np.testing.assert_allclose(load(path).meta["spacing"], [0.1, 0.2])


def test_dicom_rle_and_suffixless_file(tmp_path):
    pixels = ramp()
    # DICOM folders often have no suffixes
    path = write_dicom(tmp_path / "IMG0001", pixels, bits_stored=16, compress=RLELossless)
    reader = MammogramReader(min_size=0)
    assert reader.verify_suffix(str(path))
    np.testing.assert_array_equal(load(path).numpy(), pixels)


def write_bare_dataset(path, pixels: np.ndarray, implicit_vr: bool) -> None:
    """A DICOM data set without the 128-byte preamble and File Meta header, as ACR-NEMA-era archives wrote it."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(write_dicom(path, pixels))
    del ds.file_meta
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit_vr
    write_dataset(buffer, ds)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("implicit_vr", [True, False])
@pytest.mark.parametrize("name", ["view.dcm", "IM000001"])
def test_dicom_without_preamble_or_file_meta_is_read(tmp_path, name, implicit_vr):
    pixels = ramp()
    path = tmp_path / name
    write_bare_dataset(path, pixels, implicit_vr)
    assert MammogramReader(min_size=0).verify_suffix(str(path))
    np.testing.assert_array_equal(load(path).numpy(), pixels)


def test_file_named_dcm_that_holds_no_dicom_image_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("exported by a viewer\n" * 50)
    with pytest.raises(BadInputError, match=r"notes\.dcm.*corrupt or non-DICOM file \(neither"):
        load(path)


def test_dicom_with_file_meta_but_no_preamble_keeps_its_transfer_syntax(tmp_path):
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    pixels = ramp()
    ds = dcmread(write_dicom(tmp_path / "rle.dcm", pixels, bits_stored=16, compress=RLELossless))
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, ds.file_meta, enforce_standard=False)
    write_dataset(buffer, ds)
    path = tmp_path / "IM000002"  # no suffix, no preamble: starts with the (0002,xxxx) File Meta group
    path.write_bytes(buffer.getvalue())
    assert MammogramReader(min_size=0).verify_suffix(str(path))
    np.testing.assert_array_equal(load(path).numpy(), pixels)  # RLE, as its File Meta says


def test_dicom_pixel_padding_is_background_at_either_end(tmp_path):
    # A MONOCHROME1 view whose padding is stored 0 (white), one whose padding range is 4000-4095 (black), and a
    # 12-bit one padded with 0xFFFF (the bits above BitsStored set): each reads as the inverted image with the
    # padding at the image's own black, not as a white frame around the breast.
    pixels = ramp() + 100  # 100 .. 1635, no stored value in either padding range
    expected = 4095.0 - pixels
    padded = {
        0: dict(PixelPaddingValue=0),
        4000: dict(PixelPaddingValue=4000, PixelPaddingRangeLimit=4095),
        0xFFFF: dict(PixelPaddingValue=0xFFFF),
    }
    for padding, tags in padded.items():
        stored = pixels.copy()
        stored[:, :5] = padding & 0xFFF
        path = write_dicom(tmp_path / f"padded_{padding}.dcm", stored, photometric="MONOCHROME1", **tags)
        if padding > 0xFFF:  # the raw 16-bit words, as the writing unit stored them
            ds = pydicom.dcmread(path)
            words = np.frombuffer(ds.PixelData, dtype="<u2").reshape(H, W).copy()
            words[:, :5] = padding
            ds.PixelData = words.tobytes()
            ds.save_as(path)
        image = load(path)
        np.testing.assert_array_equal(image.numpy()[:, 5:], expected[:, 5:])
        assert (image.numpy()[:, :5] == expected[:, 5:].min()).all(), padding


# What archives send: JPEG Lossless (process 14, e.g. most PACS exports), JPEG-LS and JPEG 2000 (VinDr-Mammo, RSNA).
ARCHIVE_TRANSFER_SYNTAXES = {
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
    "jpeg_lossless": "1.2.840.10008.1.2.4.57",
    "jpeg_ls_lossless": "1.2.840.10008.1.2.4.80",
    "jpeg2000_lossless": "1.2.840.10008.1.2.4.90",
}


@pytest.mark.parametrize("bits_stored", [12, 16])
@pytest.mark.parametrize("syntax", ARCHIVE_TRANSFER_SYNTAXES)
def test_dicom_compressed_archive_syntaxes_decode_like_the_uncompressed_file(tmp_path, syntax, bits_stored):
    pixels = ramp(scale=1 if bits_stored == 12 else 42)  # 16 bits: values up to 64,470
    tags = dict(ImageLaterality="L", ViewPosition="CC", ImagerPixelSpacing=[0.07, 0.07])
    plain = load(write_dicom(tmp_path / "plain.dcm", pixels, "MONOCHROME1", bits_stored, **tags))
    path = recompress_with_gdcm(write_dicom(tmp_path / f"{syntax}.dcm", pixels, "MONOCHROME1", bits_stored, **tags),
                                ARCHIVE_TRANSFER_SYNTAXES[syntax])
    image = load(path)
    np.testing.assert_array_equal(image.numpy(), plain.numpy())
    assert image.numpy().max() == 2**bits_stored - 1 and image[0, 0] > image[-1, -1]  # inverted: MONOCHROME1
    assert (image.meta["laterality"], image.meta["view"]) == ("L", "CC")
    np.testing.assert_allclose(image.meta["spacing"], [0.07, 0.07])
    assert not image.meta["lossy_compression"]


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91"])  # JPEG-LS near, J2K
def test_dicom_lossy_archive_syntaxes_decode_and_are_flagged(tmp_path, syntax):
    pixels = ramp()
    image = load(recompress_with_gdcm(write_dicom(tmp_path / "a.dcm", pixels), syntax))
    assert image.shape == (H, W)
    np.testing.assert_allclose(image.numpy(), pixels, atol=8)  # GDCM's default rates are (near) lossless
    assert image.meta["lossy_compression"]


@pytest.mark.parametrize("tags", [
    {"PresentationIntentType": "FOR PROCESSING"},
    {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2.1"},  # Digital Mammography X-Ray Image Storage - For Processing
])
def test_dicom_raw_for_processing_image_is_refused_by_name(tmp_path, tags):
    path = write_dicom(tmp_path / "raw.dcm", ramp(), **tags)
    with pytest.raises(BadInputError, match=r"raw\.dcm: raw detector image \('FOR PROCESSING'.*FOR PRESENTATION"):
        load(path)
    processed = write_dicom(tmp_path / "processed.dcm", ramp(), PresentationIntentType="FOR PRESENTATION",
                            SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2")
    np.testing.assert_array_equal(load(processed).numpy(), ramp())


def test_dicom_reader_alone_through_loadimage(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", ramp(), photometric="MONOCHROME1", Laterality="L")
    image = LoadImage(reader=MammogramDicomReader(), image_only=True)(path)
    assert image.shape == (H, W)
    np.testing.assert_array_equal(image.numpy(), 4095.0 - ramp())
    assert image.meta["laterality"] == "L"


# ------------------------------------------------------------------------------------------ dispatch, batches
def test_verify_suffix():
    reader = MammogramReader()
    names = ("a.png", "a.PNG", "a.jpeg", "a.tiff", "a.pgm", "a.ppm", "a.dcm", "a.dicom")
    for name in names + ("a.nii", "a.nii.gz", "a.mha", "a.mhd", "a.nrrd"):
        assert reader.verify_suffix(name), name
    assert not reader.verify_suffix("a.txt")
    assert not reader.verify_suffix(["a.png", "a.txt"])


def test_mixed_formats_collate_into_one_batch(tmp_path):
    """Uniform metadata keys: a batch mixing PNG, DICOM and NIfTI collates (meta included)."""
    import nibabel as nib

    Image.fromarray(ramp()).save(tmp_path / "a.png")
    write_dicom(tmp_path / "b.dcm", ramp(), Laterality="L", ViewPosition="CC")
    nib.save(nib.Nifti1Image(ramp().astype(np.float32).T, np.eye(4)), tmp_path / "c.nii.gz")
    loader = LoadImaged(keys="image", reader=MammogramReader(min_size=0), ensure_channel_first=True)
    items = [loader({"image": str(tmp_path / name)}) for name in ("a.png", "b.dcm", "c.nii.gz")]
    batch = list_data_collate(items)
    assert batch["image"].shape == (3, 1, H, W)
    assert list(batch["image"].meta["laterality"]) == ["none", "L", "none"]
    assert list(batch["image"].meta["view"]) == ["none", "CC", "none"]
    assert list(batch["image"].meta["source_format"]) == ["PIL", "DICOM", "NIfTI"]


def test_check_image_array_returns_float32():
    out = check_image_array(ramp(), "x.png", min_size=(H, W))
    assert out.dtype == np.float32 and out.shape == (H, W)


# ---------------------------------------------------------------------------------------------- real files
@pytest.mark.parametrize(
    "name, shape",
    [("Mass-Test_P_00173_LEFT_CC.dcm", (4432, 2864)), ("Mass-Test_P_00820_LEFT_CC.dcm", (4736, 2624))],
)
def test_real_cbis_ddsm_dicom(name, shape):
    path = require(CBIS_DDSM / name)
    image = LoadImaged(keys="image", reader=MammogramReader(), ensure_channel_first=True)({"image": str(path)})[
        "image"
    ]
    assert image.shape == (1, *shape)
    assert image.dtype == torch.float32
    assert image.meta["laterality"] == "L"
    assert image.meta["view"] == "none"  # no ViewPosition tag in these files
    assert 0 <= float(image.min()) < float(image.max()) <= 65535


def test_real_mini_mias_pgm():
    path = require(MINI_MIAS / "images" / "mdb001.pgm")
    image = load(path)
    assert image.shape == (1024, 1024)
    assert 0 <= float(image.min()) < float(image.max()) <= 255


def test_real_nyu_png_is_portrait_16bit():
    path = require(NYU_SAMPLE / "images" / "0_L-CC.png")
    image = LoadImage(reader=MammogramReader(), image_only=True)(path)
    assert image.shape == (2023, 801)  # README: 801 wide x 2023 high
    assert float(image.max()) == 4095.0  # 12-bit values in a 16-bit PNG, not rescaled to 8 bits
