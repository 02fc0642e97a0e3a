"""Builder for VinDr-Mammo's ``finding_annotations.csv`` (BI-RADS labels, box masks)."""

from __future__ import annotations

import ast
import math
import os
import re
from pathlib import Path

from glam_bundle.constants import CLASS_NAMES, LATERALITIES, VIEWS
from glam_bundle.data.builders.common import BuildResult, _dicom_shape, _draw_masks, _read_csv, _save_masks, _shapes_by_class

__all__ = ["build_vindr_items"]

_VINDR_BENIGN_BIRADS = (2, 3)
_VINDR_MALIGNANT_BIRADS = (4, 5)


def _vindr_categories(value: str) -> list[str]:
    """Parse finding_categories, e.g. "['Mass', 'Suspicious Calcification']" (literal_eval is data-only)."""
    if value.startswith("["):
        try:
            return [str(c).strip().lower() for c in ast.literal_eval(value)]
        except (ValueError, SyntaxError):
            pass
    return [c.strip(" '\"").lower() for c in re.split(r"[,;]", value.strip("[]")) if c.strip(" '\"")]


def _vindr_class(categories: list[str], birads_text: str) -> str | None:
    """benign / malignant for a mass or calcification finding by its BI-RADS, else None."""
    if not any(c == "mass" or "calcification" in c for c in categories):
        return None
    match = re.search(r"\d", birads_text)
    birads = int(match.group()) if match else None
    if birads in _VINDR_MALIGNANT_BIRADS:
        return "malignant"
    if birads in _VINDR_BENIGN_BIRADS:
        return "benign"
    return None


def _box(row: dict[str, str]) -> tuple[float, float, float, float] | None:
    try:
        box = tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (KeyError, ValueError):
        return None
    return None if any(math.isnan(v) for v in box) else box


def build_vindr_items(
    csv_path: str | os.PathLike,
    root: str | os.PathLike,
    masks_dir: str | os.PathLike,
    image_suffix: str = ".dicom",
) -> BuildResult:
    """Items from VinDr-Mammo's ``finding_annotations.csv``, one per image.

    Images are ``<root>/<study_id>/<image_id><image_suffix>``; patient_id is study_id (one study per
    woman), split the "split" column. Label rule: a finding whose categories include "Mass" or a
    calcification, with finding BI-RADS 4 or 5 -> malignant (suspicious), 2 or 3 -> benign; other findings
    (asymmetry, distortion, BI-RADS 1 or missing) do not set a label, so such images are 0/0. Each class's
    boxes (xmin/xmax columns, ymin/ymax rows, pixel units) are filled into
    ``<masks_dir>/<image_id>_<class>.png`` (0/255, height x width of the image); a class with a finding
    lacking a box gets no mask. Views other than CC/MLO and missing images are skipped and reported.

    Raises:
        BadInputError: the CSV is missing or lacks a required column.
    """
    csv_path, root, masks_dir = Path(csv_path), Path(root), Path(masks_dir)
    rows = _read_csv(
        csv_path, ("image id", "study id", "laterality", "view position", "finding categories", "finding birads")
    )
    by_image: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_image.setdefault(row["image id"], []).append(row)

    items, skipped = [], []
    for image_id, image_rows in sorted(by_image.items()):
        first = image_rows[0]
        image = root / first["study id"] / f"{image_id}{image_suffix}"
        view, laterality = first["view position"].upper(), first["laterality"].upper()
        if view not in VIEWS or laterality not in LATERALITIES:
            skipped.append(f"{image}: view {view!r} / laterality {laterality!r} is not CC/MLO and L/R")
            continue
        if not image.is_file():
            skipped.append(f"{image}: image file not found")
            continue
        item = {
            "image": str(image.absolute()),
            "view": view,
            "laterality": laterality,
            "patient_id": first["study id"],
            **{cls: 0 for cls in CLASS_NAMES},
        }
        if first.get("split"):
            item["split"] = first["split"]

        findings = [
            (_vindr_class(_vindr_categories(row["finding categories"]), row["finding birads"]), _box(row))
            for row in image_rows
        ]
        boxes = _shapes_by_class(findings, item, image, "box", skipped)

        if boxes:
            try:
                shape = (int(float(first["height"])), int(float(first["width"])))
            except (KeyError, ValueError):
                shape = _dicom_shape(image)

            def box_region(box):
                x0, y0, x1, y1 = box
                r0, r1 = math.floor(y0), math.ceil(y1)
                c0, c1 = math.floor(x0), math.ceil(x1)
                return lambda r, c: (r >= r0) & (r <= r1) & (c >= c0) & (c <= c1)

            regions = {cls: [box_region(b) for b in cls_boxes] for cls, cls_boxes in boxes.items()}
            _save_masks(item, _draw_masks(shape, regions), masks_dir, image_id)
        items.append(item)
    return BuildResult(items, skipped)
