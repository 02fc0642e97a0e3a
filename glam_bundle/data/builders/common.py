"""What the dataset builders share: their result type, CSV reading, label cells, mask drawing and saving."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from glam_bundle.atomic_io import save_png_atomic
from glam_bundle.data.errors import BadInputError

__all__ = ["BuildResult"]


class BuildResult(NamedTuple):
    """What a dataset builder found.

    Attributes:
        items: datalist items with absolute paths; an item may carry ``"split"`` from the dataset.
        skipped: ``"<path>: <reason>"`` for every image or mask listed by the dataset but not used.
    """

    items: list[dict]
    skipped: list[str]


def _read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """Non-blank CSV rows as dicts of stripped cells (short rows padded with "").

    Header names are lower-cased and trimmed, with runs of spaces/underscores made one space, so
    "patient_id" and "left or right breast" are looked up as "patient id" and "left or right breast".

    Raises:
        BadInputError: the file is missing, unreadable, or lacks one of the ``required`` columns.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise BadInputError(path, "empty CSV file")
            names = [re.sub(r"[\s_]+", " ", name.strip().lower()) for name in header]
            rows = [
                {name: value.strip() for name, value in zip(names, values + [""] * (len(names) - len(values)))}
                for values in reader
                if any(value.strip() for value in values)
            ]
    except FileNotFoundError:
        raise BadInputError(path, "CSV file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BadInputError(path, f"cannot read CSV ({e})") from e
    missing = [column for column in required if column not in names]
    if missing:
        raise BadInputError(path, f"missing column(s) {', '.join(missing)} (has: {', '.join(names)})")
    return rows


def _draw_masks(
    shape: tuple[int, int], shapes_per_class: Mapping[str, list[Callable[[np.ndarray, np.ndarray], np.ndarray]]]
) -> dict[str, np.ndarray]:
    """Rasterise per-class region predicates ``f(rows, cols) -> bool`` into (H, W) bool masks."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    masks = {}
    for cls, regions in shapes_per_class.items():
        mask = np.zeros(shape, dtype=bool)
        for region in regions:
            mask |= region(rows, cols)
        masks[cls] = mask
    return masks


def _save_masks(item: dict, masks: Mapping[str, np.ndarray], masks_dir: Path, stem: str) -> None:
    """Write each class mask as ``<masks_dir>/<stem>_<class>.png`` (0/255) and record it in the item."""
    for cls, mask in masks.items():
        item[f"mask_{cls}"] = str(save_png_atomic(mask, masks_dir / f"{stem}_{cls}.png").absolute())


def _dicom_shape(path: Path) -> tuple[int, int]:
    import pydicom  # lazy: only the DICOM builders need it

    header = pydicom.dcmread(path, stop_before_pixels=True)
    return int(header.Rows), int(header.Columns)


def _label(value: str, path: Path, where: str) -> int | None:
    """A 0/1 label cell; empty means unknown."""
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number not in (0.0, 1.0):
        raise BadInputError(path, f"{where}: label must be 0, 1 or empty, got {value!r}")
    return int(number)


def _shapes_by_class(
    findings: Iterable[tuple[str | None, Any]], item: dict, image: Path, shape_name: str, skipped: list[str]
) -> dict[str, list]:
    """Group the drawable shapes (boxes, circles) of an image's findings by class and set the item's labels.

    A finding of class None is ignored; a class with any finding lacking its shape gets a label but no mask
    (a partial mask would teach wrong negatives), which is reported in ``skipped``.
    """
    shapes: dict[str, list] = {}
    incomplete = set()
    for cls, shape in findings:
        if cls is None:
            continue
        item[cls] = 1
        if shape is None:
            incomplete.add(cls)
        else:
            shapes.setdefault(cls, []).append(shape)
    for cls in sorted(incomplete):
        skipped.append(f"{image}: a {cls} finding has no {shape_name}; no {cls} mask")
    return {cls: found for cls, found in shapes.items() if cls not in incomplete}
