"""Synthetic mammogram phantoms: geometry, lesions, determinism and the written dataset."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from glam_bundle.data.datalist import load_datalist
from glam_bundle.data.phantom import LESION_KINDS, generate_dataset, make_phantom, power_law_noise
from tests.conftest import REPO_ROOT

H, W = 368, 240  # the paper frame 2944x1920 scaled by 1/8


def test_power_law_noise_is_standardised_with_the_requested_slope():
    field = power_law_noise((256, 256), 3.0, np.random.default_rng(0))
    assert field.dtype == np.float32 and field.shape == (256, 256)
    assert abs(float(field.mean())) < 1e-4 and abs(float(field.std()) - 1) < 1e-4
    # Radially averaged power falls as f^-3: compare two octaves.
    power = np.abs(np.fft.fft2(field)) ** 2
    freq = np.hypot(np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :])
    low = power[(freq > 0.02) & (freq < 0.04)].mean()
    high = power[(freq > 0.08) & (freq < 0.16)].mean()
    slope = np.log(high / low) / np.log(4.0)
    assert -3.5 < slope < -2.5


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_phantom_size_dtype_and_orientation(view):
    left = make_phantom(H, W, view, "L", ["benign"], rng=3)
    assert left.image.shape == (H, W) and left.image.dtype == np.uint16
    assert 0 < left.image.max() <= 4095
    for mask in left.masks.values():
        assert mask.shape == (H, W) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    breast = left.image > 0
    # A left breast faces right: it touches the chest wall (column 0) and leaves the right edge empty.
    assert breast[:, 0].mean() > 0.5 and not breast[:, -1].any()
    assert left.image[0, -1] == 0 and left.image[-1, -1] == 0  # zero background
    right = make_phantom(H, W, view, "R", ["benign"], rng=3)
    np.testing.assert_array_equal(right.image, left.image[:, ::-1])
    np.testing.assert_array_equal(right.masks["benign"], left.masks["benign"][:, ::-1])


@pytest.mark.parametrize(
    "lesions, labels",
    [
        ([], (0, 0)),
        (["benign"], (1, 0)),
        (["malignant_mass"], (0, 1)),
        (["calcification_cluster"], (0, 1)),
        (["benign", "malignant"], (1, 1)),
        (["benign_mass", "benign_mass", "calcification_cluster"], (1, 1)),
    ],
)
def test_masks_non_empty_iff_label(lesions, labels):
    for seed in range(3):
        phantom = make_phantom(H, W, "MLO" if seed % 2 else "CC", "R", lesions, rng=seed)
        assert (phantom.labels["benign"], phantom.labels["malignant"]) == labels
        for cls in ("benign", "malignant"):
            assert bool(phantom.masks[cls].any()) == bool(phantom.labels[cls])
        # Lesions lie inside the breast.
        assert not ((phantom.masks["benign"] | phantom.masks["malignant"]) & (phantom.image == 0)).any()


@pytest.mark.parametrize("kind", sorted(LESION_KINDS))
@pytest.mark.parametrize("size", [(H, W), (736, 480)])
def test_lesion_brighter_than_its_surroundings(kind, size):
    height, width = size
    for seed in range(4):
        phantom = make_phantom(height, width, ("CC", "MLO")[seed % 2], "L", [kind], rng=seed)
        mask = phantom.masks[LESION_KINDS[kind]].astype(bool)
        # Tissue in a band a few pixels away from the lesion (the band scales with the image).
        gap = max(2, round(0.004 * height))
        near = ndimage.binary_dilation(mask, iterations=gap)
        ring = ndimage.binary_dilation(mask, iterations=3 * gap) & ~near
        image = phantom.image.astype(np.float64)
        assert image[mask].mean() > image[ring].mean() + 150, (kind, size, seed)


def test_lesion_sizes_scale_with_the_image():
    # Benign masses have a semi-major axis of 2.2-3.4 % of the height at every size.
    for height, width in [(184, 120), (H, W), (1472, 960)]:
        areas = []
        for seed in range(3):
            mask = make_phantom(height, width, "CC", "L", ["benign_mass"], rng=seed).masks["benign"]
            areas.append(mask.sum() / height**2)
        lower, upper = np.pi * 0.022**2 * 0.65 * 0.8, np.pi * 0.034**2 * 1.2
        assert all(lower < a < upper for a in areas), (height, areas)
    # Calcification specks never vanish, even on a small image.
    tiny = make_phantom(184, 120, "CC", "L", ["calcification_cluster"], rng=0)
    assert tiny.masks["malignant"].sum() >= 6 and tiny.image[tiny.masks["malignant"] > 0].max() > 2000


def test_mlo_has_a_pectoral_muscle_and_cc_does_not():
    for seed in range(3):
        mlo = make_phantom(H, W, "MLO", "L", [], rng=seed).image.astype(np.float64)
        cc = make_phantom(H, W, "CC", "L", [], rng=seed).image.astype(np.float64)
        corner = (slice(0, H // 10), slice(0, W // 10))  # upper chest-wall corner
        mlo_breast = mlo[mlo > 0]
        # The muscle is the brightest tissue of the view.
        assert mlo[corner].mean() > np.percentile(mlo_breast, 90)
        assert np.percentile(mlo[corner], 5) > np.median(mlo_breast) + 300
        assert cc[corner].mean() < np.median(cc[cc > 0])  # a CC view has no muscle there (background, skin)


def test_phantom_is_deterministic_given_the_seed():
    first = make_phantom(H, W, "MLO", "L", ["benign", "malignant"], rng=7)
    again = make_phantom(H, W, "MLO", "L", ["benign", "malignant"], rng=np.random.default_rng(7))
    other = make_phantom(H, W, "MLO", "L", ["benign", "malignant"], rng=8)
    np.testing.assert_array_equal(first.image, again.image)
    for cls in ("benign", "malignant"):
        np.testing.assert_array_equal(first.masks[cls], again.masks[cls])
    assert not np.array_equal(first.image, other.image)


def test_phantom_rejects_bad_arguments():
    with pytest.raises(ValueError, match="view must be CC or MLO"):
        make_phantom(H, W, "ML", "L")
    with pytest.raises(ValueError, match="laterality must be L or R"):
        make_phantom(H, W, "CC", "left")
    with pytest.raises(ValueError, match="unknown lesion 'cyst'"):
        make_phantom(H, W, "CC", "L", ["cyst"])
    with pytest.raises(ValueError, match="no room"):
        make_phantom(H, W, "CC", "L", ["benign"] * 200, rng=0)


def test_generate_dataset_files_and_datalist(tmp_path):
    path = generate_dataset(
        tmp_path / "ds", n_images=10, height=H, width=W, prevalence={"benign": 0.4, "malignant": 0.2},
        seed=1, two_views=True,
    )
    assert path == tmp_path / "ds" / "datalist.json"
    items = load_datalist(path)
    assert len(items) == 10
    owners = {}
    for name in ("training", "validation", "test"):
        for item in load_datalist(path, name):
            assert owners.setdefault(item["patient_id"], name) == name  # patient-level split
    assert len(owners) == 5
    for patient in owners:
        views = sorted(i["view"] for i in items if i["patient_id"] == patient)
        assert views == ["CC", "MLO"]
    # Exact prevalence per breast within each split: round(0.4 * n) benign, round(0.2 * n) malignant.
    for name in ("training", "validation", "test"):
        labels = {i["patient_id"]: (i["benign"], i["malignant"]) for i in load_datalist(path, name)}
        assert sum(b for b, _ in labels.values()) == round(0.4 * len(labels))
        assert sum(m for _, m in labels.values()) == round(0.2 * len(labels))


    for item in items:
        with Image.open(item["image"]) as png:
            assert png.mode == "I;16" and png.size == (W, H)
            image = np.asarray(png)
        assert image.max() <= 4095 and image.max() > 1000
        for cls in ("benign", "malignant"):
            assert (f"mask_{cls}" in item) == bool(item[cls])
            if item[cls]:
                mask = np.asarray(Image.open(item[f"mask_{cls}"]))
                assert mask.dtype == np.uint8 and mask.shape == (H, W) and set(np.unique(mask)) == {0, 255}
                assert image[mask > 0].mean() > image[image > 0].mean()
    leftovers = [p for p in (tmp_path / "ds").rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary files

    again = generate_dataset(tmp_path / "again", n_images=10, height=H, width=W,
                             prevalence={"benign": 0.4, "malignant": 0.2}, seed=1, two_views=True)
    for a, b in zip(items, load_datalist(again)):
        np.testing.assert_array_equal(np.asarray(Image.open(a["image"])), np.asarray(Image.open(b["image"])))


def test_generate_dataset_puts_lesions_in_every_split(tmp_path):
    path = generate_dataset(tmp_path / "ds", n_images=20, height=H, width=W, seed=0,
                            fractions={"training": 0.6, "validation": 0.2, "test": 0.2})
    for name in ("training", "validation", "test"):
        split = load_datalist(path, name)
        assert any(i["benign"] for i in split) and any(i["malignant"] for i in split), name
        assert not all(i["benign"] or i["malignant"] for i in split), name


def test_make_phantoms_cli(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_phantoms.py"), "--out_dir", str(tmp_path / "ph"),
         "--n_images", "3", "--height", str(H), "--width", str(W), "--seed", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "training 1, validation 1, test 1 items" in completed.stdout
    items = load_datalist(tmp_path / "ph" / "datalist.json")
    assert len(items) == 3 and all(np.asarray(Image.open(i["image"])).shape == (H, W) for i in items)
    # A setting the phantoms cannot meet is one line naming it, exit status 2, no datalist.
    cap = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_phantoms.py"), "--out_dir", str(tmp_path / "tiny"),
         "--n_images", "4", "--height", "64", "--width", "48", "--max_lesion_fraction", "0.0001"],
        capture_output=True, text=True, timeout=120,
    )
    assert cap.returncode == 2 and "Traceback" not in cap.stderr
    assert cap.stderr.strip().splitlines()[-1].startswith("error: no ") and "max_lesion_fraction" in cap.stderr
    assert not (tmp_path / "tiny" / "datalist.json").exists()


def test_generate_dataset_as_dicom_reads_back_like_png(tmp_path):
    from glam_bundle.data.readers import MammogramReader

    png = load_datalist(generate_dataset(tmp_path / "png", n_images=3, height=736, width=480, seed=2))
    dcm = load_datalist(generate_dataset(tmp_path / "dcm", n_images=3, height=736, width=480, seed=2,
                                         image_format="dicom"))
    reader = MammogramReader(min_size=0)
    for a, b in zip(png, dcm):
        assert b["image"].endswith(".dcm") and a["laterality"] == b["laterality"] and a["view"] == b["view"]
        image, meta = reader.get_data(reader.read(b["image"]))
        np.testing.assert_array_equal(image, np.asarray(Image.open(a["image"])).astype(np.float32))
        assert meta["laterality"] == b["laterality"] and meta["view"] == b["view"]
    with pytest.raises(ValueError, match="image_format"):
        generate_dataset(tmp_path / "x", n_images=1, height=736, width=480, image_format="jpeg")


def test_cluster_masks_per_kind_scales_and_redraws(tmp_path):
    specks = make_phantom(736, 480, "CC", "L", ["calcification_cluster"], 3, calcification_mask="specks")
    cluster = make_phantom(736, 480, "CC", "L", ["calcification_cluster"], 3, calcification_mask="cluster")
    np.testing.assert_array_equal(specks.image, cluster.image)  # the mask changes, not the image
    speck_mask, cluster_mask = specks.masks["malignant"].astype(bool), cluster.masks["malignant"].astype(bool)
    assert (speck_mask & ~cluster_mask).sum() == 0 and cluster_mask.sum() > 2 * speck_mask.sum()
    assert ndimage.label(cluster_mask)[1] == 1  # one disk holding every speck
    # A mapping scales each kind (or class) on its own; missing kinds keep 1.
    base = make_phantom(736, 480, "CC", "L", ["benign_mass"], 5)
    scaled = make_phantom(736, 480, "CC", "L", ["benign_mass"], 5, lesion_scale={"benign": 2.0, "malignant": 9.0})
    assert 3.0 < scaled.masks["benign"].sum() / base.masks["benign"].sum() < 5.0
    with pytest.raises(ValueError, match="calcification_mask"):
        make_phantom(64, 48, calcification_mask="outline")
    # Large lesions in a small frame find no room in some breasts: max_attempts draws those views again.
    kwargs = dict(n_images=24, height=368, width=240, seed=0, lesion_scale={"benign": 2, "malignant": 4})
    with pytest.raises(ValueError, match="no room"):
        generate_dataset(tmp_path / "once", **kwargs)
    datalist = generate_dataset(tmp_path / "redrawn", max_attempts=20, **kwargs)
    assert sum(len(load_datalist(datalist, split)) for split in ("training", "validation", "test")) == 24


def test_max_lesion_fraction_caps_each_lesion_against_its_breast():
    kinds = ["benign_mass", "malignant_mass", "calcification_cluster"]
    scale = {"benign": 2.0, "malignant": 4.0}  # the demo's enlarged lesions: 1-8 % of the breast uncapped
    uncapped_over, capped_sizes = 0, []
    for seed in range(6):
        for kind in kinds:
            args = (368, 240, "MLO" if seed % 2 else "CC", "L", [kind], seed)
            common = dict(lesion_scale=scale, calcification_mask="cluster")
            free, capped = make_phantom(*args, **common), make_phantom(*args, **common, max_lesion_fraction=0.01)
            cls = LESION_KINDS[kind]
            breast = (capped.image > 0).sum()
            uncapped_over += free.masks[cls].sum() > 0.01 * (free.image > 0).sum()
            capped_sizes.append(capped.masks[cls].sum() / breast)
            assert capped.kinds == (kind,) and capped.labels[cls] == 1
    assert uncapped_over >= 12  # the cap has work to do ...
    assert max(capped_sizes) <= 0.01 and min(capped_sizes) > 0.002  # ... and leaves lesions below, not tiny
    with pytest.raises(ValueError, match="max_lesion_fraction"):
        make_phantom(64, 48, max_lesion_fraction=0.0)
