"""Folder ingestion (glam_bundle/data/folder.py, datalist_from_folder) and the names of the inference outputs."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor, list_data_collate
from PIL import Image

from glam_bundle.data.datalist import datalist_from_folder, load_inference_data
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.folder import image_stem, list_folder, output_names
from glam_bundle.data.phantom import make_phantom, save_dicom_atomic
from glam_bundle.handlers.inference_writer import META_COLUMNS, PREDICTION_COLUMNS, GLAMInferenceWriter
from tests.conftest import REPO_ROOT, SHARED, SMALL_NETWORK_OVERRIDES, require

CSAW_S = SHARED / "data" / "csaw_s"
MINI_DDSM = SHARED / "data" / "mini_ddsm"
CONFIG = str(REPO_ROOT / "configs" / "inference.json")
META = str(REPO_ROOT / "metadata.json")
UID = "1.2.840.113619.2.55.3.604688119.868.1234567890.123"


def _touch(path: Path, content: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _png(path: Path, mode: str = "L", size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def _relative(items, folder):
    return [{k: (Path(v).relative_to(folder).as_posix() if isinstance(v, str) else v) for k, v in item.items()}
            for item in items]


# ------------------------------------------------------------------------------------------------------------
# Listing: recursion, suffixes, hidden files, DICOM without suffix
# ------------------------------------------------------------------------------------------------------------


def test_recursive_listing_of_every_readable_suffix(tmp_path):
    names = ["a.png", "b.ppm", "c.bmp", "d.nhdr", "e.nii.gz", "f.PGM", "sub/g.dcm", "sub/deeper/h.mha",
             "notes.txt", "sub/table.csv", "sub/raw_no_suffix", ".hidden.png", ".cache/i.png", "sub/.j.dcm"]
    for name in names:
        _touch(tmp_path / name, b"not a dicom")
    save_dicom_atomic(make_phantom(64, 48, rng=0).image, tmp_path / "sub" / "deeper" / UID, "L", "CC", "p")
    listed = [Path(i["image"]).relative_to(tmp_path).as_posix() for i in datalist_from_folder(tmp_path)]
    assert listed == ["a.png", "b.ppm", "c.bmp", "d.nhdr", "e.nii.gz", "f.PGM", f"sub/deeper/{UID}",
                      "sub/deeper/h.mha", "sub/g.dcm"]
    flat = datalist_from_folder(tmp_path, recursive=False)
    assert [Path(i["image"]).name for i in flat] == listed[:6]
    listing = list_folder(tmp_path)
    assert sorted(Path(p).name for p in listing.others) == ["notes.txt", "raw_no_suffix", "table.csv"]
    assert all(os.path.isabs(i["image"]) for i in listing.items)


# ------------------------------------------------------------------------------------------------------------
# Masks beside the images
# ------------------------------------------------------------------------------------------------------------


def test_csaw_like_folder_pairs_cancer_and_excludes_structure_masks(tmp_path):
    case = tmp_path / "anonymized_dataset" / "004"
    for view in ("004_0", "004_1"):
        _png(case / f"{view}.png")
        _png(case / f"{view}_cancer.png", mode="1")
        for structure in ("calcifications", "mammary_gland", "pectoral_muscle", "text", "non-mammary_tissue",
                          "axillary_lymph_nodes", "thick_vessels", "foreign_object", "nipple", "skin",
                          "unclassified"):
            _png(case / f"{view}_{structure}.png", mode="1" if structure != "text" else "L")
    listing = list_folder(tmp_path)
    assert _relative(listing.items, case) == [
        {"image": "004_0.png", "mask_malignant": "004_0_cancer.png"},
        {"image": "004_1.png", "mask_malignant": "004_1_cancer.png"},
    ]
    assert len(listing.masks) == 24
    assert "structure mask of 004_0.png" in listing.masks[str(case / "004_0_text.png")]


def test_mini_ddsm_like_folder_pairs_outlines_with_the_class_of_the_volume(tmp_path):
    cancer, benign, unknown = tmp_path / "Cancer" / "0001", tmp_path / "Benign" / "0029", tmp_path / "cases" / "7"
    for folder, case in ((cancer, "C_0001_1"), (benign, "C_0029_1"), (unknown, "C_0007_1")):
        for view in ("LEFT_CC", "RIGHT_MLO"):
            _png(folder / f"{case}.{view}.jpg")
        _png(folder / f"{case}.LEFT_CC_Mask.jpg")
        _touch(folder / f"{case}.LEFT_CC.OVERLAY", b"TOTAL_ABNORMALITIES 1")
        _touch(folder / f"{case.replace('_', '-')}.ics", b"ics_version 1.0")
    _png(cancer / "Mask_C_0001_1.LEFT_CC.jpg")  # mini-DDSM's copy of the _Mask file
    items = _relative(datalist_from_folder(tmp_path), tmp_path)
    assert items == [
        {"image": "Benign/0029/C_0029_1.LEFT_CC.jpg", "mask_benign": "Benign/0029/C_0029_1.LEFT_CC_Mask.jpg",
         "mask_outline": True},
        {"image": "Benign/0029/C_0029_1.RIGHT_MLO.jpg"},
        {"image": "Cancer/0001/C_0001_1.LEFT_CC.jpg", "mask_malignant": "Cancer/0001/C_0001_1.LEFT_CC_Mask.jpg",
         "mask_outline": True},
        {"image": "Cancer/0001/C_0001_1.RIGHT_MLO.jpg"},
        {"image": "cases/7/C_0007_1.LEFT_CC.jpg"},  # no class folder: the outline is excluded, not paired
        {"image": "cases/7/C_0007_1.RIGHT_MLO.jpg"},
    ]
    masks = list_folder(tmp_path).masks
    assert "unknown class" in masks[str(unknown / "C_0007_1.LEFT_CC_Mask.jpg")]
    assert "already paired" in masks[str(cancer / "Mask_C_0001_1.LEFT_CC.jpg")]


def test_generic_mask_names_mask_folders_and_cbis_ddsm_layout(tmp_path):
    for name in ["scan.png", "scan_mask_benign.png", "scan_2.png", "scan_2_malignant_mask.png", "x.png",
                 "x_mask.png", "orphan_mask.png", "ROI_y.png", "masks/scan.png", "segmentation/z_benign.png",
                 "Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm",
                 "Mass-Training_P_00001_LEFT_CC_1/07-21-2016-DDSM-09887/1.000000-ROI mask images-14391/1-1.dcm",
                 "Mass-Training_P_00001_LEFT_CC_1/07-21-2016-DDSM-09887/1.000000-ROI mask images-14391/1-2.dcm",
                 "Calc-Test_P_00038_RIGHT_MLO/08-29-2017-DDSM-93311/1.000000-cropped images-12345/1-1.dcm"]:
        _png(tmp_path / name) if name.endswith(".png") else _touch(tmp_path / name, b"")
    listing = list_folder(tmp_path)
    assert _relative(listing.items, tmp_path) == [
        {"image": "Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm"},
        {"image": "scan.png", "mask_benign": "scan_mask_benign.png"},
        {"image": "scan_2.png", "mask_malignant": "scan_2_malignant_mask.png"},  # "2" is no mask word
        {"image": "x.png"},  # x_mask.png: class unknown, excluded but not paired
    ]
    reasons = {Path(p).relative_to(tmp_path).as_posix(): r for p, r in listing.masks.items()}
    assert "unknown class" in reasons["x_mask.png"]
    assert "named as a mask" in reasons["orphan_mask.png"] and "named as a mask" in reasons["ROI_y.png"]
    assert "mask folder" in reasons["masks/scan.png"] and "mask folder" in reasons["segmentation/z_benign.png"]
    assert sum("CBIS-DDSM" in r for r in reasons.values()) == 3


def test_non_image_dicom_objects_are_excluded(tmp_path):
    import pydicom

    image = save_dicom_atomic(make_phantom(64, 48, rng=0).image, tmp_path / "mg.dcm", "L", "CC", "p")
    seg = pydicom.dcmread(image)
    seg.Modality = "SEG"
    seg.save_as(tmp_path / "object.dcm")
    roi = pydicom.dcmread(image)
    roi.SeriesDescription = "ROI mask images"
    roi.save_as(tmp_path / UID)
    listing = list_folder(tmp_path)
    assert [Path(i["image"]).name for i in listing.items] == ["mg.dcm"]
    assert "SEG" in listing.masks[str(tmp_path / "object.dcm")] and "ROI" in listing.masks[str(tmp_path / UID)]


@pytest.mark.parametrize("dataset, expected", [
    ("csaw_s", {"004_0.png": {"mask_malignant": "004_0_cancer.png"}, "004_1.png": {"mask_malignant": "004_1_cancer.png"},
                "004_2.png": {"mask_malignant": "004_2_cancer.png"}}),
    ("mini_ddsm", None),
])
def test_real_csaw_s_and_mini_ddsm_folders_list_only_the_mammograms(dataset, expected):
    folder = require(SHARED / "data" / dataset)
    listing = list_folder(folder)
    items = {Path(i["image"]).name: {k: (Path(v).name if isinstance(v, str) else v) for k, v in i.items() if k != "image"}
             for i in listing.items}
    if expected is not None:
        assert items == expected
        assert len(listing.masks) == 36 and all(Path(p).name.startswith("004_") for p in listing.masks)
        return
    # mini-DDSM: every C_<case>_1.<SIDE>_<VIEW>.jpg, outlines paired by the Benign/Cancer volume, nothing else
    assert len(items) == 16 and all(n.count(".") == 2 and n.endswith(".jpg") and "Mask" not in n for n in items)
    mask_files = sorted(p.name for p in folder.rglob("*Mask*.jpg"))
    assert sorted(Path(p).name for p in listing.masks) == mask_files
    paired = [i for i in listing.items if len(i) > 1]
    for item in paired:
        image = Path(item["image"])
        key = "mask_benign" if "Benign" in image.parts else "mask_malignant"
        assert item == {"image": item["image"], key: str(image.with_name(image.name[: -len(".jpg")] + "_Mask.jpg")),
                        "mask_outline": True}
    assert len(paired) == len(mask_files) - 1  # Mask_C_0002_1.LEFT_MLO.jpg duplicates the _Mask file
    assert {Path(p).suffix for p in listing.others} == {".OVERLAY", ".ics", ".md"}


# ------------------------------------------------------------------------------------------------------------
# A folder with nothing to read: one line naming the folder and what it holds
# ------------------------------------------------------------------------------------------------------------


def test_folder_with_nothing_readable(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="no mammogram to read: empty folder") as error:
        datalist_from_folder(empty)
    assert str(error.value).startswith(str(empty))

    nested = tmp_path / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    (nested / "c").mkdir()
    _touch(nested / "c" / ".DS_Store")
    with pytest.raises(BadInputError, match=r"no files in 3 sub-folders"):
        load_inference_data(nested)

    texts = tmp_path / "texts"
    for i in range(12):
        _touch(texts / f"sub/{i}.txt")
    _touch(texts / "list.csv")
    with pytest.raises(BadInputError) as error:
        datalist_from_folder(texts)
    message = str(error.value)
    assert "\n" not in message and str(texts) in message
    assert "13 files in 1 sub-folder" in message and "13 not a readable image (.txt x12, .csv x1)" in message
    assert ".png" in message and "DICOM files without a suffix" in message

    only_masks = tmp_path / "only_masks"
    _png(only_masks / "a_mask.png")
    _png(only_masks / "b.png", mode="1")
    with pytest.raises(BadInputError, match="2 images all recognised as masks"):
        datalist_from_folder(only_masks)


# ------------------------------------------------------------------------------------------------------------
# Output names
# ------------------------------------------------------------------------------------------------------------


def test_image_stem_strips_only_the_image_suffix():
    assert image_stem("C_0001_1.RIGHT_CC.jpg") == "C_0001_1.RIGHT_CC"
    assert image_stem(f"{UID}.dcm") == UID and image_stem(UID) == UID
    assert image_stem("a.b.nii.gz") == "a.b" and image_stem("x.NII.GZ") == "x" and image_stem("scan.v2.png") == "scan.v2"


def test_output_names_are_unique_and_deterministic(tmp_path):
    paths = [str(tmp_path / p) for p in ["C_0001_1.RIGHT_CC.jpg", f"{UID}.dcm", UID, "a/scan.png", "b/scan.png",
                                          "a__scan.png", "A/Scan.png"]]
    names = output_names(paths, tmp_path)
    assert names == ["C_0001_1.RIGHT_CC", UID, f"{UID}_2", "a__scan", "b__scan", "a__scan_2", "A__Scan_3"]
    assert output_names(paths, tmp_path) == names
    assert output_names(["/elsewhere/x.png"], tmp_path) == ["x"]


def _phantom_folder(root: Path) -> dict[str, str]:
    """Tiny phantoms named as real archives name them; returns relative path -> expected output name."""
    expected = {
        "C_0001_1.RIGHT_CC.png": "C_0001_1.RIGHT_CC",
        f"{UID}.dcm": UID,
        f"study/{UID}": f"study__{UID}",
        "a/scan.png": "a__scan",
        "b/scan.png": "b__scan",
    }
    for index, relative in enumerate(expected):
        phantom = make_phantom(736, 480, laterality="L" if index % 2 else "R", rng=index)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(".png"):
            Image.fromarray(phantom.image).save(path)
        else:
            save_dicom_atomic(phantom.image, path, "L", "CC", str(index))
    _png(root / "a" / "scan_pectoral_muscle.png", mode="1")  # a structure mask beside an image
    (root / "a" / "notes.txt").write_text("not an image")
    return expected


def test_inference_outputs_keep_full_stems_and_list_their_files(tmp_path):
    expected = _phantom_folder(tmp_path / "in")
    out = tmp_path / "out"
    for _ in range(2):  # the same names on a second run into the same folder
        workflow = ConfigWorkflow(config_file=CONFIG, meta_file=META, workflow_type="infer", logging_file=False,
                                  dataset_dir=str(tmp_path / "in"), output_dir=str(out), allow_random_weights=True,
                                  **SMALL_NETWORK_OVERRIDES)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        with open(out / "predictions.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            assert tuple(reader.fieldnames) == PREDICTION_COLUMNS
            rows = list(reader)
        assert list(PREDICTION_COLUMNS[:6]) == ["image", "benign_pred", "malignant_pred", "benign_label",
                                                "malignant_label", "patch_locations"]
        by_image = {Path(r["image"]).relative_to(tmp_path / "in").as_posix(): r for r in rows}
        assert set(by_image) == set(expected)
        for relative, name in expected.items():
            row = by_image[relative]
            assert row["saliency_file"] == f"{name}_saliency.nii.gz" and row["figure_file"] == f"{name}_figure.png"
            assert (out / row["saliency_file"]).is_file() and (out / row["figure_file"]).is_file()
        dicom_row = by_image[f"{UID}.dcm"]  # from the DICOM header, via the image meta
        assert dicom_row["laterality"] == "L" and dicom_row["view"] == "CC"
        assert dicom_row["source_spacing_mm"] == "0.1 0.1" and dicom_row["spacing_source"] not in ("", "none")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["predictions.csv", "failures.csv"] + [f"{n}_saliency.nii.gz" for n in expected.values()]
        + [f"{n}_figure.png" for n in expected.values()])


def test_predictions_csv_meta_columns_from_the_image_meta(tmp_path):
    """view/laterality/film/spacing columns come from batch["image"].meta when the preprocessing records them."""
    metas = [
        {"filename_or_obj": "/d/a.png", "view": "MLO", "view_source": "pectoral muscle", "laterality": "R",
         "laterality_source": "file name", "film": True, "film_source": "pixels", "pixel_spacing_mm": (0.2, 0.2),
         "spacing_source": "datalist", "flipped": True, "flipped_vertically": False, "orientation_rule": "laterality"},
        {"filename_or_obj": "/d/b.dcm", "view": "CC", "view_source": "DICOM ViewPosition", "laterality": "none",
         "laterality_source": "none", "film": False, "film_source": "DICOM Modality", "pixel_spacing_mm": (0.07, 0.08),
         "spacing_source": "DICOM PixelSpacing", "flipped": False, "flipped_vertically": True,
         "orientation_rule": "patient orientation"},
    ]
    items = [{"image": MetaTensor(torch.zeros(1, 8, 8), meta=m), "output_name": n} for m, n in zip(metas, ["a", "sub__b"])]
    batch = list_data_collate(items)
    pred = {"y_global": torch.tensor([[0.1, 0.2], [0.3, 0.4]]), "patch_locations": torch.zeros(2, 1, 2)}

    class State:
        output = {"pred": pred, "label": torch.full((2, 2), -1.0)}

    State.batch = batch
    writer = GLAMInferenceWriter(tmp_path, write_saliency=False, write_figures=False)
    writer.reset(None)
    writer.write_iteration(type("Engine", (), {"state": State})())
    writer.write_failures_file(type("Engine", (), {"state": State})())
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [{k: r[k] for k in META_COLUMNS} for r in rows] == [
        {"view": "MLO", "view_source": "pectoral muscle", "laterality": "R", "laterality_source": "file name",
         "film": "true", "film_source": "pixels", "pixel_spacing_mm": "0.2 0.2", "source_spacing_mm": "",
         "spacing_source": "datalist", "inverted": "", "flipped": "true", "flipped_vertically": "false",
         "orientation_rule": "laterality"},
        {"view": "CC", "view_source": "DICOM ViewPosition", "laterality": "", "laterality_source": "none",
         "film": "false", "film_source": "DICOM Modality", "pixel_spacing_mm": "0.07 0.08",
         "source_spacing_mm": "", "spacing_source": "DICOM PixelSpacing", "inverted": "", "flipped": "false",
         "flipped_vertically": "true", "orientation_rule": "patient orientation"},
    ]
    assert [(r["saliency_file"], r["figure_file"]) for r in rows] == [("", ""), ("", "")]

    # before the preprocessing records them: empty columns, same header
    plain = list_data_collate([{"image": MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "/d/c.png"})}])
    State.batch, State.output = plain, {"pred": {k: v[:1] for k, v in pred.items()}, "label": torch.full((1, 2), -1.0)}
    writer.reset(None)
    writer.write_iteration(type("Engine", (), {"state": State})())
    writer.write_failures_file(type("Engine", (), {"state": State})())
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(rows[0][k] == "" for k in META_COLUMNS) and rows[0]["image"] == "/d/c.png"
    assert np.isclose(float(rows[0]["malignant_pred"]), 0.2)

    # the file's spacing and the model input's; an unknown spacing (0 placeholder) with source "none"
    for spacing, target, source, expected in (
        ((0.2, 0.2), 0.1, "DICOM PixelSpacing", ("0.1", "0.2 0.2", "DICOM PixelSpacing")),
        ((0.0, 0.0), 0.0, "none", ("", "", "none")),
    ):
        meta = {"filename_or_obj": "/d/c.png", "source_spacing_mm": spacing, "pixel_spacing_mm": target,
                "spacing_source": source}
        State.batch = list_data_collate([{"image": MetaTensor(torch.zeros(1, 8, 8), meta=meta)}])
        writer.reset(None)
        writer.write_iteration(type("Engine", (), {"state": State})())
        writer.write_failures_file(type("Engine", (), {"state": State})())
        with open(tmp_path / "predictions.csv", newline="") as handle:
            row = next(csv.DictReader(handle))
        assert (row["pixel_spacing_mm"], row["source_spacing_mm"], row["spacing_source"]) == expected


def test_datalist_output_names_use_sub_folders_only_for_equal_names(tmp_path):
    import json

    items = [{"image": "a/scan.png"}, {"image": "b/scan.png"}, {"image": "images/C_1.RIGHT_CC.jpg"},
             {"image": f"/elsewhere/{UID}"}, {"image": "c/own.png", "output_name": "kept"}]
    (tmp_path / "list.json").write_text(json.dumps({"test": items}))
    names = [i["output_name"] for i in load_inference_data(tmp_path, tmp_path / "list.json")]
    assert names == ["a__scan", "b__scan", "C_1.RIGHT_CC", UID, "kept"]


def test_masks_without_their_image_grouped_by_name(tmp_path):
    """CSAW-S keeps other annotators' masks in folders without the images: <name>_<class> files sharing a name."""
    for name in ["annotator_2/004_0_cancer.png", "annotator_2/004_0_text.png", "annotator_2/004_0_pectoral_muscle.png",
                 "annotator_2/004_1_cancer.png", "annotator_2/004_1_nipple.png",
                 "images/scan_2.png", "images/scan_3.png", "images/patient_benign.png", "images/mdb001.pgm"]:
        _png(tmp_path / name)
    listing = list_folder(tmp_path)
    assert [Path(i["image"]).name for i in listing.items] == ["mdb001.pgm", "patient_benign.png", "scan_2.png",
                                                              "scan_3.png"]
    assert "one of 3 masks named 004_0_<class>" in listing.masks[str(tmp_path / "annotator_2/004_0_text.png")]
