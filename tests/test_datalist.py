"""Datalist JSON I/O, patient-level splits, the restricted unpickler and the dataset builders."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glam_bundle.data.builders import (
    build_cbis_ddsm_items,
    build_csv_items,
    build_mini_mias_items,
    build_nyu_items,
    build_vindr_items,
    restricted_load_pickle,
)
from glam_bundle.data.datalist import datalist_from_folder, load_datalist, write_datalist
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.splits import patient_level_split, split_items
from tests.conftest import CBIS_DDSM, MINI_MIAS, NYU_SAMPLE, REPO_ROOT, require
from tests.dicom_helpers import write_dicom


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _mask(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------------------------------------
# load_datalist / write_datalist / datalist_from_folder
# ------------------------------------------------------------------------------------------------------------


def test_load_datalist_resolves_paths_against_json_folder(tmp_path):
    outside = tmp_path / "elsewhere" / "b.png"
    content = {
        "training": [{"image": "images/a.png", "mask_benign": "masks/a_benign.png", "benign": 1, "malignant": 0}],
        "test": [{"image": str(outside), "view": "MLO", "laterality": "R", "patient_id": "7"}],
    }
    path = tmp_path / "lists" / "datalist.json"
    path.parent.mkdir()
    path.write_text(json.dumps(content))

    training = load_datalist(path, "training")
    assert training == [
        {
            "image": str(tmp_path / "lists" / "images" / "a.png"),
            "mask_benign": str(tmp_path / "lists" / "masks" / "a_benign.png"),
            "benign": 1,
            "malignant": 0,
        }
    ]
    assert load_datalist(path, "test")[0]["image"] == str(outside)
    everything = load_datalist(path)
    assert [Path(i["image"]).name for i in everything] == ["a.png", "b.png"]  # training, then test


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "invalid JSON"),
        ("[]", "top level is a list"),
        ('{"training": [{"image": "a.png"}, {"benign": 1}]}', 'training[1] has no "image" path'),
        ('{"training": {"image": "a.png"}}', "split 'training' is a dict"),
        ('{"training": [{"image": "a.png", "malignant": 2}]}', 'training[0]: "malignant" must be 0 or 1'),
        ('{"training": [{"image": "a.png", "view": "ML"}]}', 'training[0]: "view" must be CC or MLO'),
        ('{"training": [{"image": "a.png"}]}', "no 'test' split (has: training)"),
    ],
)
def test_load_datalist_reports_bad_content(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BadInputError) as info:
        load_datalist(path, "test" if "test" in problem else None)
    assert str(info.value).startswith(str(path) + ": ")
    assert problem in str(info.value)


def test_load_datalist_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="datalist file not found") as info:
        load_datalist(tmp_path / "nope.json")
    assert info.value.path == str(tmp_path / "nope.json")


def test_write_datalist_round_trip_relative_inside_absolute_outside(tmp_path):
    inside, outside = tmp_path / "data" / "img" / "a.png", tmp_path / "other" / "b.png"
    splits = {
        "training": [{"image": str(inside), "mask_malignant": str(tmp_path / "data" / "m.png"), "malignant": 1}],
        "validation": [{"image": str(outside)}],
    }
    path = write_datalist(splits, tmp_path / "data" / "datalist.json")

    stored = json.loads(path.read_text())
    assert stored["training"][0]["image"] == "img/a.png"
    assert stored["training"][0]["mask_malignant"] == "m.png"
    assert stored["validation"][0]["image"] == str(outside)
    assert load_datalist(path, "training")[0]["image"] == str(inside)
    assert load_datalist(path, "validation") == [{"image": str(outside)}]
    assert sorted(p.name for p in path.parent.iterdir()) == ["datalist.json"]  # no temporary file left


def test_write_datalist_refuses_item_without_image(tmp_path):
    path = tmp_path / "d.json"
    with pytest.raises(BadInputError, match=r"training\[0\] has no \"image\" path"):
        write_datalist({"training": [{"benign": 1}]}, path)
    assert not path.exists()


def test_datalist_from_folder_lists_images_sorted(tmp_path):
    for name in ["b.png", "a.dcm", "c.nii.gz", "notes.txt", ".hidden.png", "sub/d.png"]:
        _touch(tmp_path / name)
    flat = datalist_from_folder(tmp_path, recursive=False)
    assert [Path(i["image"]).name for i in flat] == ["a.dcm", "b.png", "c.nii.gz"]
    nested = datalist_from_folder(tmp_path)  # recursive by default
    assert [Path(i["image"]).relative_to(tmp_path).as_posix() for i in nested] == [
        "a.dcm", "b.png", "c.nii.gz", "sub/d.png",
    ]
    assert all(set(i) == {"image"} and os.path.isabs(i["image"]) for i in nested)


def test_datalist_from_folder_errors(tmp_path):
    with pytest.raises(BadInputError, match="image folder not found"):
        datalist_from_folder(tmp_path / "missing")
    _touch(tmp_path / "readme.txt")
    with pytest.raises(BadInputError, match="no mammogram to read: 1 file, 1 not a readable image"):
        datalist_from_folder(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------------------


def _patients_items(n_patients: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_patients):
        for v in range(int(rng.integers(1, 5))):
            items.append({"image": f"/x/{p}_{v}.png", "patient_id": f"p{p:03d}"})
    return items


@pytest.mark.parametrize("n_patients", [1, 3, 10, 57])
def test_patient_level_split_keeps_patients_together(n_patients):
    items = _patients_items(n_patients)
    splits = patient_level_split(items, seed=3)
    assert set(splits) == {"training", "validation", "test"}
    owners = {}
    for name, split in splits.items():
        for item in split:
            assert owners.setdefault(item["patient_id"], name) == name
    assert sorted(i["image"] for s in splits.values() for i in s) == sorted(i["image"] for i in items)
    if n_patients >= 3:
        assert all(splits[name] for name in splits)  # rounding never empties a requested split
    if n_patients == 57:
        patients = {name: {i["patient_id"] for i in s} for name, s in splits.items()}
        assert [len(patients[n]) for n in ("training", "validation", "test")] == [40, 6, 11]


def test_patient_level_split_is_deterministic_and_order_free():
    items = _patients_items(30)
    first = patient_level_split(items, seed=1)
    shuffled = [items[i] for i in np.random.default_rng(5).permutation(len(items))]
    again = patient_level_split(shuffled, seed=1)
    as_sets = lambda s: {k: sorted(i["image"] for i in v) for k, v in s.items()}  # noqa: E731
    assert as_sets(first) == as_sets(again)
    assert as_sets(first) != as_sets(patient_level_split(items, seed=2))
    # Items keep their input order within a split.
    assert first["training"] == [i for i in items if i in first["training"]]


def test_patient_level_split_items_without_patient_are_their_own_group():
    items = [{"image": f"/x/{i}.png"} for i in range(10)]
    splits = patient_level_split(items, {"training": 0.5, "test": 0.5})
    assert [len(splits["training"]), len(splits["test"])] == [5, 5]
    with pytest.raises(ValueError, match="non-negative"):
        patient_level_split(items, {"training": -1.0, "test": 1.0})


def test_split_items_keeps_dataset_split_and_carves_validation():
    items = [{"image": f"/x/tr{i}.png", "patient_id": f"a{i}", "split": "training"} for i in range(16)]
    items += [{"image": f"/x/te{i}.png", "patient_id": f"b{i}", "split": "test"} for i in range(4)]
    splits = split_items(items, seed=0)
    assert [len(splits[n]) for n in ("training", "validation", "test")] == [14, 2, 4]  # 1/8 of training
    assert all(i["image"].startswith("/x/te") for i in splits["test"])
    assert all("split" not in i for s in splits.values() for i in s)
    assert "split" in items[0]  # the caller's items are not modified

    with pytest.raises(ValueError, match="some items carry a dataset split"):
        split_items(items + [{"image": "/x/loose.png"}])
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        split_items([{"image": "/x/a.png", "split": "holdout"}])


def test_split_items_without_dataset_split_is_patient_level():
    items = _patients_items(20)
    assert split_items(items, seed=4) == patient_level_split(items, seed=4)


# ------------------------------------------------------------------------------------------------------------
# Restricted unpickler
# ------------------------------------------------------------------------------------------------------------


class _Payload:
    """Pickles to a call of os.system (the classic pickle exploit)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_pickle_refuses_reduce_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"exam": [_Payload(marker)]}))
    with pytest.raises(BadInputError) as info:
        restricted_load_pickle(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load ")
    assert "system" in message  # names the refused global (posix.system / nt.system)
    assert not marker.exists()  # nothing ran


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_pickle_refuses_any_global(tmp_path, protocol):
    path = tmp_path / "global.pkl"
    path.write_bytes(pickle.dumps([1, eval], protocol=protocol))
    with pytest.raises(BadInputError, match=r"refused to load (__builtin__|builtins)\.eval"):
        restricted_load_pickle(path)


def test_restricted_pickle_loads_plain_data_and_rejects_garbage(tmp_path):
    data = {"a": [1, 2.5, "x", None, True], "b": (1, 2), "c": {3}, "d": b"raw"}
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps(data))
    assert restricted_load_pickle(good) == data

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04this is not a pickle")
    with pytest.raises(BadInputError, match="not a valid pickle"):
        restricted_load_pickle(bad)
    with pytest.raises(BadInputError, match="pickle file not found"):
        restricted_load_pickle(tmp_path / "missing.pkl")


# ------------------------------------------------------------------------------------------------------------
# NYU
# ------------------------------------------------------------------------------------------------------------


def test_nyu_sample_exam_list_loads():
    exams = restricted_load_pickle(require(NYU_SAMPLE / "exam_list_before_cropping.pkl"))
    assert isinstance(exams, list) and len(exams) == 4
    assert exams[0]["L-CC"] == ["0_L-CC"]
    assert exams[0]["cancer_label"]["right_benign"] == 1


def test_nyu_builder_on_sample_data():
    result = build_nyu_items(
        require(NYU_SAMPLE / "exam_list_before_cropping.pkl"), NYU_SAMPLE / "images", NYU_SAMPLE / "segmentation"
    )
    by_name = {Path(i["image"]).name: i for i in result.items}
    assert sorted(by_name) == ["0_L-CC.png", "0_R-CC.png"]
    right, left = by_name["0_R-CC.png"], by_name["0_L-CC.png"]
    assert (right["view"], right["laterality"], right["benign"], right["malignant"]) == ("CC", "R", 1, 0)
    assert (left["view"], left["laterality"], left["benign"], left["malignant"]) == ("CC", "L", 0, 0)
    assert right["mask_benign"] == str(NYU_SAMPLE / "segmentation" / "0_R-CC_benign.png")
    assert "mask_malignant" not in right and "mask_benign" not in left
    assert right["mask_frame"] == left["mask_frame"] == "model"
    assert right["patient_id"] == left["patient_id"] == "0"
    # 4 exams x 4 views listed, 2 on disk: the other 14 are reported.
    assert len(result.skipped) == 14
    assert any(s.startswith(str(NYU_SAMPLE / "images" / "0_L-MLO.png")) for s in result.skipped)


def test_nyu_builder_on_made_exam_list(tmp_path):
    exams = [
        {
            "horizontal_flip": "YES",
            "L-MLO": ["a_L-MLO"],
            "R-CC": ["a_R-CC"],
            "cancer_label": {
                "left_benign": 0, "left_malignant": 1, "right_benign": 1, "right_malignant": 0, "unknown": 0,
            },
            "L-MLO_malignant_seg": ["seg_a_L-MLO_malignant"],
            "patient_id": "woman-1",
        },
        {"R-MLO": ["b_R-MLO"], "cancer_label": {"unknown": 1}},
    ]
    exam_list = tmp_path / "exams.pkl"
    exam_list.write_bytes(pickle.dumps(exams))
    for name in ["a_L-MLO", "a_R-CC", "b_R-MLO"]:
        _touch(tmp_path / "img" / f"{name}.png")
    _touch(tmp_path / "seg" / "seg_a_L-MLO_malignant.png")

    items = build_nyu_items(exam_list, tmp_path / "img", tmp_path / "seg").items
    by_name = {Path(i["image"]).stem: i for i in items}
    assert by_name["a_L-MLO"]["malignant"] == 1 and by_name["a_L-MLO"]["benign"] == 0
    assert by_name["a_L-MLO"]["mask_malignant"].endswith("seg_a_L-MLO_malignant.png")
    assert (by_name["a_L-MLO"]["view"], by_name["a_L-MLO"]["laterality"]) == ("MLO", "L")
    assert by_name["a_R-CC"]["benign"] == 1 and by_name["a_R-CC"]["patient_id"] == "woman-1"
    assert by_name["a_R-CC"]["horizontal_flip"] == "YES"
    assert "benign" not in by_name["b_R-MLO"] and by_name["b_R-MLO"]["patient_id"] == "1"  # unknown labels

    not_exams = tmp_path / "dict.pkl"
    not_exams.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(BadInputError, match="not an exam list"):
        build_nyu_items(not_exams, tmp_path / "img")


# ------------------------------------------------------------------------------------------------------------
# CBIS-DDSM
# ------------------------------------------------------------------------------------------------------------


def _write_dicom(path: Path, array: np.ndarray) -> Path:
    return write_dicom(path, array, bits_stored=array.dtype.itemsize * 8)


CBIS_HEADER = (
    "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
    "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path\n"
)


def _cbis_tree(root: Path) -> dict[str, np.ndarray]:
    """A CBIS-DDSM-like tree: TCIA folder nesting, CSV paths that do not match it, one swapped ROI/crop pair."""
    shape = (64, 48)
    full = np.arange(64 * 48, dtype=np.uint16).reshape(shape)
    roi_a, roi_b, roi_c = (np.zeros(shape, np.uint8) for _ in range(3))
    roi_a[5:15, 5:12] = 255
    roi_b[30:40, 20:30] = 255
    roi_c[50:60, 10:20] = 255
    crop = np.full((10, 7), 7, np.uint16)

    _write_dicom(root / "Mass-Training_P_00001_LEFT_CC" / "07-20-2016-DDSM-1" / "1.000-full" / "1-1.dcm", full)
    # abnormality 1: ROI mask and crop in one folder, named 1-1 (crop) and 1-2 (mask) as TCIA does
    _write_dicom(root / "Mass-Training_P_00001_LEFT_CC_1" / "x" / "1.000-roi" / "1-1.dcm", crop)
    _write_dicom(root / "Mass-Training_P_00001_LEFT_CC_1" / "x" / "1.000-roi" / "1-2.dcm", roi_a)
    # abnormality 2: exact CSV paths, but the ROI/crop columns are swapped
    _write_dicom(root / "Mass-Training_P_00001_LEFT_CC_2" / "s" / "t" / "000000.dcm", roi_b)
    _write_dicom(root / "Mass-Training_P_00001_LEFT_CC_2" / "s" / "t" / "000001.dcm", crop)
    _write_dicom(root / "Calc-Test_P_00002_RIGHT_MLO" / "s" / "t" / "000000.dcm", full)
    _write_dicom(root / "Calc-Test_P_00002_RIGHT_MLO_1" / "s" / "t" / "000000.dcm", roi_c)

    rows = [
        "P_00001,2,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,3,BENIGN,5,"
        "Mass-Training_P_00001_LEFT_CC/1.3.6.1/1.3.6.2/000000.dcm,"
        "Mass-Training_P_00001_LEFT_CC_1/1.3.6.3/1.3.6.4/000000.dcm,"
        "\"Mass-Training_P_00001_LEFT_CC_1/1.3.6.3/1.3.6.4/000001.dcm\n\"",
        "P_00001,2,LEFT,CC,2,mass,ROUND,CIRCUMSCRIBED,3,BENIGN_WITHOUT_CALLBACK,5,"
        "Mass-Training_P_00001_LEFT_CC/1.3.6.1/1.3.6.2/000000.dcm,"
        "Mass-Training_P_00001_LEFT_CC_2/s/t/000000.dcm,Mass-Training_P_00001_LEFT_CC_2/s/t/000001.dcm",
        "P_00002,3,RIGHT,MLO,1,calcification,,,5,MALIGNANT,4,"
        "Calc-Test_P_00002_RIGHT_MLO/s/t/000000.dcm,Calc-Test_P_00002_RIGHT_MLO_1/s/t/000001.dcm,"
        "Calc-Test_P_00002_RIGHT_MLO_1/s/t/000000.dcm",
        "P_00003,2,LEFT,MLO,1,mass,OVAL,CIRCUMSCRIBED,3,BENIGN,5,"
        "Mass-Training_P_00003_LEFT_MLO/a/b/000000.dcm,Mass-Training_P_00003_LEFT_MLO_1/a/b/000000.dcm,"
        "Mass-Training_P_00003_LEFT_MLO_1/a/b/000001.dcm",
    ]
    (root / "mass_case_description.csv").write_text(CBIS_HEADER + "\n".join(rows) + "\n")
    return {"a": roi_a, "b": roi_b, "c": roi_c}


def test_cbis_ddsm_builder_on_made_tree(tmp_path):
    root = tmp_path / "CBIS-DDSM"
    rois = _cbis_tree(root)
    result = build_cbis_ddsm_items(root / "mass_case_description.csv", root, tmp_path / "out" / "masks")

    by_patient = {i["patient_id"]: i for i in result.items}
    assert sorted(by_patient) == ["P_00001", "P_00002"]
    first, second = by_patient["P_00001"], by_patient["P_00002"]
    assert first["image"].endswith("Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-1/1.000-full/1-1.dcm")
    assert (first["view"], first["laterality"], first["benign"], first["malignant"], first["split"]) == (
        "CC", "L", 1, 0, "training",
    )
    assert (second["view"], second["laterality"], second["benign"], second["malignant"], second["split"]) == (
        "MLO", "R", 0, 1, "test",
    )
    # Two benign abnormalities -> one united mask; the swapped/renamed ROI files were found by their size.
    benign = _mask(first["mask_benign"])
    assert benign.dtype == np.uint8 and benign.shape == (64, 48)
    np.testing.assert_array_equal(benign, np.maximum(rois["a"], rois["b"]))
    np.testing.assert_array_equal(_mask(second["mask_malignant"]), rois["c"])
    assert "mask_malignant" not in first and "mask_benign" not in second
    assert result.skipped == [f"{root / 'P_00003_LEFT_MLO'}: full mammogram not found"]

    splits = split_items(result.items)
    assert [i["patient_id"] for i in splits["test"]] == ["P_00002"]


def test_cbis_ddsm_builder_rejects_unknown_pathology(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(CBIS_HEADER + "P_1,2,LEFT,CC,1,mass,,,3,MAYBE,5,a.dcm,b.dcm,c.dcm\n")
    with pytest.raises(BadInputError, match="data row 1: unknown pathology 'MAYBE'"):
        build_cbis_ddsm_items(csv_path, tmp_path, tmp_path / "masks")
    (tmp_path / "d.csv").write_text("patient_id,pathology\nP_1,BENIGN\n")
    with pytest.raises(BadInputError, match="missing column"):
        build_cbis_ddsm_items(tmp_path / "d.csv", tmp_path, tmp_path / "masks")


def test_cbis_ddsm_builder_on_shared_sample(tmp_path):
    csv_path = require(CBIS_DDSM / "mass_case_description.csv")
    result = build_cbis_ddsm_items(csv_path, CBIS_DDSM, tmp_path / "masks")
    labels = {Path(i["image"]).name: (i["benign"], i["malignant"], i["split"]) for i in result.items}
    assert labels == {
        "Mass-Test_P_00173_LEFT_CC.dcm": (1, 0, "test"),
        "Mass-Test_P_00820_LEFT_CC.dcm": (0, 1, "test"),
    }
    assert len(result.skipped) == 6  # MLO and right-breast rows: images not in the sample
    assert not (tmp_path / "masks").exists()  # no ROI column in the sample CSV -> no masks


# ------------------------------------------------------------------------------------------------------------
# VinDr-Mammo
# ------------------------------------------------------------------------------------------------------------

VINDR_HEADER = (
    "image_id,study_id,series_id,laterality,view_position,height,width,breast_birads,breast_density,"
    "finding_categories,finding_birads,xmin,ymin,xmax,ymax,split\n"
)


def test_vindr_builder_boxes_and_birads_rule(tmp_path):
    rows = [
        "img_a,st1,se,L,CC,40,30,BI-RADS 4,DENSITY C,['Mass'],BI-RADS 4,3.2,5.0,10.7,12.0,training",
        "img_a,st1,se,L,CC,40,30,BI-RADS 4,DENSITY C,\"['Suspicious Calcification', 'Asymmetry']\",BI-RADS 3,"
        "20,25,24,30,training",
        "img_a,st1,se,L,CC,40,30,BI-RADS 4,DENSITY C,['Architectural Distortion'],BI-RADS 5,0,0,5,5,training",
        "img_b,st1,se,R,MLO,40,30,BI-RADS 1,DENSITY C,['No Finding'],,,,,,training",
        "img_c,st2,se,L,MLO,40,30,BI-RADS 5,DENSITY B,['Mass'],BI-RADS 5,,,,,test",
        "img_d,st2,se,R,XCCL,40,30,BI-RADS 1,DENSITY B,['No Finding'],,,,,,test",
        "img_e,st3,se,R,CC,40,30,BI-RADS 1,DENSITY B,['No Finding'],,,,,,test",
    ]
    (tmp_path / "finding_annotations.csv").write_text(VINDR_HEADER + "\n".join(rows) + "\n")
    for study, image in [("st1", "img_a"), ("st1", "img_b"), ("st2", "img_c"), ("st2", "img_d")]:
        _write_dicom(tmp_path / "images" / study / f"{image}.dicom", np.zeros((40, 30), np.uint16))

    result = build_vindr_items(tmp_path / "finding_annotations.csv", tmp_path / "images", tmp_path / "masks")
    by_id = {Path(i["image"]).stem: i for i in result.items}
    assert sorted(by_id) == ["img_a", "img_b", "img_c"]
    a, b, c = by_id["img_a"], by_id["img_b"], by_id["img_c"]
    assert (a["benign"], a["malignant"], a["patient_id"], a["split"]) == (1, 1, "st1", "training")
    assert (b["benign"], b["malignant"], b["view"], b["laterality"]) == (0, 0, "MLO", "R")
    assert (c["benign"], c["malignant"], c["split"]) == (0, 1, "test")

    malignant = _mask(a["mask_malignant"])
    expected = np.zeros((40, 30), np.uint8)
    expected[5:13, 3:12] = 255  # rows floor(5.0)..ceil(12.0), cols floor(3.2)..ceil(10.7); distortion ignored
    np.testing.assert_array_equal(malignant, expected)
    benign = np.zeros((40, 30), np.uint8)
    benign[25:31, 20:25] = 255
    np.testing.assert_array_equal(_mask(a["mask_benign"]), benign)
    assert "mask_malignant" not in c  # its mass has no box
    skipped = "\n".join(result.skipped)
    assert "img_c.dicom: a malignant finding has no box" in skipped
    assert "img_d.dicom: view 'XCCL'" in skipped and "img_e.dicom: image file not found" in skipped


# ------------------------------------------------------------------------------------------------------------
# mini-MIAS
# ------------------------------------------------------------------------------------------------------------


def test_mias_builder_circles_on_made_files(tmp_path):
    height, width = 64, 48
    for ref in ["mdb001", "mdb002", "mdb003", "mdb005"]:
        Image.fromarray(np.full((height, width), 9, np.uint8)).save(tmp_path / f"{ref}.pgm")
    (tmp_path / "Info.txt").write_text(
        "# REFNUM BG CLASS SEVERITY X Y RADIUS\n"
        "mdb001 G CIRC B 20 10 3\n"
        "mdb002 F NORM\n"
        "mdb003 D CALC M 10 50 2\n"
        "mdb003 D SPIC M 30 30 4\n"
        "mdb005 F ARCH B\n"
        "mdb007 F CIRC M 5 5 2\n"
    )
    result = build_mini_mias_items(tmp_path / "Info.txt", tmp_path, tmp_path / "out" / "masks")
    by_ref = {Path(i["image"]).stem: i for i in result.items}
    assert sorted(by_ref) == ["mdb001", "mdb002", "mdb003", "mdb005"]

    first = by_ref["mdb001"]
    assert (first["benign"], first["malignant"], first["view"], first["laterality"]) == (1, 0, "MLO", "R")
    assert by_ref["mdb002"]["laterality"] == "L" and by_ref["mdb002"]["patient_id"] == first["patient_id"]
    assert (by_ref["mdb002"]["benign"], by_ref["mdb002"]["malignant"]) == (0, 0)
    mask = _mask(first["mask_benign"])
    assert mask.shape == (height, width) and set(np.unique(mask)) == {0, 255}
    rows, cols = np.nonzero(mask)
    assert (rows.mean(), cols.mean()) == (height - 10, 20)  # bottom-left origin: row = H - Y
    assert len(rows) == 29  # lattice points within radius 3

    third = _mask(by_ref["mdb003"]["mask_malignant"])
    assert third[height - 50, 10] == 255 and third[height - 30, 30] == 255 and third[50, 10] == 0
    assert (by_ref["mdb005"]["benign"], "mask_benign" in by_ref["mdb005"]) == (1, False)
    assert any("mdb005.pgm: a benign finding has no coordinates" in s for s in result.skipped)
    assert any("mdb007.pgm: image file not found" in s for s in result.skipped)


@pytest.fixture()
def mias_items(tmp_path):
    info = require(MINI_MIAS / "Info.txt")
    result = build_mini_mias_items(info, MINI_MIAS / "images", tmp_path / "masks")
    return {Path(i["image"]).stem: i for i in result.items}, result.skipped


def test_mias_shared_mdb223_two_rows(mias_items):
    items, skipped = mias_items
    assert len(items) == 24 and skipped == []
    item = items["mdb223"]
    assert (item["benign"], item["malignant"], "mask_malignant" in item) == (1, 0, False)
    mask = _mask(item["mask_benign"])
    assert mask.shape == (1024, 1024)
    # Info.txt: "mdb223 D CALC B 523 482 29" and "mdb223 D CALC B 591 529 6"
    assert mask[1024 - 482, 523] == 255 and mask[1024 - 529, 591] == 255
    assert mask[482, 523] == 0  # the un-flipped row would be wrong
    expected_area = np.pi * (29**2 + 6**2)
    assert abs(int((mask > 0).sum()) - expected_area) < 0.05 * expected_area


def test_mias_shared_orientation_puts_masks_on_the_lesions(mias_items):
    items, _ = mias_items
    # mdb184 (spiculated mass) and mdb001 (large circumscribed mass) are clearly brighter than the rest;
    # the mask (row = 1024 - Y) must be brighter than the same circle mirrored top-bottom (row = Y).
    for ref, cls in [("mdb184", "malignant"), ("mdb001", "benign")]:
        image = np.asarray(Image.open(items[ref]["image"]), dtype=np.float64)
        mask = _mask(items[ref][f"mask_{cls}"]) > 0
        assert image[mask].mean() > image[mask[::-1]].mean() + 20


# ------------------------------------------------------------------------------------------------------------
# Generic CSV and the CLI
# ------------------------------------------------------------------------------------------------------------


def test_generic_csv_builder(tmp_path):
    for name in ["img/a.png", "img/b.png", "masks/a_m.png"]:
        _touch(tmp_path / name)
    (tmp_path / "list.csv").write_text(
        "image,view,laterality,benign,malignant,mask_benign,mask_malignant,patient_id,split\n"
        "img/a.png,cc,left,0,1,,masks/a_m.png,p1,train\n"
        "img/b.png,MLO,R,,0,,,p2,test\n"
        "img/missing.png,CC,L,0,0,,,p3,test\n"
    )
    result = build_csv_items(tmp_path / "list.csv")
    a, b = result.items
    assert a == {
        "image": str(tmp_path / "img" / "a.png"),
        "mask_malignant": str(tmp_path / "masks" / "a_m.png"),
        "benign": 0,
        "malignant": 1,
        "view": "CC",
        "laterality": "L",
        "patient_id": "p1",
        "split": "train",
    }
    assert "benign" not in b and b["malignant"] == 0  # empty cell = unknown
    assert result.skipped == [f"{tmp_path / 'img' / 'missing.png'}: file not found"]
    assert set(split_items(result.items)) == {"training", "test"}  # no validation patients to carve from one

    (tmp_path / "bad.csv").write_text("image,benign\nimg/a.png,yes\n")
    with pytest.raises(BadInputError, match="data row 1: label must be 0, 1 or empty, got 'yes'"):
        build_csv_items(tmp_path / "bad.csv")


def test_build_datalist_cli_on_mini_mias(tmp_path):
    info = require(MINI_MIAS / "Info.txt")
    out = tmp_path / "lists" / "mias.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "build_datalist.py"), "mias", "--info", str(info),
         "--image_dir", str(MINI_MIAS / "images"), "--out", str(out), "--seed", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith("items; 0 skipped")
    stored = json.loads(out.read_text())
    stored_masks = [i.get("mask_benign", i.get("mask_malignant")) for s in stored.values() for i in s]
    assert len(stored_masks) == 24 and all(m.startswith("masks/") for m in stored_masks)  # relative to the JSON
    items = load_datalist(out)
    assert all(Path(i.get("mask_benign", i.get("mask_malignant"))).is_file() for i in items)
    owners = {}
    for name in ("training", "validation", "test"):
        for item in load_datalist(out, name):
            assert owners.setdefault(item["patient_id"], name) == name
