"""Bad input: each problem raises BadInputError naming the file; SkipBadCases keeps an epoch going."""

from __future__ import annotations

import csv
import os
import pickle

import numpy as np
import pytest
import torch
from monai.data import Dataset, PersistentDataset
from monai.transforms import Compose, EnsureTyped, LoadImaged
from PIL import Image
from torch.utils.data import DataLoader

from glam_bundle.data.errors import BadInputError
from glam_bundle.data.readers import MammogramDicomReader, MammogramReader
from glam_bundle.data.failures import (
    SkipBadCases,
    collate_skip_failures,
    failure_message,
    write_failures_csv,
)
from tests.dicom_helpers import write_dicom
from tests.test_readers import ramp

# Large enough for the default 512x512 minimum, non-square.
BIG_H, BIG_W = 600, 520


def load(path, **reader_args):
    """LoadImaged with our reader: errors must come out as BadInputError, not be swallowed by fallbacks."""
    loader = LoadImaged(keys="image", reader=MammogramReader(**reader_args))
    return loader({"image": str(path)})["image"]


def assert_bad(path, phrase: str, **reader_args) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        load(path, **reader_args)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert phrase in message, message
    assert info.value.path == str(path)
    return info.value


def test_error_format_and_pickling():
    error = BadInputError("/x/a.png", "truncated PNG (...)")
    assert isinstance(error, ValueError)
    assert str(error) == "/x/a.png: truncated PNG (...)"
    assert (error.path, error.problem) == ("/x/a.png", "truncated PNG (...)")
    copy = pickle.loads(pickle.dumps(error))  # crosses DataLoader worker processes
    assert (str(copy), copy.path, copy.problem) == (str(error), error.path, error.problem)


def test_missing_file(tmp_path):
    assert_bad(tmp_path / "nowhere.png", "file not found")
    assert_bad(tmp_path / "nowhere.dcm", "file not found")


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(ramp(BIG_H, BIG_W)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_bad(path, "truncated, corrupt or unreadable PNG file")


def test_garbage_png(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(os.urandom(2000))
    assert_bad(path, "unreadable PNG file")


def test_corrupt_dicom(tmp_path):
    path = tmp_path / "noise.dcm"
    path.write_bytes(b"\0" * 128 + b"NOPE" + os.urandom(500))
    assert_bad(path, "corrupt or non-DICOM file")


def test_truncated_dicom_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", ramp(BIG_H, BIG_W) % 4096)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    error = assert_bad(path, "DICOM")
    assert "cannot decode DICOM pixel data" in error.problem or "corrupt or non-DICOM file" in error.problem


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "header_only.dcm", None, Laterality="L")
    assert_bad(path, "DICOM has no pixel data")
    # The DICOM reader on its own raises the same error through LoadImaged.
    with pytest.raises(BadInputError, match="DICOM has no pixel data"):
        LoadImaged(keys="image", reader=MammogramDicomReader())({"image": str(path)})


def test_colour_image_is_refused_by_name(tmp_path):
    path = tmp_path / "colour.png"
    Image.fromarray(np.zeros((BIG_H, BIG_W, 3), dtype=np.uint8) + np.array([10, 20, 30], dtype=np.uint8)).save(path)
    assert_bad(path, "RGB image (3 channels) in colour (100.0% of the pixels")
    # a gray mammogram with a coloured annotation drawn on it
    annotated = tmp_path / "annotated.png"
    pixels = np.repeat(ramp(BIG_H, BIG_W, dtype=np.uint8)[..., None], 3, axis=2)
    pixels[100:110, 100:200] = (255, 0, 0)
    Image.fromarray(pixels).save(annotated)
    assert_bad(annotated, "RGB image (3 channels) in colour (0.3% of the pixels; e.g. coloured annotations)")
    transparent = tmp_path / "transparent.png"
    rgba = np.concatenate([pixels, np.full((BIG_H, BIG_W, 1), 255, np.uint8)], axis=2)
    rgba[:50, :, 3] = 0
    Image.fromarray(rgba).save(transparent)
    assert_bad(transparent, "RGBA image (4 channels) with transparent pixels")


def test_colour_palette_image_is_refused(tmp_path):
    path = tmp_path / "palette.png"
    colours = np.zeros((BIG_H, BIG_W, 3), dtype=np.uint8)
    colours[:, : BIG_W // 2] = (200, 30, 30)
    colours[:, BIG_W // 2 :] = (30, 30, 200)
    Image.fromarray(colours).convert("P").save(path)
    assert Image.open(path).mode == "P"
    assert_bad(path, "RGB image (3 channels) in colour")


def test_all_zero_and_constant_images(tmp_path):
    zeros = tmp_path / "zeros.png"
    Image.fromarray(np.zeros((BIG_H, BIG_W), dtype=np.uint16)).save(zeros)
    assert_bad(zeros, "all-zero image")
    sevens = tmp_path / "sevens.png"
    Image.fromarray(np.full((BIG_H, BIG_W), 7, dtype=np.uint8)).save(sevens)
    assert_bad(sevens, "constant image (every pixel is 7)")
    # A lesion mask of a breast without that lesion is all zeros and must stay usable.
    mask = load(zeros, allow_constant=True)
    assert mask.shape == (BIG_H, BIG_W) and float(mask.abs().sum()) == 0.0


def test_image_smaller_than_a_patch(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(ramp(300, 600)).save(path)
    assert_bad(path, "image is 300x600 (HxW), smaller than the 512x512 minimum (one patch)")
    assert load(path, min_size=0).shape == (300, 600)
    assert load(path, min_size=(256, 256)).shape == (300, 600)
    assert_bad(path, "smaller than the 400x400 minimum", min_size=400)


def test_nan_values_in_nifti(tmp_path):
    import nibabel as nib

    pixels = ramp(BIG_H, BIG_W).astype(np.float32)
    pixels[5, 7] = np.nan
    pixels[9, 9] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(pixels, np.eye(4)), path)
    assert_bad(path, "non-finite values (2 NaN, 0 inf)")


def test_inf_values_in_float_tiff(tmp_path):
    pixels = ramp(BIG_H, BIG_W).astype(np.float32)
    pixels[0, 0] = np.inf
    path = tmp_path / "inf.tif"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == "F"
    assert_bad(path, "non-finite values (0 NaN, 1 inf)")


def test_three_dimensional_volume(tmp_path):
    import nibabel as nib

    path = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((BIG_W, BIG_H, 5), dtype=np.float32), np.eye(4)), path)  # (x, y, z)
    assert_bad(path, f"expected a 2-D grayscale image, got an array of shape ({BIG_H}, {BIG_W}, 5)")  # (rows, ...)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    assert_bad(path, "unsupported file type")


def test_ddsm_ljpeg_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "A_1234_1.LEFT_CC.LJPEG"
    path.write_bytes(b"\xff\xd8\xff\xc3" + bytes(100))  # lossless JPEG (SOF3) start
    assert_bad(path, "DDSM's original lossless JPEG")


def test_failure_message_unwraps_monai_errors(tmp_path):
    transform = Compose([LoadImaged(keys="image", reader=MammogramReader())])
    with pytest.raises(RuntimeError) as info:  # MONAI wraps transform errors in RuntimeError
        transform({"image": str(tmp_path / "gone.png")})
    assert not isinstance(info.value, BadInputError)
    assert failure_message(info.value) == f"{tmp_path / 'gone.png'}: file not found"
    try:
        try:
            raise KeyError("mask_benign")
        except KeyError as inner:
            raise RuntimeError("applying transform") from inner
    except RuntimeError as outer:
        assert failure_message(outer) == "KeyError: 'mask_benign'"


# ----------------------------------------------------------------------------------------- skipping bad cases
def make_cases(folder):
    """3 good and 2 bad datalist items (a truncated PNG and a missing DICOM), interleaved."""
    items = []
    for index in range(3):
        path = folder / f"good{index}.png"
        Image.fromarray(ramp(64, 40, scale=index + 1)).save(path)
        items.append({"image": str(path), "benign": 0, "malignant": index % 2})
    truncated = folder / "truncated.png"
    Image.fromarray(ramp(64, 40)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    items.insert(1, {"image": str(truncated), "benign": 1, "malignant": 0})
    items.insert(3, {"image": str(folder / "missing.dcm"), "benign": 0, "malignant": 0})
    return items


TRANSFORM = Compose(
    [
        LoadImaged(keys="image", reader=MammogramReader(min_size=0), ensure_channel_first=True),
        EnsureTyped(keys=["image", "benign", "malignant"]),
    ]
)


def test_skip_bad_cases_with_two_workers(tmp_path):
    items = make_cases(tmp_path)
    dataset = SkipBadCases(Dataset(items, transform=TRANSFORM))
    loader = DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=collate_skip_failures)
    batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    assert batch["image"].shape == (3, 1, 64, 40)
    expected = torch.stack([torch.from_numpy(ramp(64, 40, scale=s).astype(np.float32))[None] for s in (1, 2, 3)])
    torch.testing.assert_close(batch["image"].as_tensor(), expected)
    names = [os.path.basename(f) for f in batch["image"].meta["filename_or_obj"]]
    assert names == ["good0.png", "good1.png", "good2.png"]
    failures = batch["failures"]
    assert [f["image"] for f in failures] == [items[1]["image"], items[3]["image"]]
    assert all(f["failed"] is True for f in failures)
    assert failures[0]["error"].startswith(f"{items[1]['image']}: truncated, corrupt or unreadable PNG file")
    assert failures[1]["error"] == f"{items[3]['image']}: file not found"


def test_batches_where_every_item_failed(tmp_path):
    items = make_cases(tmp_path)
    loader = DataLoader(
        SkipBadCases(Dataset(items, transform=TRANSFORM), log_failures=False),
        batch_size=1,
        num_workers=2,
        collate_fn=collate_skip_failures,
    )
    batches = list(loader)
    assert len(batches) == 5
    good = [b for b in batches if "image" in b]
    bad = [b for b in batches if "image" not in b]
    assert len(good) == 3 and all(b["failures"] == [] for b in good)
    assert len(bad) == 2 and all(set(b) == {"failures"} and len(b["failures"]) == 1 for b in bad)


def test_skip_bad_cases_around_persistent_dataset(tmp_path):
    items = make_cases(tmp_path)
    dataset = SkipBadCases(PersistentDataset(items, transform=TRANSFORM, cache_dir=tmp_path / "cache"))
    results = [dataset[i] for i in range(len(dataset))]
    assert [r.get("failed", False) for r in results] == [False, True, False, True, False]
    assert results[3]["error"].endswith("missing.dcm: file not found")


def test_write_failures_csv(tmp_path):
    failures = [
        {"failed": True, "image": "/data/a.png", "error": "/data/a.png: truncated PNG (OSError: x, y)"},
        {"failed": True, "image": "/data/b.dcm", "error": 'line one\nline "two"'},
    ]
    target = tmp_path / "reports" / "failures.csv"
    assert write_failures_csv(failures, target) == str(target)
    with open(target, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert rows == [{"image": f["image"], "error": f["error"]} for f in failures]
    # Rewriting replaces the file; no temporary files are left behind.
    write_failures_csv([], target)
    assert target.read_text().strip() == "image,error"
    assert os.listdir(target.parent) == ["failures.csv"]
