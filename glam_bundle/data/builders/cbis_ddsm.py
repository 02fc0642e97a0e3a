"""Builder for CBIS-DDSM's case-description CSVs (DICOM images, ROI masks found by size)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glam_bundle.constants import CLASS_NAMES
from glam_bundle.data.builders.common import BuildResult, _dicom_shape, _read_csv, _save_masks
from glam_bundle.data.errors import BadInputError

__all__ = ["build_cbis_ddsm_items"]

_CBIS_PATHOLOGY = {"BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign", "MALIGNANT": "malignant"}
_CBIS_TYPE_PREFIX = {"mass": "Mass", "calcification": "Calc", "calc": "Calc"}
_CBIS_SPLIT = re.compile(r"(?:Mass|Calc)-(Training|Test)_")


def _dicoms_under(root: Path, folder_name: str) -> list[Path]:
    """DICOM files of the dataset folder ``folder_name`` (TCIA nests them by study and series)."""
    folder = root / folder_name
    if folder.is_dir():
        return sorted(folder.rglob("*.dcm"))
    if (root / f"{folder_name}.dcm").is_file():
        return [root / f"{folder_name}.dcm"]
    return []


def _cbis_candidates(root: Path, csv_path_value: str) -> list[Path]:
    """Files a CSV path may mean: itself if present, else the DICOMs of its top folder.

    The case-description CSVs name paths that do not match the tree TCIA downloads produce (study and
    series folders differ), but the top folder name (e.g. ``Mass-Training_P_00001_LEFT_CC``) does.
    """
    value = csv_path_value.strip().replace("\\", "/")
    if not value:
        return []
    direct = root / value
    if direct.is_file():
        return [direct]
    return _dicoms_under(root, value.split("/")[0])


def _cbis_full_image(root: Path, row: dict[str, str], patient: str, side: str, view: str) -> list[Path]:
    if row.get("image file path"):
        return _cbis_candidates(root, row["image file path"])
    # No path column (as in the shared sample CSV): look for the dataset's folder naming.
    prefix = _CBIS_TYPE_PREFIX.get(row.get("abnormality type", "").lower(), "*")
    pattern = f"{prefix}-*_{glob.escape(patient)}_{side}_{view}"
    found = []
    for match in sorted(root.glob(pattern)) + sorted(root.glob(f"{pattern}.dcm")):
        found += _dicoms_under(root, match.name[: -len(".dcm")] if match.suffix == ".dcm" else match.name)
    return found


def _cbis_roi(root: Path, row: dict[str, str], shape: tuple[int, int]) -> Path | None:
    """The ROI mask DICOM of an abnormality: the candidate whose size equals the full image's.

    CBIS-DDSM sometimes swaps the ROI-mask and cropped-image paths, and an abnormality folder holds both
    files, so the mask is recognised by its size rather than by its name.
    """
    candidates = _cbis_candidates(root, row.get("roi mask file path", ""))
    candidates += _cbis_candidates(root, row.get("cropped image file path", ""))
    for candidate in dict.fromkeys(candidates):
        try:
            if _dicom_shape(candidate) == shape:
                return candidate
        except Exception:  # unreadable candidate: try the next one
            continue
    return None


def _read_roi_mask(path: Path) -> np.ndarray:
    import pydicom

    try:
        return pydicom.dcmread(path).pixel_array > 0
    except Exception as e:
        raise BadInputError(path, f"cannot read ROI mask DICOM ({type(e).__name__}: {e})") from e


def build_cbis_ddsm_items(
    csv_paths: str | os.PathLike | Sequence[str | os.PathLike],
    root: str | os.PathLike,
    masks_dir: str | os.PathLike,
) -> BuildResult:
    """Items from CBIS-DDSM case-description CSVs, one per full mammogram.

    Rows (one per abnormality; columns patient_id, left or right breast, image view, abnormality type,
    pathology, [image file path, cropped image file path, ROI mask file path]) are grouped by
    (patient, breast, view), so an image listed in both the mass and the calcification CSV is one item.
    Labels are aggregated over its abnormalities: BENIGN / BENIGN_WITHOUT_CALLBACK -> benign, MALIGNANT ->
    malignant. The ROI masks of one class are united into one PNG ``<masks_dir>/<P>_<SIDE>_<VIEW>_<class>.png``
    (0/255, image size); a class gets no mask when any of its ROI masks cannot be found. Files are looked up
    as written in the CSV, else by their top folder name under ``root``; without a path column the full image
    is found by the dataset's naming ``<Mass|Calc>-<Training|Test>_<patient>_<SIDE>_<VIEW>[.dcm]``.
    "split" is taken from "-Training_" / "-Test_" in the image path when present.

    Raises:
        BadInputError: a CSV is missing, lacks a required column or has an unknown pathology.
    """
    if isinstance(csv_paths, (str, os.PathLike)):
        csv_paths = [csv_paths]
    root, masks_dir = Path(root), Path(masks_dir)

    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for csv_path in map(Path, csv_paths):
        rows = _read_csv(csv_path, ("patient id", "left or right breast", "image view", "pathology"))
        for number, row in enumerate(rows, start=1):
            if row["pathology"].upper() not in _CBIS_PATHOLOGY:
                raise BadInputError(csv_path, f"data row {number}: unknown pathology {row['pathology']!r}")
            key = (row["patient id"], row["left or right breast"].upper(), row["image view"].upper())
            groups.setdefault(key, []).append(row)

    items, skipped = [], []
    for (patient, side, view), rows in sorted(groups.items()):
        name = f"{patient}_{side}_{view}"
        images = next((found for found in (_cbis_full_image(root, r, patient, side, view) for r in rows) if found), [])
        if len(images) != 1:
            reason = "full mammogram not found" if not images else f"{len(images)} candidate DICOMs"
            skipped.append(f"{root / name}: {reason}")
            continue
        image = images[0]
        try:
            shape = _dicom_shape(image)
        except Exception as e:
            skipped.append(f"{image}: unreadable DICOM ({type(e).__name__}: {e})")
            continue
        item = {
            "image": str(image.absolute()),
            "view": view,
            "laterality": side[0],
            "patient_id": patient,
            **{cls: 0 for cls in CLASS_NAMES},
        }
        for row in rows:
            item[_CBIS_PATHOLOGY[row["pathology"].upper()]] = 1
        split = _CBIS_SPLIT.search(image.as_posix()) or _CBIS_SPLIT.search(rows[0].get("image file path", ""))
        if split:
            item["split"] = split.group(1).lower()  # "training" / "test"

        if any("roi mask file path" in r for r in rows):
            masks = {}
            for cls in CLASS_NAMES:
                class_rows = [r for r in rows if _CBIS_PATHOLOGY[r["pathology"].upper()] == cls]
                if not class_rows:
                    continue
                rois = [_cbis_roi(root, r, shape) for r in class_rows]
                if None in rois:
                    missing = class_rows[rois.index(None)].get("roi mask file path") or "(no path)"
                    skipped.append(f"{root / missing}: ROI mask of {name} not found; no {cls} mask for it")
                    continue
                masks[cls] = np.logical_or.reduce([_read_roi_mask(roi) for roi in rois])
            _save_masks(item, masks, masks_dir, name)
        items.append(item)
    return BuildResult(items, skipped)
