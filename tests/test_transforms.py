"""Unit tests of glam_bundle.transforms on small synthetic images (fast; no shared data needed)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose, DeleteItemsd, NormalizeIntensityd
from PIL import Image

from glam_bundle.data.cache import transform_fingerprint
from glam_bundle.data.errors import BadInputError
from glam_bundle.transforms import (
    BestCenterWindowd,
    BreastMaskd,
    CropBreastd,
    MakeLabeld,
    OrientBreastd,
    RandWindowNoised,
    ResampleToSpacingd,
    StackMasksd,
    best_center,
    chest_wall_on_right,
    crop_geometry,
    default_preprocessing,
    film_breast_mask,
    finish_transforms,
    frame_transforms,
    load_transforms,
    make_cached_dataset,
    map_to_model_frame,
    original_breast_mask,
    otsu_threshold,
    window_geometry,
    window_transforms,
)

# ------------------------------------------------------------------------------------------------ helpers


def breast_plane(height: int = 240, width: int = 160, chest_wall: str = "left", value: float = 1000.0) -> np.ndarray:
    """(H, W) float32 half-ellipse breast leaning on the chest wall, brighter inside, zero background."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = cols if chest_wall == "left" else width - 1 - cols
    distance = ((rows - height * 0.45) / (height * 0.38)) ** 2 + (depth / (width * 0.7)) ** 2
    return np.where(distance < 1, value * (1.5 - distance), 0).astype(np.float32)


def sideless_plane(height: int = 240, width: int = 160) -> np.ndarray:
    """(H, W) float32 rectangle: no side looks more like a chest wall than the other."""
    plane = np.zeros((height, width), np.float32)
    plane[20 : height - 20, 30 : width - 30] = 1000.0
    return plane


def meta_image(plane: np.ndarray, **meta) -> MetaTensor:
    return MetaTensor(torch.as_tensor(plane)[None].clone(), meta={"filename_or_obj": "/x/img.png", **meta})


def reference_crop(mask: np.ndarray, mode: str, buffer: int = 50, ratio: float = 1 / 3):
    """glam_reference.md §5.1 steps 6-12 transcribed literally, on the unflipped image with mode 'left'/'right'."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    bottom_y, bottom_x = y1 - 1, np.flatnonzero(mask[y1 - 1])
    y0 -= min(y0, buffer)
    y1 += min(height - y1, buffer)
    if mode == "left":
        x0 -= min(x0, buffer)
    else:
        x1 += min(width - x1, buffer)
    bottom_y -= y0
    bottom_x = np.flip(x1 - bottom_x) if mode == "left" else bottom_x - x0
    crop = mask[y0:y1, x0:x1]
    ignore = int(crop.shape[0] * ratio)
    area = crop[ignore:]
    has = np.flatnonzero(area.any(0))
    right_x = has[-1] if mode == "right" else has[0]
    right_y = np.flatnonzero(area[:, right_x]) + ignore
    if mode == "left":
        right_x = crop.shape[1] - right_x
    return [y0, y1, x0, x1], [[right_y[0], right_y[-1]], right_x], [bottom_y, [bottom_x[0], bottom_x[-1]]]


def brute_force_center(foreground, view, rightmost, bottommost, window):
    """§5.2 by explicit loops (slow, obvious) to check the vectorised best_center."""
    height, width = foreground.shape
    half = (window[0] // 2, window[1] // 2)
    com = (height // 2, width // 2)
    rows = list(range(half[0], height - half[0] + 1)) or [com[0]]
    cols = list(range(half[1], width - half[1] + 1)) or [com[1]]
    if view == "CC":
        cols = [rightmost - half[1] - 1]
    best, best_key = None, None
    for r in rows:
        for c in cols:
            r0, c0 = max(r - half[0], 0), max(c - half[1], 0)
            count = foreground[r0 : min(r0 + window[0], height), c0 : min(c0 + window[1], width)].sum()
            key = (-count, (r - com[0]) ** 2 + (c - com[1]) ** 2)
            if best_key is None or key < best_key:
                best, best_key = (r, c), key
    return best


def write_png(path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


# ------------------------------------------------------------------------------------------------ masks


def test_otsu_threshold_splits_two_populations():
    values = np.concatenate([np.full(500, 10.0), np.full(300, 200.0)]) + np.random.default_rng(0).normal(0, 3, 800)
    threshold = otsu_threshold(values)
    assert values[:500].max() <= threshold < values[500:].min()
    assert otsu_threshold(np.full(10, 7.0)) == 7.0


def test_original_breast_mask_drops_thin_lines_and_small_blobs():
    plane = breast_plane()
    plane[5:7, :] = 500  # 2-px line across the image (film/detector artefact)
    plane[200:206, 140:146] = 800  # small blob away from the breast
    mask = original_breast_mask(plane, iterations=4)
    breast = breast_plane() > 0
    assert not mask[5:7, 120:].any() and not mask[200:206, 140:146].any()
    assert (mask & breast).sum() / breast.sum() > 0.97
    assert (mask & ~breast).sum() < 0.03 * breast.sum()


def film_plane(label_size: int = 30) -> np.ndarray:
    """(H, W) scanned-film phantom: zero padding, film strip with background 8, breast on its left edge,
    a bright label floating in the film background, a film border line."""
    height, width = 240, 200
    plane = np.zeros((height, width), np.float32)
    plane[:, 20:180] = 8 + np.random.default_rng(1).normal(0, 1, (height, 160))  # film strip
    breast = breast_plane(height, 140)
    plane[:, 20:160] = np.where(breast > 0, 80 + breast / 10, plane[:, 20:160])
    plane[20 : 20 + label_size, 120 : 120 + label_size] = 240  # burned-in label, top right, in the background
    plane[:, 177:179] = 230  # bright film border line
    return plane


def test_film_breast_mask_takes_the_breast_not_labels_or_border():
    plane = film_plane()
    mask = film_breast_mask(plane)
    breast = np.zeros_like(mask)
    breast[:, 20:160] = breast_plane(240, 140) > 0
    assert (mask & breast).sum() / breast.sum() > 0.97
    assert not mask[20:50, 120:150].any()  # label
    assert not mask[:, 175:].any()  # film border
    assert (mask & ~breast).sum() < 0.05 * breast.sum()


def test_film_breast_mask_prefers_the_chest_wall_component_over_a_larger_label():
    plane = film_plane(label_size=0)
    plane[:, 20:160] = np.where(plane[:, 20:160] > 60, 8, plane[:, 20:160])  # remove the phantom breast
    plane[100:140, 20:50] = 200  # small breast-like region on the film's left edge (1200 px)
    plane[40:100, 80:150] = 220  # larger bright label floating in the background (4200 px)
    mask = film_breast_mask(plane)
    assert mask[110:130, 25:45].all()
    assert not mask[50:90, 90:140].any()
    # a known chest-wall side restricts the choice: nothing touches the right edge but the border line
    # (removed by the opening), so the rule falls back to the largest component
    assert film_breast_mask(plane, chest_wall="left")[110:130, 25:45].all()


def test_breast_maskd_methods_auto_and_background_suppression():
    digital = {"image": meta_image(breast_plane())}
    out = BreastMaskd(method="auto", iterations=4)(digital)
    assert out["breast_mask"].shape == (1, 240, 160) and out["breast_mask"].dtype == torch.bool
    assert out["image"].meta["breast_mask_method"] == "original"
    torch.testing.assert_close(out["image"], digital["image"])  # not changed without suppression

    film = {"image": meta_image(film_plane())}
    out = BreastMaskd(method="auto", iterations=4, suppress_background=True)(film)
    assert out["image"].meta["breast_mask_method"] == "film"
    mask = out["breast_mask"][0]
    assert (out["image"][0][~mask] == 0).all() and (out["image"][0][mask] > 0).float().mean() > 0.99
    assert out["image"][0, 20:50, 120:150].max() == 0  # the label is gone from the image


def test_breast_maskd_rejects_an_image_without_breast():
    with pytest.raises(BadInputError, match=r"^/x/img.png: no breast found"):
        BreastMaskd(iterations=2)({"image": meta_image(np.zeros((64, 48), np.float32))})


# ------------------------------------------------------------------------------------------------ orientation


@pytest.mark.parametrize(
    "laterality, horizontal_flip, expect_flip",
    [("L", None, False), ("R", None, True), ("L", "YES", True), ("R", "YES", False), ("R", "NO", True)],
)
def test_orient_from_laterality_flips_image_and_masks(laterality, horizontal_flip, expect_flip):
    plane = sideless_plane()  # the laterality decides
    mask = torch.zeros(2, 240, 160, dtype=torch.bool)
    mask[0, 100:110, 10:20] = True
    item = {"image": meta_image(plane), "mask": mask.clone(), "laterality": laterality}
    if horizontal_flip:
        item["horizontal_flip"] = horizontal_flip
    out = OrientBreastd(keys=("image", "mask"))(item)
    expected_image = np.fliplr(plane) if expect_flip else plane
    np.testing.assert_array_equal(out["image"][0].numpy(), expected_image)
    expected_mask = torch.flip(mask, dims=[-1]) if expect_flip else mask
    assert torch.equal(torch.as_tensor(out["mask"]), expected_mask)
    assert out["image"].meta["flipped"] is expect_flip and out["image"].meta["orientation_rule"] == "laterality"
    assert out["laterality"] == laterality


@pytest.mark.parametrize("laterality, horizontal_flip", [("R", None), ("L", "YES"), ("L", None), ("R", "YES")])
def test_a_clear_chest_wall_overrides_a_laterality_that_disagrees(laterality, horizontal_flip, caplog):
    # a view stored mirrored or a wrong tag: the image (chest wall clearly on the left) must not be flipped away
    item = {"image": meta_image(breast_plane(chest_wall="left")), "laterality": laterality}
    if horizontal_flip:
        item["horizontal_flip"] = horizontal_flip
    disagrees = (laterality == "R") != (horizontal_flip == "YES")
    with caplog.at_level(logging.WARNING):
        out = OrientBreastd(keys="image")(item)
    assert not out["image"].meta["flipped"] and out["laterality"] == laterality  # the tag still names the breast
    assert out["image"].meta["orientation_rule"] == ("content (laterality disagrees)" if disagrees else "laterality")
    assert ("oriented by the image" in caplog.text) == disagrees


def test_breast_mask_always_follows_the_image():
    plane = breast_plane(chest_wall="right")
    item = BreastMaskd(iterations=3)({"image": meta_image(plane), "laterality": "R"})
    before = torch.as_tensor(item["breast_mask"]).clone()
    out = OrientBreastd(keys="image")(item)  # keys omit the breast mask: it is flipped all the same
    assert out["image"].meta["flipped"] and torch.equal(torch.as_tensor(out["breast_mask"]), torch.flip(before, [-1]))
    out = CropBreastd(keys="image")(out)
    assert out["breast_mask"].shape == out["image"].shape


def test_orient_leaves_model_frame_masks_alone():
    mask = torch.zeros(2, 240, 160)
    mask[1, 5:9, 3:7] = 1
    item = {"image": meta_image(sideless_plane()), "mask": mask.clone(), "laterality": "R", "mask_frame": "model"}
    out = OrientBreastd(keys=("image", "mask"))(item)
    assert out["image"].meta["flipped"] and torch.equal(torch.as_tensor(out["mask"]), mask)


def test_orient_laterality_from_reader_meta_and_content_rule():
    right_wall = breast_plane(chest_wall="right")
    # item without laterality: the reader's meta (DICOM tag) decides
    out = OrientBreastd(keys="image")({"image": meta_image(right_wall, laterality="R", view="MLO")})
    assert out["image"].meta["flipped"] and out["image"].meta["orientation_rule"] == "laterality"
    assert out["view"] == "MLO"
    # unknown laterality ("none" is the reader's placeholder): the content decides
    for plane, expect_flip in ((right_wall, True), (breast_plane(chest_wall="left"), False)):
        out = OrientBreastd(keys="image")({"image": meta_image(plane, laterality="none")})
        assert out["image"].meta["flipped"] is expect_flip and out["image"].meta["orientation_rule"] == "content"
        # the chest wall's side names the breast when nothing else does
        assert out["laterality"] == ("R" if expect_flip else "L") and out["image"].meta["laterality_source"] == "image"
    # mode "auto" ignores a (wrong) laterality
    out = OrientBreastd(keys="image", mode="auto")({"image": meta_image(right_wall), "laterality": "L"})
    assert out["image"].meta["flipped"] and out["image"].meta["orientation_rule"] == "content"
    assert chest_wall_on_right(right_wall > 0) and not chest_wall_on_right(np.fliplr(right_wall) > 0)


# ------------------------------------------------------------------------------------------------ crop


def irregular_mask(height: int = 400, width: int = 300, chest_wall: str = "left") -> np.ndarray:
    mask = breast_plane(height, width, chest_wall) > 0
    mask[300:330, 60:90] = True  # lower lobe: bottom-most row differs from the ellipse's
    if chest_wall == "right":
        mask[300:330] = np.fliplr(np.fliplr(mask[300:330]))
    return mask


@pytest.mark.parametrize("shape, top", [((400, 300), 0), ((420, 330), 90)])
def test_crop_geometry_matches_the_original_in_both_modes(shape, top):
    width = shape[1]
    mask = np.zeros(shape, bool)
    mask[top : top + 300, : width - 40] = irregular_mask(300, width - 40)
    # left breast (mode 'right'), unflipped image
    box, rightmost, bottommost = reference_crop(mask, "right")
    ours = crop_geometry(mask)
    assert ours["crop_box"] == box and ours["rightmost_points"] == rightmost
    assert ours["bottommost_points"] == bottommost
    # right breast (mode 'left') on the unflipped image == ours on the flipped image with the legacy offset
    raw = np.fliplr(mask)
    box, rightmost, bottommost = reference_crop(raw, "left")
    ours = crop_geometry(mask, legacy_offset=1)
    assert ours["crop_box"] == [box[0], box[1], width - box[3], width - box[2]]
    assert ours["rightmost_points"] == rightmost and ours["bottommost_points"] == bottommost


def test_crop_breastd_buffers_and_masks_follow():
    plane = np.zeros((300, 200), np.float32)
    plane[80:200, 0:100] = 500
    breast_mask = torch.as_tensor(plane > 0)[None]
    lesion = torch.zeros(2, 300, 200, dtype=torch.bool)
    lesion[1, 150, 60] = True
    item = {"image": meta_image(plane), "breast_mask": breast_mask, "mask": lesion}
    out = CropBreastd()(item)
    # 50 rows above and below, 50 columns on the nipple side only
    assert out["image"].meta["crop_box"] == [30, 250, 0, 150]
    assert out["image"].shape == (1, 220, 150)
    assert out["mask"].shape == (2, 220, 150) and out["breast_mask"].shape == (1, 220, 150)
    assert torch.as_tensor(out["mask"])[1].nonzero().tolist() == [[120, 60]]
    # rightmost column searched below the top third (73 rows) of the crop
    assert out["image"].meta["rightmost_points"] == [[73, 169], 99]
    assert out["image"].meta["bottommost_points"] == [169, [0, 99]]
    # buffers are limited by the image border
    plane[:] = 0
    plane[10:295, 0:190] = 500
    out = CropBreastd()({"image": meta_image(plane), "breast_mask": torch.as_tensor(plane > 0)[None]})
    assert out["image"].meta["crop_box"] == [0, 300, 0, 200]


# ------------------------------------------------------------------------------------------------ window


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_center_cc_rows_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    foreground = np.zeros((150, 60), bool)
    for _ in range(4):
        r, c = rng.integers(0, 140), rng.integers(0, 50)
        foreground[r : r + rng.integers(3, 30), c : c + 10] = True
    window = (64, 40)
    center = best_center(foreground, "CC", rightmost_col=55, bottommost_row=149, window=window)
    assert center == brute_force_center(foreground, "CC", 55, 149, window)
    assert center[1] == 55 - 20 - 1  # right edge anchored at the rightmost point


def test_best_center_ties_go_to_the_image_centre_and_small_images_use_it():
    foreground = np.zeros((100, 50), bool)  # no foreground: every candidate ties
    assert best_center(foreground, "CC", 45, 99, (40, 40))[0] == 50
    small = np.ones((30, 20), bool)
    assert best_center(small, "CC", 19, 29, (64, 40)) == (15, 19 - 20 - 1)


def test_best_center_mlo_anchors_bottom_and_right():
    foreground = np.zeros((200, 120), bool)
    foreground[20:150, 0:100] = True
    foreground[150:180, 0:30] = True  # tissue low on the chest-wall side, outside the right-most 40 columns
    # the lowest foreground row within the right-most 40 columns is 149 < bottommost 179
    assert best_center(foreground, "MLO", 99, 179, (64, 40)) == (149 - 32 - 1, 99 - 20 - 1)
    # with a window as wide as the image, the bottom-most point is used
    assert best_center(foreground, "MLO", 99, 179, (64, 120)) == (179 - 32 - 1, 99 - 60 - 1)


def test_window_geometry_padding_rules():
    # CC smaller than the window: rows split top/bottom (extra row at the bottom), columns padded on the right
    pad, box = window_geometry((51, 30), (25, -11), "CC", (64, 40))
    assert pad == [6, 7, 10] and box == [0, 64, 0, 40]
    # MLO: all row padding at the bottom
    pad, box = window_geometry((51, 30), (25, -11), "MLO", (64, 40))
    assert pad == [0, 13, 10] and box == [0, 64, 0, 40]
    # larger image: the window is shifted inside (negative column start -> 0; end past the bottom -> up)
    pad, box = window_geometry((100, 60), (90, 5), "CC", (64, 40))
    assert pad == [0, 0, 0] and box == [36, 100, 0, 40]
    pad, box = window_geometry((100, 60), (50, 30), "CC", (64, 40))
    assert box == [18, 82, 10, 50]
    # noise margins: CC rows need room on both sides, the window sits at the margin
    pad, box = window_geometry((80, 60), (40, 30), "CC", (64, 40), margin=(10, 10))
    assert pad == [2, 2, 0] and box == [10, 74, 10, 50]


def cropped_item(plane: np.ndarray, view: str = "CC", **extra) -> dict:
    """An item after BreastMaskd + CropBreastd (small erosion)."""
    item = {"image": meta_image(plane), "view": view, **extra}
    item = BreastMaskd(iterations=3)(item)
    item = OrientBreastd()(item)
    return CropBreastd()(item)


def test_best_center_windowd_pads_and_masks_follow():
    plane = breast_plane(240, 160)
    lesion = torch.zeros(2, 240, 160, dtype=torch.bool)
    lesion[0, 100:104, 30:34] = True
    item = cropped_item(plane, mask=lesion, laterality="L")
    out = BestCenterWindowd(window_size=(320, 192))(item)
    meta = out["image"].meta
    assert out["image"].shape == (1, 320, 192) and out["mask"].shape == (2, 320, 192)
    assert out["breast_mask"].shape == (1, 320, 192)
    pad_top, pad_bottom, pad_right = meta["window_pad"]
    crop_h, crop_w = item["image"].shape[1:]
    assert pad_top == (320 - crop_h) // 2 and pad_top + pad_bottom == 320 - crop_h and pad_right == 192 - crop_w
    image = out["image"][0].numpy()
    assert (image[:pad_top] == 0).all() and (image[:, 192 - pad_right :] == 0).all()
    y0, _, x0, _ = meta["crop_box"]
    assert torch.as_tensor(out["mask"])[0].nonzero().min(0).values.tolist() == [100 - y0 + pad_top, 30 - x0]
    np.testing.assert_allclose(map_to_model_frame(meta, [[100, 30]]), [[100 - y0 + pad_top, 30 - x0]])
    # a model-frame mask is left alone
    model = torch.zeros(2, 320, 192)
    model[1, 7, 9] = 1
    item = cropped_item(plane, mask=model, laterality="L", mask_frame="model")
    out = BestCenterWindowd(window_size=(320, 192))(item)
    assert torch.equal(torch.as_tensor(out["mask"]), model)


def test_best_center_windowd_large_mlo_image_is_cut_not_padded():
    plane = breast_plane(400, 260)
    item = cropped_item(plane, view="MLO", laterality="L")
    out = BestCenterWindowd(window_size=(256, 160))(item)
    assert out["image"].shape == (1, 256, 160) and out["image"].meta["window_pad"] == [0, 0, 0]
    top, bottom, left, right = out["image"].meta["window_box"]
    assert (bottom - top, right - left) == (256, 160)


def test_standardisation_is_population_std():
    image = np.random.default_rng(0).integers(0, 4096, (1, 64, 48)).astype(np.float32)
    out = NormalizeIntensityd(keys="image")({"image": torch.as_tensor(image)})["image"].numpy()
    expected = (image - image.mean()) / max(image.std(ddof=0), 1e-5)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.abs(out - (image - image.mean()) / image.std(ddof=1)).max() > 1e-4  # ddof matters here


# ------------------------------------------------------------------------------------------------ noise


def noise_input(model_frame: bool = False) -> dict:
    """A BestCenterWindowd-like output for a (64, 40) window with a 10-px noise margin on every side.

    Image = 100 + 1000 * lesion, so thresholding the image must give back the (aligned) lesion mask. The
    lesion lies 12+ px inside the window, so every noisy window still holds all of it.
    """
    lesion = np.zeros((84, 60), bool)
    lesion[30:50, 22:38] = True
    image = meta_image(100 + 1000 * lesion.astype(np.float32))
    image.meta["window_box"] = [10, 74, 10, 50]
    mask = torch.as_tensor(np.stack([lesion, lesion]))
    item = {"image": image, "mask": mask}
    if model_frame:
        item["mask"] = mask[:, 10:74, 10:50].clone()
        item["mask_frame"] = "model"
    return item


def aligned(out: dict, channel: int = 0) -> bool:
    bright = out["image"][0].as_tensor() > 600
    mask = torch.as_tensor(out["mask"])[channel].bool()
    centre_bright, centre_mask = bright.nonzero().float().mean(0), mask.nonzero().float().mean(0)
    return bool((bright == mask).float().mean() > 0.98) and bool((centre_bright - centre_mask).abs().max() < 0.75)


def test_rand_window_noise_is_seeded_bounded_and_masks_stay_aligned():
    window = (64, 40)
    item = noise_input()
    box = item["image"].meta["window_box"]
    noise = RandWindowNoised(keys=("image", "mask"), window_size=window, max_crop_noise=(5, 5), max_crop_size_noise=5)
    first = noise.set_random_state(7)(dict(item))
    second = noise.set_random_state(7)(dict(item))
    assert torch.equal(first["image"], second["image"]) and first["image"].meta["noise_box"] == second["image"].meta["noise_box"]
    shape = item["image"].shape[1:]
    boxes = []
    for seed in range(40):
        out = noise.set_random_state(seed)(dict(item))
        noisy = out["image"].meta["noise_box"]
        boxes.append(noisy)
        assert out["image"].shape == (1, *window) and out["mask"].shape == (2, *window)
        assert 0 <= noisy[0] < noisy[1] <= shape[0] and 0 <= noisy[2] < noisy[3] <= shape[1]
        assert all(abs(n - b) <= 10 for n, b in zip(noisy, box))
        assert aligned(out)
    assert len({tuple(b) for b in boxes}) > 20  # it really is random
    assert any((b[1] - b[0], b[3] - b[2]) != window for b in boxes)  # size noise happens (then resized back)


def test_rand_window_noise_zero_amplitude_is_the_window_and_model_frame_masks_follow():
    window = (64, 40)
    item = noise_input()
    out = RandWindowNoised(window_size=window, max_crop_noise=(0, 0), max_crop_size_noise=0)(dict(item))
    torch.testing.assert_close(out["image"].as_tensor(), item["image"].as_tensor()[:, 10:74, 10:50])
    item = noise_input(model_frame=True)
    noise = RandWindowNoised(window_size=window, max_crop_noise=(5, 5), max_crop_size_noise=5)
    for seed in range(10):
        out = noise.set_random_state(seed)(dict(item))
        assert out["mask"].shape == (2, *window) and aligned(out, channel=1)


def test_rand_window_noise_moves_away_from_a_touching_border():
    plane = np.zeros((64, 40), np.float32)
    plane[:, :30] = 100
    item = {"image": meta_image(plane)}
    item["image"].meta["window_box"] = [0, 54, 0, 30]  # touches the top and left borders
    noise = RandWindowNoised(keys="image", window_size=(54, 30), max_crop_noise=(8, 8), max_crop_size_noise=0)
    shifts = [noise.set_random_state(s)(dict(item))["image"].meta["noise_box"] for s in range(20)]
    assert all(b[0] >= 0 and b[2] >= 0 for b in shifts) and any(b[0] > 0 for b in shifts)


# ------------------------------------------------------------------------------------------------ resampling, masks, labels


def test_resample_to_spacing_scales_image_and_masks():
    plane = breast_plane(100, 60)
    mask = torch.zeros(2, 100, 60, dtype=torch.bool)
    mask[0, 40:50, 10:20] = True
    out = ResampleToSpacingd(pixel_spacing=0.2)({"image": meta_image(plane), "mask": mask})
    assert out["image"].shape == (1, 200, 120) and out["mask"].shape == (2, 200, 120)
    assert out["mask"].dtype == torch.bool and int(torch.as_tensor(out["mask"]).sum()) == 400
    assert out["image"].meta["resample_factor"] == [2.0, 2.0]
    np.testing.assert_allclose(out["image"][0].numpy().mean(), plane.mean(), rtol=0.02)
    model = torch.zeros(2, 100, 60)
    out = ResampleToSpacingd(pixel_spacing=(0.2, 0.1))({"image": meta_image(plane), "mask": model, "mask_frame": "model"})
    assert out["image"].shape == (1, 200, 60) and out["mask"].shape == (2, 100, 60)


def test_stack_masks_and_make_label():
    image = meta_image(np.zeros((30, 20), np.float32))
    benign = MetaTensor(torch.zeros(1, 30, 20), meta={"filename_or_obj": "/x/b.png"})
    benign[0, 3:5, 4:6] = 255
    out = StackMasksd()({"image": image, "mask_benign": benign})
    assert out["mask"].shape == (2, 30, 20) and out["mask"].dtype == torch.float32
    assert out["mask"][0].sum() == 4 and out["mask"][1].sum() == 0
    assert out["has_mask"].tolist() == [1.0, 0.0] and "mask_benign" not in out and out["mask_frame"] == "raw"

    wrong = MetaTensor(torch.zeros(1, 31, 20), meta={"filename_or_obj": "/x/bad_mask.png"})
    with pytest.raises(BadInputError, match=r"^/x/bad_mask.png: mask is 31x20 \(HxW\) but its image is 30x20"):
        StackMasksd()({"image": image, "mask_malignant": wrong})
    # model frame: the mask must have the window's size, not the raw image's
    model = MetaTensor(torch.zeros(1, 64, 40), meta={"filename_or_obj": "/x/seg.png"})
    out = StackMasksd(model_frame_size=(64, 40), dtype=torch.bool)({"image": image, "mask_benign": model, "mask_frame": "model"})
    assert out["mask"].shape == (2, 64, 40) and out["mask"].dtype == torch.bool and out["mask_frame"] == "model"
    with pytest.raises(BadInputError, match=r"^/x/seg.png: .*model frame"):
        StackMasksd()({"image": image, "mask_benign": model, "mask_frame": "model"})

    assert MakeLabeld()({"benign": 1, "malignant": 0})["label"].tolist() == [1.0, 0.0]
    out = MakeLabeld()({"malignant": 1})
    assert out["label"].tolist() == [-1.0, 1.0] and out["label"].dtype == torch.float32 and "malignant" not in out
    assert MakeLabeld()({"benign": None, "malignant": -1})["label"].tolist() == [-1.0, -1.0]


# ------------------------------------------------------------------------------------------------ the chain and caching


@pytest.fixture
def synthetic_items(tmp_path):
    """Two 16-bit PNG mammograms (left CC facing right, right MLO facing left) and a benign mask PNG."""
    # the reader rejects images smaller than one 512x512 patch
    left = (breast_plane(600, 520, "left", 2000)).astype(np.uint16)
    right = (breast_plane(640, 540, "right", 2500)).astype(np.uint16)
    mask = np.zeros((640, 540), np.uint8)
    mask[250:262, 450:462] = 255  # near the chest wall of the right breast
    return [
        {"image": write_png(tmp_path / "l_cc.png", left), "view": "CC", "laterality": "L", "benign": 0, "malignant": 1},
        {
            "image": write_png(tmp_path / "r_mlo.png", right),
            "view": "MLO",
            "laterality": "R",
            "benign": 1,
            "mask_benign": write_png(tmp_path / "r_mlo_benign.png", mask),
        },
    ]


def keep_breast_mask(chain: Compose) -> Compose:
    """``chain`` without its final DeleteItemsd, so that a test can check the breast mask in the model frame."""
    return Compose([t for t in chain.transforms if not isinstance(t, DeleteItemsd)])


def test_default_preprocessing_is_the_four_pieces():
    joined = default_preprocessing(
        image_size=(512, 320), film=True, augment=True, spacing=0.2, max_crop_noise=(20, 10), max_crop_size_noise=5,
        min_size=(64, 64),
    )
    pieces = (
        load_transforms(min_size=(64, 64), model_frame_size=(512, 320))
        + frame_transforms(film=True, spacing=0.2)
        + window_transforms(image_size=(512, 320), augment=True, max_crop_noise=(20, 10), max_crop_size_noise=5)
        + finish_transforms()
    )
    # (inside a Compose: Compose seeds the random transforms, which gives them a RandomState attribute)
    assert transform_fingerprint(joined.transforms) == transform_fingerprint(Compose(pieces).transforms)
    assert transform_fingerprint(default_preprocessing().transforms) == transform_fingerprint(
        Compose(load_transforms() + frame_transforms() + window_transforms() + finish_transforms()).transforms
    )
    assert transform_fingerprint(joined.transforms) != transform_fingerprint(default_preprocessing().transforms)
    # every call builds new objects (a config's pieces must not share state, e.g. random states)
    for piece in (load_transforms, frame_transforms, window_transforms, finish_transforms):
        first, second = piece(), piece()
        assert not {id(t) for t in first} & {id(t) for t in second}
    assert isinstance(finish_transforms()[-1], DeleteItemsd)


@pytest.mark.parametrize("film", ["no", "yes", "", 0, 1, None])
def test_film_must_be_true_false_or_auto(film):
    with pytest.raises(ValueError, match="film"):
        default_preprocessing(film=film)
    with pytest.raises(ValueError, match="film"):
        frame_transforms(film=film)
    with pytest.raises(ValueError, match="augment"):
        window_transforms(augment="false")


@pytest.mark.parametrize(("film", "method"), [("false", "original"), ("True", "film"), ("auto", "auto"), (False, "original")])
def test_film_strings_from_the_command_line_are_the_bools(film, method):
    mask = next(t for t in frame_transforms(film=film) if isinstance(t, BreastMaskd))
    assert mask.method == method  # "false" is not truthy here


def test_default_preprocessing_end_to_end(synthetic_items):
    size = (704, 320)  # taller than both images: padding rules of CC and MLO
    # what the user gets: model inputs without the breast mask
    delivered = default_preprocessing(image_size=size)(dict(synthetic_items[0]))
    assert "breast_mask" not in delivered and delivered["image"].shape == (1, *size)
    transform = keep_breast_mask(default_preprocessing(image_size=size))
    outputs = [transform(dict(item)) for item in synthetic_items]
    for out in outputs:
        assert out["image"].shape == (1, *size) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (2, *size) and out["mask"].dtype == torch.float32
        assert out["breast_mask"].shape == (1, *size) and out["breast_mask"].dtype == torch.bool
        image = out["image"][0]
        assert abs(float(image.mean())) < 1e-4 and abs(float(image.std(unbiased=False)) - 1) < 1e-4
        assert float(image.min()) == pytest.approx(float(image[0, -1]))  # padding = background = minimum
        breast = out["breast_mask"][0]
        assert breast[:, :5].float().mean() > 0.3 and breast[:, :5].sum() > breast[:, -5:].sum()  # chest wall left
    left, right = outputs
    assert left["label"].tolist() == [0.0, 1.0] and left["has_mask"].tolist() == [0.0, 0.0]
    assert right["label"].tolist() == [1.0, -1.0] and right["has_mask"].tolist() == [1.0, 0.0]
    assert right["image"].meta["flipped"] and not left["image"].meta["flipped"]
    lesion = right["mask"][0].nonzero()
    assert len(lesion) == 144
    centre = map_to_model_frame(right["image"].meta, [[255.5, 455.5]])[0]
    np.testing.assert_allclose(lesion.float().mean(0).numpy(), centre, atol=0.01)
    assert right["mask"][0][right["breast_mask"][0]].sum() == 144  # the lesion lies in the breast
    # MLO padding goes to the bottom only, CC padding is split
    assert right["image"].meta["window_pad"][0] == 0 and right["image"].meta["window_pad"][1] > 0
    assert left["image"].meta["window_pad"][0] > 0 and left["image"].meta["window_pad"][1] > 0


def test_default_preprocessing_with_augmentation_and_resampling(synthetic_items):
    size = (512, 320)
    transform = default_preprocessing(image_size=size, augment=True, spacing=0.1, max_crop_noise=(20, 20), max_crop_size_noise=20)
    transform.set_random_state(3)
    out = transform(dict(synthetic_items[1]))
    assert out["image"].shape == (1, *size) and out["mask"].shape == (2, *size)
    assert "noise_box" in out["image"].meta and out["image"].meta["resample_factor"] == [1.0, 1.0]
    assert out["mask"][0].sum() > 100


def test_cached_dataset_reads_its_cache_and_changes_key_with_parameters(synthetic_items, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    items = synthetic_items[:1]
    dataset = make_cached_dataset(items, default_preprocessing(image_size=(512, 320)), cache)
    first = dataset[0]
    assert len(list(cache.glob("*.pt"))) == 1
    # a second pass is served from the cache: the loader is never called
    monkeypatch.setattr("monai.transforms.LoadImaged.__call__", lambda *a, **k: pytest.fail("cache miss"))
    second = make_cached_dataset(items, default_preprocessing(image_size=(512, 320)), cache)[0]
    monkeypatch.undo()
    torch.testing.assert_close(second["image"].as_tensor(), first["image"].as_tensor(), rtol=0, atol=0)
    assert second["mask"].dtype == torch.float32 and second["image"].meta["best_center"] == first["image"].meta["best_center"]
    # the cached entry keeps masks bool (compact); the float cast runs after the cache
    stored = torch.load(next(cache.glob("*.pt")), weights_only=True)
    assert stored["mask"].dtype == torch.bool and stored["image"].dtype == torch.float32
    assert "breast_mask" not in stored and "breast_mask" not in second  # deleted before the cache
    # another window size -> another entry; the same parameters -> the same key
    make_cached_dataset(items, default_preprocessing(image_size=(512, 256)), cache)[0]
    assert len(list(cache.glob("*.pt"))) == 2
    make_cached_dataset(items, default_preprocessing(film=True, image_size=(512, 320)), cache)[0]
    assert len(list(cache.glob("*.pt"))) == 3
    # a file rewritten in place (new content, same path) is a cache miss, not a stale hit
    image_path = Path(items[0]["image"])
    pixels = np.asarray(Image.open(image_path))
    Image.fromarray(np.ascontiguousarray(pixels[:, ::-1])).save(image_path)
    os.utime(image_path, ns=(1, 1))
    make_cached_dataset(items, default_preprocessing(image_size=(512, 320)), cache)[0]
    assert len(list(cache.glob("*.pt"))) == 4
    # the key depends on the configuration only, not on state the transforms build when first used
    fresh, used = default_preprocessing(), default_preprocessing()
    used(dict(items[0]))
    assert transform_fingerprint(fresh.transforms) == transform_fingerprint(used.transforms)


def test_memory_cache_computes_each_item_once_and_defers_bad_items(synthetic_items, tmp_path, monkeypatch):
    from glam_bundle.data.failures import SkipBadCases

    items = [*synthetic_items[:1], {"image": str(tmp_path / "missing.png")}]
    dataset = make_cached_dataset(items, default_preprocessing(image_size=(512, 320)), cache="memory")
    first = dataset[0]  # built without reading the missing file; items are cached as they are first read
    monkeypatch.setattr("monai.transforms.LoadImaged.__call__", lambda *a, **k: pytest.fail("cache miss"))
    torch.testing.assert_close(dataset[0]["image"].as_tensor(), first["image"].as_tensor(), rtol=0, atol=0)
    monkeypatch.undo()
    assert SkipBadCases(dataset, log_failures=False)[1]["failed"]
    assert isinstance(make_cached_dataset(items, default_preprocessing(), cache="none"), Dataset)
    with pytest.raises(ValueError, match="cache must be one of"):
        make_cached_dataset(items, default_preprocessing(), cache="gpu")
    with pytest.raises(ValueError, match="cache_dir"):
        make_cached_dataset(items, default_preprocessing())


def test_preprocessed_items_collate(synthetic_items):
    from monai.data import DataLoader

    loader = DataLoader(Dataset(synthetic_items, default_preprocessing(image_size=(512, 320))), batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 512, 320) and batch["label"].shape == (2, 2)
    assert batch["mask"].shape == (2, 2, 512, 320) and batch["has_mask"].shape == (2, 2)


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_contact_sheet_writes_one_png_and_shows_failures(synthetic_items, tmp_path):
    from glam_bundle.data.datalist import write_datalist

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    datalist = write_datalist({"test": [*synthetic_items, {"image": str(broken)}]}, tmp_path / "datalist.json")
    sheet = _load_script("contact_sheet")
    output = sheet.contact_sheet(datalist, tmp_path / "out" / "sheet.png", split="test", image_size=(512, 320), factor=8)
    image = np.asarray(Image.open(output))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert sorted(p.name for p in output.parent.iterdir()) == ["sheet.png"]  # no temporary file left
    # the folder form lists every mammogram of the folder, broken ones included; the lesion mask beside an
    # image is paired with it, not listed as a mammogram (folder listing of issue 10)
    listed = sheet.load_items(tmp_path)
    assert len(listed) == 3 and sum("mask_benign" in item for item in listed) == 1


def test_geometry_scale_lets_small_images_through_the_original_erosion_and_buffer(tmp_path):
    from glam_bundle.atomic_io import save_png_atomic
    from glam_bundle.data.phantom import make_phantom
    from glam_bundle.transforms import default_preprocessing

    phantom = make_phantom(368, 240, "CC", "L", ["benign"], 1, lesion_scale=2.0)
    path = save_png_atomic(phantom.image, tmp_path / "small.png")
    item = {"image": str(path), "benign": 1, "malignant": 0}
    with pytest.raises(Exception, match="(?i)breast"):  # the 100-px erosion leaves nothing of a 240-px breast
        default_preprocessing((368, 240), min_size=0)(dict(item))
    out = default_preprocessing((368, 240), min_size=0, geometry_scale=368 / 2944)(dict(item))
    assert out["image"].shape == (1, 368, 240)
    assert out["image"].meta["crop_box"] is not None


def test_cache_fingerprint_follows_the_preprocessing_code(tmp_path, monkeypatch):
    """A bundle whose readers or transforms changed (a fixed rule) must not reuse the cache entries of the old code."""
    from glam_bundle.data import cache

    chain = default_preprocessing().transforms
    before = transform_fingerprint(chain)
    code = cache.preprocessing_code_fingerprint()
    assert len(code) == 64 and cache.preprocessing_code_fingerprint() == code  # stable within a version
    monkeypatch.setattr(cache, "preprocessing_code_fingerprint", lambda: "0" * 64)  # as another version's code
    assert transform_fingerprint(chain) != before
    # the hashed sources are the transforms and the readers
    package = Path(cache.__file__).resolve().parents[1]
    monkeypatch.undo()
    cache.preprocessing_code_fingerprint.cache_clear()
    edited = tmp_path / "glam_bundle"
    shutil.copytree(package, edited, ignore=shutil.ignore_patterns("__pycache__"))
    (edited / "transforms" / "breast" / "array.py").write_text(
        (edited / "transforms" / "breast" / "array.py").read_text() + "\n# a changed rule\n")
    monkeypatch.setattr(cache, "__file__", str(edited / "data" / "cache.py"))
    assert cache.preprocessing_code_fingerprint() != code
    cache.preprocessing_code_fingerprint.cache_clear()

