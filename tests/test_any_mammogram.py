"""Any mammogram, no flags (issue 10): film or digital, pixel spacing, view and laterality decided per image from
the file, the datalist or the pixels, and labels / film edges kept out of the model window.

Every chain here is the default one (``default_preprocessing()``: film "auto", spacing "auto"), on the shared
real files (NYU sample, CBIS-DDSM, mini-MIAS, mini-DDSM, CSAW-S, read from ``../shared``; skipped when absent)
and on synthetic phantoms written as digital and as scanned-film DICOM.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
import scipy.ndimage as ndi
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, DeleteItemsd, LoadImaged
from PIL import Image

from glam_bundle.constants import MODEL_FRAME_SIZE, NYU_PIXEL_SPACING_MM
from glam_bundle.data.builders import build_ddsm_items, build_mini_mias_items, ddsm_spacing_mm
from glam_bundle.data.dicom_reader import dicom_film_hint, dicom_spacing
from glam_bundle.data.phantom import as_scanned_film, make_phantom, save_dicom_atomic
from glam_bundle.data.readers import MammogramReader
from glam_bundle.transforms import (
    BestCenterWindowd,
    BreastMaskd,
    OrientBreastd,
    ResampleToSpacingd,
    default_preprocessing,
    frame_transforms,
    load_transforms,
    window_transforms,
)
from glam_bundle.transforms.breast.array import chest_wall_on_right, film_from_pixels, negative_image
from glam_bundle.transforms.spatial.array import map_to_model_frame
from glam_bundle.transforms.utils import filename_view_laterality
from tests.conftest import CBIS_DDSM, MINI_MIAS, NYU_SAMPLE, SHARED, require
from tests.dicom_helpers import write_dicom

MINI_DDSM = SHARED / "data" / "mini_ddsm"
CSAW_S = SHARED / "data" / "csaw_s" / "anonymized_dataset" / "004"
# CSAW-S README: cancer bounding boxes (rows, cols) of the three views
CSAW_CANCER_BOXES = {"004_0": (1369, 1458, 1921, 2033), "004_1": (1556, 1721, 1971, 2175), "004_2": (784, 968, 2172, 2348)}


@pytest.fixture(scope="module")
def chain() -> Compose:
    """The default chain with no setting given, keeping the breast mask for the checks."""
    return Compose([t for t in default_preprocessing().transforms if not isinstance(t, DeleteItemsd)])


def _load(path) -> dict:
    return LoadImaged("image", reader=MammogramReader(), image_only=True, ensure_channel_first=True)({"image": str(path)})


def _faces_right(out: dict) -> bool:
    return not chest_wall_on_right(out["breast_mask"][0].numpy())


def _nothing_outside_the_breast(out: dict) -> bool:
    """No label, marker or film edge in the window: every pixel outside the breast is the background (the
    padding's value), and the breast is one piece."""
    image, breast = out["image"][0], out["breast_mask"][0].bool()
    _, pieces = ndi.label(breast.numpy())
    return pieces == 1 and bool(torch.all(image[~breast] == image.min()))


# ------------------------------------------------------------------------------------------ rules, unit level


def test_dicom_film_hint_rules():
    def ds(**tags):
        d = pydicom.Dataset()
        for key, value in tags.items():
            setattr(d, key, value)
        return d

    mg, sc = "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.7"
    assert dicom_film_hint(ds(DetectorType="FILM")) == ("film", "dicom:DetectorType")
    assert dicom_film_hint(ds(DetectorType="DIRECT", SOPClassUID=sc)) == ("digital", "dicom:DetectorType")
    assert dicom_film_hint(ds(ConversionType="DF", Modality="MG")) == ("film", "dicom:ConversionType")
    assert dicom_film_hint(ds(SOPClassUID=mg, Modality="MG")) == ("digital", "dicom:SOPClassUID")
    assert dicom_film_hint(ds(PresentationIntentType="FOR PRESENTATION")) == ("digital", "dicom:PresentationIntentType")
    assert dicom_film_hint(ds(SOPClassUID=sc, Manufacturer="Lumisys")) == ("film", "dicom:Manufacturer")
    # a converted mammogram no X-ray unit wrote (CBIS-DDSM: SC, WSD, no exposure tags) vs an exported digital one
    assert dicom_film_hint(ds(SOPClassUID=sc, Modality="MG", ConversionType="WSD")) == ("film", "dicom:ConversionType")
    assert dicom_film_hint(ds(SOPClassUID=sc, Modality="MG", ConversionType="WSD", KVP=28)) == (
        "digital",
        "dicom:acquisition-tags",
    )
    assert dicom_film_hint(ds(Modality="MG")) == (None, None)  # says nothing: the pixels decide
    assert dicom_spacing(ds(ImagerPixelSpacing=[0.07, 0.07], PixelSpacing=[0.065, 0.065])) == (
        (0.07, 0.07),
        "dicom:ImagerPixelSpacing",
    )
    assert dicom_spacing(ds(PixelSpacing=[0.1, 0.1])) == ((0.1, 0.1), "dicom:PixelSpacing")
    assert dicom_spacing(ds(Modality="MG")) == (None, None)
    assert dicom_spacing(ds(PixelSpacing=[1, 1])) == (None, None)  # a placeholder, not a mammogram's pitch


def test_nifti_spacing_is_used_when_it_is_a_mammogram_pitch(tmp_path):
    import nibabel as nib

    plane = np.zeros((64, 48), np.float32)
    plane[10:50, :30] = 1.0
    nib.save(nib.Nifti1Image(plane, np.diag([0.2, 0.2, 1.0, 1.0])), tmp_path / "pitch.nii.gz")
    nib.save(nib.Nifti1Image(plane, np.eye(4)), tmp_path / "placeholder.nii.gz")
    reader = MammogramReader(min_size=0)
    _, meta = reader.get_data(reader.read(str(tmp_path / "pitch.nii.gz")))
    assert np.allclose(meta["file_spacing_mm"], [0.2, 0.2]) and meta["file_spacing_source"] == "nifti:pixdim"
    _, meta = reader.get_data(reader.read(str(tmp_path / "placeholder.nii.gz")))
    assert meta["file_spacing_source"] == "none"  # 1 mm: not a mammogram's pitch


def test_view_and_laterality_in_file_names_of_common_datasets():
    assert filename_view_laterality("C_0001_1.LEFT_CC.jpg") == ("CC", "L")  # mini-DDSM
    assert filename_view_laterality("Mass-Test_P_00173_RIGHT_MLO.dcm") == ("MLO", "R")  # CBIS-DDSM
    assert filename_view_laterality("0_L-CC.png") == ("CC", "L")  # NYU
    assert filename_view_laterality("x/y/20586908_R_MLO.dcm") == ("MLO", "R")
    assert filename_view_laterality("RMLO.png") == ("MLO", "R")
    for name in ("004_0.png", "mdb001.pgm", "ACCESS_CC_DATA.png", "1.2.840.113.dcm"):
        assert filename_view_laterality(name) == (None, None)


def test_pixel_rule_film_or_digital():
    rng = np.random.default_rng(0)
    rows, cols = np.ogrid[:200, :150]
    breast = ((rows - 100) / 85) ** 2 + (cols / 110) ** 2 < 1  # a half-ellipse at the chest wall
    digital = np.where(breast, rng.uniform(300, 3000, (200, 150)), 0).astype(np.float32)
    assert film_from_pixels(digital) == (False, "pixels:flat-background")
    film = rng.normal(40, 5, (200, 150)).clip(1, None).astype(np.float32)
    film[breast] += 1000
    assert film_from_pixels(film) == (True, "pixels:no-flat-background")
    padded = np.zeros((200, 250), np.float32)  # a film padded to a square: padding is not a background
    padded[:, 50:200] = film
    assert film_from_pixels(padded)[0] is True
    # a film whose dark background the scanner clipped to 0: flat, but its edge follows the noise
    clipped = np.where(breast, film, np.clip(rng.normal(0, 3, film.shape), 0, None)).round().astype(np.float32)
    assert film_from_pixels(clipped) == (True, "pixels:ragged-background")
    # a fainter film noise leaves specks all over the clipped background, beyond the 8-pixel reach of JPEG
    # ringing: film as JPEG too
    sparse = np.where(breast, film, np.clip(rng.normal(0, 1, film.shape), 0, None)).round().astype(np.float32)
    assert film_from_pixels(sparse, lossy=True) == (True, "pixels:ragged-background")
    # specks only along the skin line are no film noise: resampling or JPEG ringing, an overshoot two pixels out
    # beyond an undershoot clipped at 0
    ringing = digital.copy()
    ring = np.abs(ndi.distance_transform_edt(~breast) - 2) < 0.5
    ringing[ring & (rng.uniform(size=ring.shape) < 0.3)] = 5
    assert film_from_pixels(ringing) == (False, "pixels:flat-background")


@pytest.mark.parametrize("ref", ["mdb001", "mdb244"])
def test_bare_mini_mias_pgm_is_film_by_its_pixels(ref):
    item = BreastMaskd(method="auto")(_load(require(MINI_MIAS / "images" / f"{ref}.pgm")))
    assert item["image"].meta["film"] is True
    assert item["image"].meta["film_source"] in ("pixels:no-flat-background", "pixels:ragged-background")
    out = OrientBreastd(keys=("image", "breast_mask"))(item)
    meta = out["image"].meta
    assert (meta["view"], meta["view_source"]) == ("MLO", "image")  # every MIAS image is an MLO
    assert (meta["laterality"], meta["laterality_source"]) == ("R" if int(ref[3:]) % 2 else "L", "image")


def test_digital_saved_as_jpeg_stays_digital(tmp_path):
    """JPEG ringing makes the flat background's edge ragged, within one 8-pixel block: not taken for film."""
    plane = _load(require(NYU_SAMPLE / "images" / "0_L-CC.png"))["image"][0].numpy()
    path = tmp_path / "exported.jpg"
    Image.fromarray((plane / plane.max() * 255).round().astype(np.uint8)).save(path, quality=85)
    item = _load(path)
    assert item["image"].meta["lossy_compression"] is True
    item = BreastMaskd(method="auto")(item)
    assert (item["image"].meta["film"], item["image"].meta["film_source"]) == (False, "pixels:flat-background")


def test_digital_jpeg_with_a_gray_background_is_digital(chain, tmp_path):
    # a view exported through its VOI window (background at 20 of 255) as JPEG: ringing dips below the background,
    # so no flat region lies at the minimum; the flat background at its most frequent low value is found
    plane = _load(require(NYU_SAMPLE / "images" / "0_L-CC.png"))["image"][0].numpy()
    gray = (20 + plane / plane.max() * 235).round().astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "exported.png")
    Image.fromarray(gray).save(tmp_path / "exported.jpg", quality=95)
    lossless, jpeg = (chain({"image": str(tmp_path / name)}) for name in ("exported.png", "exported.jpg"))
    assert np.asarray(Image.open(tmp_path / "exported.jpg")).min() < 20  # ringing below the background
    meta = jpeg["image"].meta
    assert (meta["film"], meta["film_source"], meta["background_value"]) == (False, "pixels:flat-background", 20.0)
    a, b = lossless["breast_mask"].bool(), jpeg["breast_mask"].bool()
    assert float((a & b).sum() / (a | b).sum()) > 0.99


def test_digital_downscaled_with_a_ringing_filter_stays_digital():
    # Lanczos overshoots at the skin line and the undershoot clips at 0: specks along the edge, none beyond it
    plane = _load(require(CSAW_S / "004_0.png"))["image"][0].numpy()
    for factor in (2, 4):
        small = Image.fromarray(plane).resize((plane.shape[1] // factor, plane.shape[0] // factor), Image.LANCZOS)
        assert film_from_pixels(np.asarray(small).clip(0, None)) == (False, "pixels:flat-background"), factor


@pytest.mark.parametrize("quality", [95, 75])
def test_film_saved_as_jpeg_is_film(tmp_path, quality):
    # CBIS-DDSM as the 8-bit JPEG many copies of it are: the scanner clipped the film's background to 0, and the
    # film's noise scatters specks far beyond the reach of JPEG's ringing
    plane = _load(require(CBIS_DDSM / "Mass-Test_P_00173_LEFT_CC.dcm"))["image"][0].numpy()
    path = tmp_path / "P_00173_LEFT_CC.jpg"
    Image.fromarray((plane / plane.max() * 255).round().astype(np.uint8)).save(path, quality=quality)
    item = BreastMaskd(method="auto")(_load(path))
    assert item["image"].meta["lossy_compression"] is True
    assert (item["image"].meta["film"], item["image"].meta["film_source"]) == (True, "pixels:ragged-background")


def test_no_spacing_is_said_once_and_recorded(caplog):
    ResampleToSpacingd._warned_no_spacing = False
    image = MetaTensor(torch.ones(1, 64, 48))
    with caplog.at_level(logging.WARNING):
        first = ResampleToSpacingd(pixel_spacing="auto")({"image": image})
        second = ResampleToSpacingd(pixel_spacing="auto")({"image": MetaTensor(torch.ones(1, 64, 48))})
    assert sum("No pixel spacing" in r.message for r in caplog.records) == 1
    for out in (first, second):
        assert out["image"].shape == (1, 64, 48) and out["image"].meta["spacing_source"] == "none"
    item = ResampleToSpacingd(pixel_spacing="auto")({"image": MetaTensor(torch.ones(1, 64, 48)), "spacing_mm": [0.2, 0.1]})
    assert item["image"].shape == (1, 128, 48) and item["image"].meta["spacing_source"] == "datalist"
    assert "spacing_mm" not in item  # consumed: items with and without it collate
    with pytest.raises(ValueError, match="spacing"):
        ResampleToSpacingd(pixel_spacing="yes")
    with pytest.raises(ValueError, match="spacing"):
        frame_transforms(spacing="0.2mm")
    assert not any(isinstance(t, ResampleToSpacingd) for t in frame_transforms(spacing="none"))


def test_small_breast_of_unknown_spacing_says_how_to_give_it(chain, tmp_path, caplog):
    # a dataset shipped downscaled: the breast of a 1104x720 view covers a tenth of the 2944x1920 window
    BestCenterWindowd._hinted_downscaled = False
    for rng in (1, 2):
        phantom = make_phantom(1104, 720, view="CC", laterality="L", lesions=(), rng=rng)
        Image.fromarray(phantom.image.astype(np.uint16)).save(tmp_path / f"small_{rng}.png")
    with caplog.at_level(logging.WARNING):
        for rng in (1, 2):
            chain({"image": str(tmp_path / f"small_{rng}.png")})
        chain({"image": str(tmp_path / "small_1.png"), "spacing_mm": 0.2})  # resampled: no hint due
    hints = [r.message for r in caplog.records if "downscaled copies" in r.message]
    assert len(hints) == 1 and "small_1.png" in hints[0] and "'spacing_mm'" in hints[0]


# ------------------------------------------------------------------------------------------ phantoms as DICOM


def test_digital_dicom_phantom_no_flags(chain, tmp_path):
    # an MLO right breast at 0.2 mm without ViewPosition: DICOM says digital and the spacing, the image the view
    phantom = make_phantom(1472, 960, view="MLO", laterality="R", lesions=("malignant",), rng=3)
    path = save_dicom_atomic(phantom.image, tmp_path / "digital.dcm", "R", None, "p1", pixel_spacing_mm=0.2)
    Image.fromarray(phantom.masks["malignant"] * 255).save(tmp_path / "malignant.png")
    out = chain({"image": str(path), "mask_malignant": str(tmp_path / "malignant.png"), "malignant": 1})
    meta = out["image"].meta
    assert (meta["film"], meta["film_source"]) == (False, "dicom:SOPClassUID")
    assert (meta["spacing_source"], meta["resample_factor"]) == ("dicom:PixelSpacing", [2.0, 2.0])
    assert (meta["view"], meta["view_source"]) == ("MLO", "image")
    assert (meta["laterality"], meta["laterality_source"]) == ("R", "dicom") and meta["flipped"]
    assert _faces_right(out)
    lesion, breast = out["mask"][1].bool(), out["breast_mask"][0].bool()
    assert abs(int(lesion.sum()) - 4 * int(phantom.masks["malignant"].sum())) < 0.1 * 4 * phantom.masks["malignant"].sum()
    assert bool(breast[lesion].all())
    # physical size: the breast is as tall (mm) in the window as in the file
    raw_rows = np.flatnonzero((phantom.image > 0).any(axis=1))
    rows = torch.nonzero(breast.any(dim=1)).flatten()
    assert abs((rows[-1] - rows[0] + 1) * NYU_PIXEL_SPACING_MM - (raw_rows[-1] - raw_rows[0] + 1) * 0.2) < 5.0


def test_film_dicom_phantom_no_flags(chain, tmp_path):
    phantom = make_phantom(1472, 960, view="CC", laterality="L", lesions=("benign",), rng=5)
    film = as_scanned_film(phantom.image, rng=5)
    # no laterality tag (the content orients it); ViewPosition given: the phantom's half-ellipse CC breast fills
    # its chest-wall corner as an MLO does (coverage 0.95, real CC views 0.71-0.86), so the image rule is not
    # asked here (the MLO phantom above and the real views test it)
    path = save_dicom_atomic(film, tmp_path / "film.dcm", None, "CC", "p2", pixel_spacing_mm=0.2, film=True)
    Image.fromarray(phantom.masks["benign"] * 255).save(tmp_path / "benign.png")
    out = chain({"image": str(path), "mask_benign": str(tmp_path / "benign.png"), "benign": 1})
    meta = out["image"].meta
    assert (meta["film"], meta["film_source"]) == (True, "dicom:ConversionType")
    assert (meta["spacing_source"], meta["resample_factor"]) == ("dicom:NominalScannedPixelSpacing", [2.0, 2.0])
    assert (meta["view"], meta["view_source"]) == ("CC", "dicom")
    assert (meta["laterality"], meta["laterality_source"], meta["orientation_rule"]) == ("L", "image", "content")
    assert _faces_right(out) and _nothing_outside_the_breast(out)  # label block and film edge are gone
    lesion, breast = out["mask"][0].bool(), out["breast_mask"][0].bool()
    assert lesion.any() and bool(breast[lesion].all())
    # the label block's centre, followed into the window, is background there
    label = np.argwhere(film >= 3900)
    centre = map_to_model_frame(meta, label.mean(axis=0)[None])[0]  # raw (row, col) -> window
    row, col = int(round(centre[0])), int(round(centre[1]))
    assert 0 <= row < MODEL_FRAME_SIZE[0] and 0 <= col < MODEL_FRAME_SIZE[1]  # the label's place is in the window
    assert not breast[row, col] and out["image"][0, row, col] == out["image"].min()


@pytest.mark.parametrize("display", [
    dict(WindowCenter=1000, WindowWidth=2200),  # linear window: the stored background 0 maps to 454
    dict(WindowCenter=1500, WindowWidth=3000, VOILUTFunction="SIGMOID"),  # GE: a sigmoid never reaches 0
    dict(signed=True),  # signed pixel data with the background at -1000
])
def test_digital_background_above_or_below_zero_is_shifted_to_zero(chain, tmp_path, display):
    phantom = make_phantom(1104, 720, view="CC", laterality="L", lesions=("benign",), rng=7)
    stored = phantom.image.astype(np.int32)  # 12-bit, background 0
    tags = dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2", ImageLaterality="L", ViewPosition="CC")
    plain = chain({"image": str(write_dicom(tmp_path / "plain.dcm", stored.astype(np.uint16), **tags))})
    display = dict(display)
    if display.pop("signed", False):
        stored = (stored - 1000).astype(np.int16)
    else:
        stored = stored.astype(np.uint16)
    out = chain({"image": str(write_dicom(tmp_path / "shown.dcm", stored, **tags, **display))})
    meta = out["image"].meta
    assert meta["film"] is False and meta["background_value"] != 0 and plain["image"].meta["background_value"] == 0
    # the same breast, crop and window as the file with its background at 0 (a sigmoid bends the values inside)
    np.testing.assert_array_equal(out["breast_mask"].numpy(), plain["breast_mask"].numpy())
    def at_minimum(image):
        return int((image == image.min()).sum())

    assert at_minimum(out["image"]) == at_minimum(plain["image"])  # the background (and padding) stays flat
    assert np.corrcoef(out["image"].numpy().ravel(), plain["image"].numpy().ravel())[0, 1] > 0.98


def test_view_stored_mirrored_to_its_laterality_tag_faces_right(chain, tmp_path):
    # a left breast whose archive stores it with the chest wall on the right (or a wrong tag): the image decides
    phantom = make_phantom(1104, 720, view="CC", laterality="L", lesions=("benign",), rng=13)
    mirrored = np.ascontiguousarray(phantom.image[:, ::-1]).astype(np.uint16)
    tags = dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2", ImageLaterality="L", ViewPosition="CC")
    out = chain({"image": str(write_dicom(tmp_path / "mirrored.dcm", mirrored, **tags))})
    meta = out["image"].meta
    assert _faces_right(out) and meta["flipped"]
    assert (meta["orientation_rule"], meta["laterality"], meta["laterality_source"]) == (
        "content (laterality disagrees)", "L", "dicom")


def test_patient_orientation_says_where_the_chest_wall_is(chain, tmp_path):
    # a right CC stored as the vendor acquired it, chest wall on the left ("A\\L"): the laterality rule alone would
    # flip it and need the image to overrule it; the tag describes the pixels and decides, with no warning
    phantom = make_phantom(1104, 720, view="CC", laterality="L", lesions=("benign",), rng=13)  # chest wall left
    tags = dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2", ImageLaterality="R", ViewPosition="CC")
    stored = phantom.image.astype(np.uint16)
    out = chain({"image": str(write_dicom(tmp_path / "rcc.dcm", stored, PatientOrientation=["A", "L"], **tags))})
    meta = out["image"].meta
    assert _faces_right(out) and not meta["flipped"] and not meta["flipped_vertically"]
    assert (meta["orientation_rule"], meta["laterality"]) == ("patient orientation", "R")
    # CBIS-DDSM writes the view into PatientOrientation: one value, not a direction pair, so it is ignored
    garbled = chain({"image": str(write_dicom(tmp_path / "cbis.dcm", stored, PatientOrientation="CC", **tags))})
    assert garbled["image"].meta["orientation_rule"] == "content (laterality disagrees)"
    # an exam's horizontal_flip flag (NYU) keeps the laterality rule
    flagged = chain({"image": str(tmp_path / "rcc.dcm"), "horizontal_flip": "YES"})
    assert flagged["image"].meta["orientation_rule"] == "laterality" and not flagged["image"].meta["flipped"]
    # a tag the image clearly contradicts: the image decides and, with no laterality tag, names the breast
    untagged = dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2", ViewPosition="CC")
    wrong = chain({"image": str(write_dicom(tmp_path / "wrong.dcm", stored, PatientOrientation=["P", "R"], **untagged))})
    meta = wrong["image"].meta
    assert _faces_right(wrong) and meta["orientation_rule"] == "content (patient orientation disagrees)"
    assert (meta["laterality"], meta["laterality_source"]) == ("L", "image")


@pytest.mark.parametrize("view, upright, upside_down", [("MLO", ["A", "FR"], ["A", "HL"]), ("CC", ["A", "R"], ["A", "L"])])
def test_view_stored_upside_down_is_turned_upright(chain, tmp_path, view, upright, upside_down):
    # PatientOrientation's column direction: towards the feet (MLO) or across the body (CC) when upright; a left
    # breast's columns running to the head, or to its own side (CC), mean the image is stored upside down
    phantom = make_phantom(1472, 960, view=view, laterality="L", lesions=("benign",), rng=17)
    stored = phantom.image.astype(np.uint16)
    tags = dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2", ImageLaterality="L")
    straight = chain({"image": str(write_dicom(tmp_path / "upright.dcm", stored, PatientOrientation=upright, **tags))})
    path = write_dicom(tmp_path / "upside_down.dcm", np.ascontiguousarray(stored[::-1]), PatientOrientation=upside_down,
                       **tags)
    turned = chain({"image": str(path)})
    assert not straight["image"].meta["flipped_vertically"] and turned["image"].meta["flipped_vertically"]
    assert turned["image"].meta["view"] == straight["image"].meta["view"] == view  # read from the upright image
    np.testing.assert_array_equal(turned["breast_mask"].numpy(), straight["breast_mask"].numpy())
    np.testing.assert_allclose(turned["image"].numpy(), straight["image"].numpy(), atol=1e-5)
    # raw points map into the window and the window maps back onto the stored (upside-down) pixels
    lesion = np.argwhere(phantom.masks["benign"][::-1] > 0).mean(axis=0)
    row, col = map_to_model_frame(turned["image"].meta, lesion[None])[0].round().astype(int)
    upright_row, upright_col = map_to_model_frame(straight["image"].meta, np.argwhere(phantom.masks["benign"] > 0)
                                                  .mean(axis=0)[None])[0].round().astype(int)
    assert abs(row - upright_row) <= 1 and abs(col - upright_col) <= 1
    restored_turned, restored_straight = (chain.inverse({"breast_mask": out["breast_mask"]})["breast_mask"][0].numpy()
                                          for out in (turned, straight))
    assert restored_turned.shape == stored.shape and restored_turned.any()
    np.testing.assert_array_equal(restored_turned, restored_straight[::-1])  # back on the stored, upside-down pixels


def test_negative_png_is_turned_positive(chain, tmp_path):
    # a digital view exported without its MONOCHROME1 inversion: background white, dense tissue dark
    phantom = make_phantom(1104, 720, view="MLO", laterality="R", lesions=("malignant",), rng=11)
    Image.fromarray(phantom.image.astype(np.uint16)).save(tmp_path / "positive.png")
    Image.fromarray((4095 - phantom.image).astype(np.uint16)).save(tmp_path / "negative.png")
    positive, negative = (chain({"image": str(tmp_path / f"{name}.png")}) for name in ("positive", "negative"))
    assert negative["image"].meta["inverted"] and negative["image"].meta["inverted_source"] == "pixels:background-at-maximum"
    assert not positive["image"].meta["inverted"] and positive["image"].meta["inverted_source"] == "none"
    assert negative["image"].meta["film"] is False  # its background is flat once it is positive
    np.testing.assert_array_equal(negative["breast_mask"].numpy(), positive["breast_mask"].numpy())
    np.testing.assert_allclose(negative["image"].numpy(), positive["image"].numpy(), atol=1e-4)


def test_real_mammograms_are_not_taken_for_negatives():
    # film (CBIS-DDSM, mini-MIAS, mini-DDSM) and digital (NYU, CSAW-S): at most 0.3 % of their pixels hold the maximum
    files = [NYU_SAMPLE / "images" / "0_L-CC.png", CBIS_DDSM / "Mass-Test_P_00173_LEFT_CC.dcm",
             MINI_MIAS / "images" / "mdb075.pgm", MINI_DDSM / "Cancer" / "0001" / "C_0001_1.RIGHT_MLO.jpg",
             CSAW_S / "004_2.png"]
    for path in files:
        image = _load(require(path))["image"][0].numpy()
        assert not negative_image(image), path
        if path.suffix == ".png":  # the digital views, exported negative
            assert negative_image(image.max() + image.min() - image), path


# ------------------------------------------------------------------------------------------ shared real files


def test_nyu_sample_is_digital_without_spacing_and_not_resampled(chain):
    out = chain({"image": str(require(NYU_SAMPLE / "images" / "0_R-CC.png"))})  # no view/laterality given
    meta = out["image"].meta
    assert (meta["film"], meta["film_source"]) == (False, "pixels:flat-background")
    assert (meta["spacing_source"], meta["resample_factor"]) == ("none", [1.0, 1.0])
    assert (meta["view"], meta["view_source"], meta["laterality"], meta["laterality_source"]) == ("CC", "filename", "R", "filename")
    assert meta["flipped"] and _faces_right(out)


@pytest.mark.parametrize("name, label_pixels", [("0_L-CC", 1085), ("0_R-CC", 0)])
def test_nyu_burned_in_label_leaves_the_digital_window(chain, name, label_pixels):
    """Digital images too: a label apart from the breast (0_L-CC's "L" at the top right) is not in the default
    window; the breast (its corners at the image edge included, which the mask's erosion/dilation cuts) and the
    geometry are the original's, which ``keep_artefacts=True`` reproduces with the label."""
    path = str(require(NYU_SAMPLE / "images" / f"{name}.png"))
    windows = {
        keep: Compose(load_transforms() + frame_transforms(keep_artefacts=keep) + window_transforms())({"image": path})
        for keep in (True, False)
    }
    original, cleared = (windows[keep]["image"][0].numpy() for keep in (True, False))
    # label = the foreground of the original window apart from its largest component (the breast)
    labels, _ = ndi.label(original > 0)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    breast = labels == int(np.argmax(sizes))
    label = (original > 0) & ~breast
    assert int(label.sum()) == label_pixels and windows[False]["image"].meta["artefact_pixels"] == label_pixels
    assert not (cleared[label] > 0).any()  # no label pixel left in the window
    np.testing.assert_array_equal(cleared[~label], original[~label])  # everything else, the breast too, untouched
    assert int((breast & ~windows[False]["breast_mask"][0].numpy()).sum()) > 10000  # corners outside the mask
    for key in ("crop_box", "rightmost_points", "bottommost_points", "best_center", "window_pad", "window_box"):
        assert repr(windows[True]["image"].meta[key]) == repr(windows[False]["image"].meta[key]), key
    # the default chain, standardised: the label's place is background (the padding's value)
    out = chain({"image": path})
    assert bool((out["image"][0][torch.as_tensor(label)] == out["image"].min()).all())


def test_cbis_ddsm_film_from_dicom_without_labels_in_the_window(chain):
    path = require(CBIS_DDSM / "Mass-Test_P_00820_LEFT_CC.dcm")
    out = chain({"image": str(path)})
    meta = out["image"].meta
    assert (meta["film"], meta["film_source"]) == (True, "dicom:ConversionType")
    assert (meta["laterality"], meta["laterality_source"], meta["view"], meta["view_source"]) == ("L", "dicom", "CC", "filename")
    assert meta["spacing_source"] == "none"  # CBIS-DDSM files carry no spacing and do not name the digitiser
    assert _faces_right(out) and _nothing_outside_the_breast(out)


@pytest.mark.parametrize("ref", ["mdb001", "mdb184"])
def test_mini_mias_from_its_builder_at_the_model_frame_size(chain, ref, tmp_path):
    require(MINI_MIAS / "images" / f"{ref}.pgm")
    items = build_mini_mias_items(MINI_MIAS / "Info.txt", MINI_MIAS / "images", tmp_path).items
    item = next(i for i in items if i["image"].endswith(f"{ref}.pgm"))
    out = chain(dict(item))
    meta = out["image"].meta
    assert (meta["film"], meta["film_source"], meta["spacing_source"]) == (True, "datalist", "datalist")
    assert meta["resample_factor"] == [2.0, 2.0]
    assert _faces_right(out) and _nothing_outside_the_breast(out)
    # the breast has its physical size: raw film-mask height x 0.2 mm == window height x 0.1 mm (within 1 %)
    raw = BreastMaskd(method="film")(_load(item["image"]) | {"laterality": item["laterality"]})["breast_mask"][0]
    raw_rows = torch.nonzero(raw.any(dim=1)).flatten()
    rows = torch.nonzero(out["breast_mask"][0].any(dim=1)).flatten()
    raw_mm, window_mm = float(raw_rows[-1] - raw_rows[0] + 1) * 0.2, float(rows[-1] - rows[0] + 1) * NYU_PIXEL_SPACING_MM
    assert abs(raw_mm - window_mm) < 0.01 * raw_mm + 0.5
    lesion = out["mask"].bool().any(dim=0)
    assert lesion.any() and bool(out["breast_mask"][0][lesion].float().mean() > 0.9)


@pytest.mark.parametrize(
    "name",
    ["Benign/0029/C_0029_1.LEFT_CC.jpg", "Cancer/0001/C_0001_1.RIGHT_MLO.jpg", "Cancer/0002/C_0002_1.LEFT_CC.jpg"],
)
def test_mini_ddsm_jpeg_film_no_flags(chain, name):
    path = require(MINI_DDSM / name)
    # a bare file: the pixels say film, the name says view and laterality
    bare = chain({"image": str(path)})
    meta = bare["image"].meta
    assert (meta["film"], meta["film_source"]) == (True, "pixels:no-flat-background")
    assert meta["view_source"] == meta["laterality_source"] == "filename"
    assert _faces_right(bare) and _nothing_outside_the_breast(bare)
    # film-edge strips are not breast: the crop does not run along the film's whole height
    assert meta["crop_box"][1] - meta["crop_box"][0] < 0.95 * meta["spatial_shape"][0]
    # through its builder: spacing from the case's .ics (where there is one), outline masks filled
    item = next(i for i in build_ddsm_items(path.parent).items if i["image"] == str(path))
    out = chain(dict(item))
    found = ddsm_spacing_mm(path)
    assert out["image"].meta["spacing_source"] == ("datalist" if found else "none")
    lesion = out["mask"].bool().any(dim=0)
    if "mask_benign" in item or "mask_malignant" in item:
        breast, image = out["breast_mask"][0].bool(), out["image"][0]
        assert int(lesion.sum()) > 1000 and bool(breast[lesion].float().mean() > 0.95)  # a filled region
        assert float(image[lesion].mean()) > float(image[breast].mean())  # on the (brighter) lesion


@pytest.mark.parametrize("name", ["Benign/0029/C_0029_1.LEFT_CC.jpg", "Cancer/0001/C_0001_1.RIGHT_MLO.jpg"])
def test_film_stored_mirrored_to_its_laterality_keeps_its_breast(chain, tmp_path, name):
    # the laterality puts the chest wall on the side where the film has only labels and edges: the breast mask
    # must still be the breast (a larger seed on the other side wins), and the image then decides the flip
    path = require(MINI_DDSM / name)
    laterality = "L" if "LEFT" in name else "R"
    straight = chain({"image": str(path), "laterality": laterality, "film": True})
    mirrored_path = tmp_path / "mirrored.png"
    Image.fromarray(np.asarray(Image.open(path).convert("L"))[:, ::-1]).save(mirrored_path)
    mirrored = chain({"image": str(mirrored_path), "laterality": laterality, "film": True})
    assert mirrored["image"].meta["orientation_rule"] == "content (laterality disagrees)" and _faces_right(mirrored)
    breast, expected = (int(out["breast_mask"].sum()) for out in (mirrored, straight))
    assert abs(breast - expected) < 0.05 * expected


@pytest.mark.parametrize("name", ["004_0", "004_2"])
def test_csaw_s_digital_png_with_cancer_mask(chain, name):
    path = require(CSAW_S / f"{name}.png")
    cancer = CSAW_S / f"{name}_cancer.png"
    raw = np.asarray(Image.open(cancer)) > 0
    rows, cols = np.flatnonzero(raw.any(axis=1)), np.flatnonzero(raw.any(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == CSAW_CANCER_BOXES[name]  # the README's box
    out = chain({"image": str(path), "mask_malignant": str(cancer), "malignant": 1})
    meta = out["image"].meta
    assert (meta["film"], meta["film_source"], meta["spacing_source"]) == (False, "pixels:flat-background", "none")
    assert meta["view"] == ("MLO" if name == "004_0" else "CC") and meta["view_source"] == "image"  # 004_0 reads RMLO
    assert meta["flipped"] and _faces_right(out)  # right breasts, named so by the image
    assert (meta["laterality"], meta["laterality_source"]) == ("R", "image")
    lesion, breast = out["mask"][1].bool(), out["breast_mask"][0].bool()
    assert int(lesion.sum()) == int(raw.sum()) and bool(breast[lesion].all())
    corners = map_to_model_frame(meta, np.array([[rows[0], cols[0]], [rows[-1], cols[-1]]], dtype=float))
    got = torch.nonzero(lesion)
    assert {int(got[:, 0].min()), int(got[:, 0].max())} == {int(round(c)) for c in corners[:, 0]}


def test_view_from_the_image_agrees_with_the_names():
    """Pectoral muscle in the chest-wall top corner => MLO, on images whose names are hidden from the rule."""
    names = [
        "Benign/0029/C_0029_1.LEFT_CC.jpg", "Benign/0029/C_0029_1.LEFT_MLO.jpg",
        "Benign/0033/C_0033_1.RIGHT_CC.jpg", "Benign/0033/C_0033_1.RIGHT_MLO.jpg",
        "Cancer/0001/C_0001_1.RIGHT_CC.jpg", "Cancer/0001/C_0001_1.LEFT_MLO.jpg",
    ]
    for name in names:
        item = _load(require(MINI_DDSM / name))
        item["image"].meta["filename_or_obj"] = "hidden.jpg"
        item = BreastMaskd(method="auto")(item)
        out = OrientBreastd(keys=("image", "breast_mask"))(item)
        assert out["image"].meta["view_source"] == "image"
        assert out["view"] == filename_view_laterality(name)[0], name
