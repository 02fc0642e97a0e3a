"""Preprocessing on the real data in ../shared (skipped when absent): NYU sample vs the original pipeline,
CBIS-DDSM scanned-film DICOMs and mini-MIAS PGMs.

A handful of images only: each full-size preprocessing takes 0.2-5 s on one CPU core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, DeleteItemsd, EnsureChannelFirstd, LoadImaged
from PIL import Image

from glam_bundle.data.readers import MammogramReader
from glam_bundle.transforms import (
    BreastMaskd,
    OrientBreastd,
    default_preprocessing,
    map_to_model_frame,
    otsu_threshold,
)
from tests.conftest import CBIS_DDSM, MINI_MIAS, NYU_SAMPLE, ORIGINAL_CHECKPOINT, require


def keep_breast_mask(chain: Compose) -> Compose:
    """``chain`` without its final DeleteItemsd, so that a test can check the breast mask in the model frame."""
    return Compose([t for t in chain.transforms if not isinstance(t, DeleteItemsd)])


@pytest.fixture(scope="module")
def inference_chain():
    return keep_breast_mask(default_preprocessing())


# ------------------------------------------------------------------------------------------------ NYU sample


def test_nyu_left_cc_matches_the_original_golden_input():
    image = require(NYU_SAMPLE / "images" / "0_L-CC.png")
    golden = np.load(require(ORIGINAL_CHECKPOINT / "golden_0_L-CC.npz"))["image"][0]
    # keep_artefacts: the original keeps the burned-in "L" (top right) that the default chain removes
    chain = keep_breast_mask(default_preprocessing(keep_artefacts=True))
    out = chain({"image": str(image), "view": "CC", "laterality": "L", "benign": 0, "malignant": 0})
    ours = out["image"].numpy()
    assert ours.shape == golden.shape == (1, 2944, 1920)
    assert np.abs(ours - golden).max() < 1e-5  # float32 summation order of mean/std only (acceptance: 1e-3)
    meta = out["image"].meta
    # glam_reference.md §5.1-5.3: crop, anchor points, best centre and padding of 0_L-CC
    assert meta["crop_box"] == [0, 2023, 0, 801]
    assert meta["rightmost_points"][1] == 750 and meta["bottommost_points"][0] == 1972
    assert meta["best_center"] == [1011, -211] and meta["window_pad"] == [460, 461, 1119]
    assert not meta["flipped"]


def test_nyu_right_cc_puts_the_lesion_where_the_segmentation_is(inference_chain):
    image = require(NYU_SAMPLE / "images" / "0_R-CC.png")
    segmentation = require(NYU_SAMPLE / "segmentation" / "0_R-CC_benign.png")
    item = {
        "image": str(image),
        "view": "CC",
        "laterality": "R",
        "benign": 1,
        "malignant": 0,
        "mask_benign": str(segmentation),
        "mask_frame": "model",
    }
    out = inference_chain(item)
    meta = out["image"].meta
    assert meta["flipped"] and meta["best_center"] == [1072, -210] and meta["window_pad"] == [400, 400, 1119]
    assert meta["rightmost_points"][1] == 751  # the original's +1 for flipped views
    lesion = out["mask"][0].bool()
    rows, cols = lesion.nonzero().T
    assert int(lesion.sum()) == 20440 and out["mask"][1].sum() == 0
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (1785, 1950, 362, 536)
    assert out["has_mask"].tolist() == [1.0, 0.0] and out["label"].tolist() == [1.0, 0.0]
    # the mask (given in the model frame, untouched) sits on the bright lesion of the preprocessed image
    x = out["image"][0]
    breast = out["breast_mask"][0]
    assert bool(breast[lesion].all())
    lesion_mean, breast_mean, breast_std = float(x[lesion].mean()), float(x[breast].mean()), float(x[breast].std())
    assert lesion_mean > breast_mean + 0.5 * breast_std
    # the surrounding ring of the same size is darker than the lesion
    ring = torch.zeros_like(lesion)
    ring[1735:2000, 312:586] = True
    ring &= ~lesion
    assert lesion_mean > float(x[ring].mean()) + 0.3


def test_nyu_content_orientation_agrees_with_laterality():
    load = Compose([LoadImaged("image", reader=MammogramReader(), image_only=True), EnsureChannelFirstd("image")])
    for name, flipped in (("0_L-CC", False), ("0_R-CC", True)):
        item = load({"image": str(require(NYU_SAMPLE / "images" / f"{name}.png"))})
        item = BreastMaskd(method="auto")(item)
        assert item["image"].meta["breast_mask_method"] == "original"  # digital: zero background
        out = OrientBreastd(keys=("image", "breast_mask"), mode="auto")(item)
        assert out["image"].meta["flipped"] is flipped


# ------------------------------------------------------------------------------------------------ CBIS-DDSM


@pytest.mark.parametrize("name", ["Mass-Test_P_00173_LEFT_CC.dcm", "Mass-Test_P_00820_LEFT_CC.dcm"])
def test_cbis_ddsm_film_dicom(name):
    path = require(CBIS_DDSM / name)
    # no laterality/view in the item: laterality comes from the DICOM Laterality tag, the view defaults to CC
    out = keep_breast_mask(default_preprocessing(film=True))({"image": str(path)})
    image, breast = out["image"], out["breast_mask"][0]
    assert image.shape == (1, 2944, 1920) and out["laterality"] == "L" and not image.meta["flipped"]
    assert image.meta["orientation_rule"] == "laterality" and image.meta["breast_mask_method"] == "film"
    x = image[0]
    background = float(x.min())
    # breast facing right: it fills the left edge, the far right columns are background (suppressed/padding)
    assert breast[:, :20].float().mean() > 0.9
    assert not breast[:, -100:].any() and bool((x[:, -100:] == background).all())
    # burned-in labels (bright pixels in the raw image's right 40 %, where the breast does not reach) are
    # not breast: the raw-frame mask excludes them and the crop (hence the window) leaves them out
    load = Compose([LoadImaged("image", reader=MammogramReader(), image_only=True), EnsureChannelFirstd("image")])
    raw = BreastMaskd(method="film")(load({"image": str(path)}))
    plane = raw["image"][0].numpy()
    first_col = int(plane.shape[1] * 0.6)
    label = np.zeros(plane.shape, bool)
    label[:, first_col:] = plane[:, first_col:] > otsu_threshold(plane[plane > 0])
    assert label.sum() > 1000  # the label is there
    assert not raw["breast_mask"][0].numpy()[label].any()
    assert image.meta["crop_box"][3] < np.flatnonzero(label.any(axis=0)).min()


# ------------------------------------------------------------------------------------------------ mini-MIAS


def mias_circles() -> dict[str, list[tuple[str, int, int, int]]]:
    info = require(MINI_MIAS / "Info.txt")
    circles: dict[str, list] = {}
    for line in info.read_text().splitlines():
        tokens = line.split()
        if len(tokens) == 7 and not line.startswith("#"):
            circles.setdefault(tokens[0], []).append((tokens[3], int(tokens[4]), int(tokens[5]), int(tokens[6])))
    return circles


# benign and malignant, right (odd number, facing left) and left breasts
MIAS_CASES = ["mdb025", "mdb023", "mdb184", "mdb244"]


@pytest.mark.parametrize("ref", MIAS_CASES)
def test_mini_mias_film_with_resampling(ref, tmp_path):
    path = require(MINI_MIAS / "images" / f"{ref}.pgm")
    severity, x, y, radius = mias_circles()[ref][0]
    height, width = 1024, 1024
    centre = (height - y, x)  # Info.txt's origin is the bottom-left corner
    rows, cols = np.mgrid[0:height, 0:width]
    circle = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.uint8) * 255
    key = "mask_benign" if severity == "B" else "mask_malignant"
    Image.fromarray(circle).save(tmp_path / "circle.png")
    number = int(ref[3:])
    item = {
        "image": str(path),
        "view": "MLO",
        "laterality": "R" if number % 2 else "L",
        "benign": int(severity == "B"),
        "malignant": int(severity == "M"),
        key: str(tmp_path / "circle.png"),
    }
    out = keep_breast_mask(default_preprocessing(film=True, spacing=0.2))(item)
    image, breast = out["image"], out["breast_mask"][0]
    assert image.shape == (1, 2944, 1920) and image.meta["resample_factor"] == [2.0, 2.0]
    assert image.meta["flipped"] is (number % 2 == 1)
    channel = 0 if severity == "B" else 1
    lesion = out["mask"][channel].bool()
    assert out["has_mask"][channel] == 1 and lesion.any() and out["mask"][1 - channel].sum() == 0
    # the circle centre, mapped through the recorded geometry, lies inside the preprocessed lesion mask
    # and inside the breast
    r, c = np.round(map_to_model_frame(image.meta, [centre])[0]).astype(int)
    assert bool(lesion[r, c]) and bool(breast[r, c])
    # breast faces right: chest wall on the left (MLO: the upper part is pectoral muscle/breast)
    occupied = breast.any(dim=1)
    assert breast[occupied][:, :20].float().mean() > 0.8
    assert not breast[:, -200:].any()


def test_mini_mias_content_orientation_agrees_with_the_numbering():
    load = Compose([LoadImaged("image", reader=MammogramReader(), image_only=True), EnsureChannelFirstd("image")])
    for ref in MIAS_CASES:
        # "film": true is what build_mini_mias_items writes (MIAS is documented as digitised film)
        item = load({"image": str(require(MINI_MIAS / "images" / f"{ref}.pgm")), "film": True})
        item = BreastMaskd(method="auto")(item)
        assert item["image"].meta["breast_mask_method"] == "film" and item["image"].meta["film_source"] == "datalist"
        out = OrientBreastd(keys=("image", "breast_mask"))(item)  # no laterality: content decides
        assert out["image"].meta["orientation_rule"] == "content"
        assert out["image"].meta["flipped"] is (int(ref[3:]) % 2 == 1)
