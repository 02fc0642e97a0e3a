"""Builder for a generic CSV table with one row per image (columns named like datalist keys)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from glam_bundle.constants import CLASS_NAMES, FILE_KEYS
from glam_bundle.data.builders.common import BuildResult, _label, _read_csv
from glam_bundle.data.datalist import _check_item
from glam_bundle.data.errors import BadInputError

__all__ = ["build_csv_items"]


def build_csv_items(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> BuildResult:
    """Items from a generic CSV with columns image, [view, laterality, benign, malignant, mask_benign,
    mask_malignant, patient_id, split].

    Relative paths are taken relative to ``root`` (default: the CSV's folder). Empty cells leave the key
    out (an empty label means unknown). Rows whose image (or a named mask) is missing are skipped and
    reported.

    Raises:
        BadInputError: the CSV is missing, has no "image" column, or a cell is invalid (the message gives the data row).
    """
    csv_path = Path(csv_path)
    root = csv_path.parent if root is None else Path(root)
    rows = _read_csv(csv_path, ("image",))
    items, skipped = [], []
    for number, row in enumerate(rows, start=1):
        where = f"data row {number}"
        if not row["image"]:
            raise BadInputError(csv_path, f"{where}: empty image path")
        item: dict[str, Any] = {}
        missing = None
        for key in FILE_KEYS:
            value = row.get(key.replace("_", " "), "")
            if value:
                path = (root / value).absolute()
                item[key] = os.path.normpath(path)
                if not path.is_file() and missing is None:
                    missing = path
        if missing is not None:
            skipped.append(f"{missing}: file not found")
            continue
        for key in CLASS_NAMES:
            label = _label(row.get(key, ""), csv_path, where)
            if label is not None:
                item[key] = label
        if row.get("view"):
            item["view"] = row["view"].upper()
        if row.get("laterality"):
            item["laterality"] = row["laterality"].upper()[0]
        for key in ("patient id", "split"):
            if row.get(key):
                item[key.replace(" ", "_")] = row[key]
        _check_item(item, where, csv_path)
        items.append(item)
    return BuildResult(items, skipped)
