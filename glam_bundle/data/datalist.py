"""Datalists of the GLAM bundle: the JSON format, patient-level splits and builders for public datasets.

Format (shared by the whole bundle)::

    {"training": [item, ...], "validation": [...], "test": [...]}      # any subset of the keys

Each item is a dict with ``"image"`` (path) and optionally ``"view"`` ("CC"/"MLO"), ``"laterality"``
("L"/"R"), ``"benign"`` / ``"malignant"`` (0/1; a missing key means unknown), ``"mask_benign"`` /
``"mask_malignant"`` (paths to 0/255 masks of the image's size), ``"patient_id"`` (str). Builders may add
``"mask_frame"`` ("model": the mask is already in the preprocessed 2944x1920 frame, as NYU's are) and
``"horizontal_flip"`` (NYU's exam flag). Paths are stored relative to the JSON file's folder (absolute
paths are allowed) and :func:`load_datalist` returns them absolute.

Builders (``build_*_items``) return a :class:`BuildResult`: the items, each possibly carrying a
``"split"`` taken from the dataset, plus the files that were skipped and why. :func:`split_items` turns
them into the split dict that :func:`write_datalist` saves. Mask PNGs that a builder has to draw
(boxes, circles, unions of ROI masks) are written atomically into a ``masks_dir``.
"""

from __future__ import annotations

import ast
import csv
import glob
import json
import logging
import math
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from PIL import Image

from glam_bundle.data.errors import BadInputError
from glam_bundle.utils import atomic_output

__all__ = [
    "SPLITS",
    "DEFAULT_FRACTIONS",
    "PATH_KEYS",
    "IMAGE_SUFFIXES",
    "BuildResult",
    "RestrictedUnpickler",
    "load_datalist",
    "datalist_from_folder",
    "write_datalist",
    "save_png_atomic",
    "patient_level_split",
    "split_items",
    "restricted_load_pickle",
    "build_nyu_items",
    "build_cbis_ddsm_items",
    "build_vindr_items",
    "build_mini_mias_items",
    "build_csv_items",
]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
DEFAULT_FRACTIONS = {"training": 0.7, "validation": 0.1, "test": 0.2}
PATH_KEYS = ("image", "mask_benign", "mask_malignant")
CLASSES = ("benign", "malignant")
IMAGE_SUFFIXES = (
    ".png", ".pgm", ".dcm", ".dicom", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".tif", ".tiff", ".jpg", ".jpeg",
)
_SPLIT_ALIASES = {
    "training": "training", "train": "training",
    "validation": "validation", "valid": "validation", "val": "validation",
    "test": "test", "testing": "test",
}
_VIEWS = ("CC", "MLO")
_LATERALITIES = ("L", "R")


class BuildResult(NamedTuple):
    """What a dataset builder found.

    Attributes:
        items: datalist items with absolute paths; an item may carry ``"split"`` from the dataset.
        skipped: ``"<path>: <reason>"`` for every image or mask listed by the dataset but not used.
    """

    items: list[dict]
    skipped: list[str]


# ----------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary file in the target's folder, then rename it over ``path``."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def save_png_atomic(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a 2-D array as a grayscale PNG, atomically.

    Args:
        array: (H, W) uint8 (8-bit PNG), uint16 (16-bit PNG) or bool (saved as 0/255 uint8).
        path: destination ``.png`` file; its folder is created when missing.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16/bool array, got {array.dtype} {array.shape}")
    image = Image.fromarray(array)  # uint16 -> mode "I;16", written as a 16-bit grayscale PNG
    return _write_atomic(path, lambda f: image.save(f, format="PNG"))


def _write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    return _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------------------------------------
# Reading and writing datalist JSON
# ----------------------------------------------------------------------------------------------------------


def _check_item(item: Any, where: str, json_path: Path) -> None:
    """Raise BadInputError when an item does not follow the datalist format."""
    if not isinstance(item, dict):
        raise BadInputError(json_path, f"{where} is a {type(item).__name__}, expected an object")
    if not isinstance(item.get("image"), str) or not item["image"]:
        raise BadInputError(json_path, f"{where} has no \"image\" path")
    for key in ("mask_benign", "mask_malignant"):
        if key in item and (not isinstance(item[key], str) or not item[key]):
            raise BadInputError(json_path, f"{where}: \"{key}\" must be a non-empty path string")
    for key in CLASSES:
        if key in item and (isinstance(item[key], bool) or item[key] not in (0, 1)):
            raise BadInputError(json_path, f"{where}: \"{key}\" must be 0 or 1, got {item[key]!r}")
    if "view" in item and item["view"] not in _VIEWS:
        raise BadInputError(json_path, f"{where}: \"view\" must be CC or MLO, got {item['view']!r}")
    if "laterality" in item and item["laterality"] not in _LATERALITIES:
        raise BadInputError(json_path, f"{where}: \"laterality\" must be L or R, got {item['laterality']!r}")


def load_datalist(path: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Read a datalist JSON and return the items of one split, paths made absolute.

    Args:
        path: the JSON file.
        split: "training", "validation", "test" (or another list-valued key); None returns every split
            concatenated in the order training, validation, test.

    Returns:
        New item dicts; "image", "mask_benign" and "mask_malignant" are absolute paths (relative ones are
        resolved against the JSON file's folder).

    Raises:
        BadInputError: the file is missing or unreadable, is not JSON, has no such split, or an item does
            not follow the format (the message names the split and item index).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(path, "datalist file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(path, f"cannot read datalist ({e})") from e
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(path, f"invalid JSON ({e})") from e
    if not isinstance(content, dict):
        raise BadInputError(path, f"top level is a {type(content).__name__}, expected an object of splits")

    if split is None:
        names = [name for name in SPLITS if name in content]
        if not names:
            raise BadInputError(path, f"no split found; expected some of {', '.join(SPLITS)}")
    elif split in content:
        names = [split]
    else:
        present = [k for k, v in content.items() if isinstance(v, list)]
        raise BadInputError(path, f"no {split!r} split (has: {', '.join(present) or 'none'})")

    folder = path.parent.absolute()
    items = []
    for name in names:
        entries = content[name]
        if not isinstance(entries, list):
            raise BadInputError(path, f"split {name!r} is a {type(entries).__name__}, expected a list")
        for index, entry in enumerate(entries):
            _check_item(entry, f"{name}[{index}]", path)
            item = dict(entry)
            for key in PATH_KEYS:
                if key in item:
                    item[key] = os.path.normpath(os.path.join(folder, item[key]))
            items.append(item)
    return items


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(IMAGE_SUFFIXES)


def datalist_from_folder(folder: str | os.PathLike, recursive: bool = False) -> list[dict]:
    """Every image file of a folder as an item holding only an absolute "image" path.

    Args:
        folder: the folder to list.
        recursive: also list sub-folders (DICOM datasets nest images by study).

    Returns:
        Items sorted by path relative to ``folder`` (deterministic on every file system).

    Raises:
        BadInputError: the folder does not exist or holds no image file (suffixes: ``IMAGE_SUFFIXES``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(folder, "image folder not found")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    paths = sorted((p for p in candidates if _is_image_file(p)), key=lambda p: p.relative_to(folder).as_posix())
    if not paths:
        raise BadInputError(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [{"image": str(p.absolute())} for p in paths]


def _relative_to(folder: str, value: str) -> str:
    """``value`` relative to ``folder`` (posix separators) when inside it, else absolute."""
    absolute = os.path.abspath(value)
    relative = os.path.relpath(absolute, folder)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return absolute
    return Path(relative).as_posix()


def write_datalist(splits: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> Path:
    """Write a datalist JSON atomically.

    Args:
        splits: split name -> items. Relative paths in the items are taken relative to the current
            directory; every path inside the JSON file's folder is stored relative to it.
        path: destination JSON file (its folder is created when missing).

    Returns:
        ``path`` as a Path.

    Raises:
        BadInputError: an item does not follow the datalist format.
    """
    path = Path(path)
    folder = str(path.parent.absolute())
    content = {}
    for name, items in splits.items():
        content[name] = []
        for index, item in enumerate(items):
            _check_item(item, f"{name}[{index}]", path)
            entry = dict(item)
            for key in PATH_KEYS:
                if key in entry:
                    entry[key] = _relative_to(folder, os.fspath(entry[key]))
            content[name].append(entry)
    _write_text_atomic(json.dumps(content, indent=2) + "\n", path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------


def _normalised_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"split fractions must be non-negative with a positive sum, got {dict(fractions)}")
    total = sum(fractions.values())
    return {name: f / total for name, f in fractions.items()}


def _apportion(count: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Integer counts summing to ``count`` (largest remainder), at least 1 per positive fraction when possible."""
    names = list(fractions)
    exact = {name: count * fractions[name] for name in names}
    counts = {name: math.floor(exact[name]) for name in names}
    by_remainder = sorted(names, key=lambda n: (-(exact[n] - counts[n]), names.index(n)))
    for name in by_remainder[: count - sum(counts.values())]:
        counts[name] += 1
    # A split that was asked for should not end up empty just because of rounding.
    for name in names:
        if fractions[name] > 0 and counts[name] == 0:
            donor = max(names, key=lambda n: (counts[n], -names.index(n)))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[name] += 1
    return counts


def _group_key(item: Mapping) -> str:
    patient = item.get("patient_id")
    return f"patient:{patient}" if patient not in (None, "") else f"image:{item['image']}"


def patient_level_split(
    items: Sequence[Mapping], fractions: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, list]:
    """Split items so that no patient appears in two splits.

    Items are grouped by "patient_id" (an item without one is its own group); the sorted group keys are
    shuffled with ``seed`` and dealt out by ``fractions`` of the number of patients (largest remainder;
    every split with a positive fraction gets a patient when there are enough). The result depends only
    on the set of items and the seed, not on their order.

    Args:
        items: datalist items.
        fractions: split name -> fraction (normalised); default 0.7/0.1/0.2 training/validation/test.
        seed: seed of the shuffle.

    Returns:
        split name -> the same item objects, in their input order; every split of ``fractions`` is a key.
    """
    fractions = _normalised_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(_group_key(item), []).append(index)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    counts = _apportion(len(keys), fractions)
    result: dict[str, list] = {}
    start = 0
    for name, count in counts.items():
        chosen = sorted(i for k in order[start : start + count] for i in groups[keys[k]])
        result[name] = [items[i] for i in chosen]
        start += count
    return result


def split_items(
    items: Sequence[Mapping], fractions: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, list[dict]]:
    """Split builder output, keeping the dataset's own split where it has one.

    - No item has "split": :func:`patient_level_split` with ``fractions``.
    - Every item has "split" (aliases such as "train"/"val" accepted): items keep it. When the dataset
      gives no validation split but ``fractions`` asks for one, it is carved out of the training items
      by patient, with the share validation / (training + validation) of ``fractions``.

    A patient found in two given splits is logged as a warning (the dataset's split is kept).

    Returns:
        split name -> new item dicts without the "split" key (only non-empty splits appear, except that
        patient_level_split returns every split of ``fractions``).

    Raises:
        ValueError: some items have a split and others not, or a split name is unknown.
    """
    fractions = _normalised_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    given = [item.get("split") for item in items]
    stripped = [{k: v for k, v in item.items() if k != "split"} for item in items]
    if all(s in (None, "") for s in given):
        return patient_level_split(stripped, fractions, seed)
    if any(s in (None, "") for s in given):
        raise ValueError("some items carry a dataset split and others do not; give every item a split or none")

    result: dict[str, list[dict]] = {}
    for item, name in zip(stripped, given):
        canonical = _SPLIT_ALIASES.get(str(name).strip().lower())
        if canonical is None:
            raise ValueError(f"unknown split {name!r} (use {', '.join(SPLITS)})")
        result.setdefault(canonical, []).append(item)

    share_train, share_val = fractions.get("training", 0.0), fractions.get("validation", 0.0)
    if "validation" not in result and share_val > 0 and result.get("training"):
        carved = patient_level_split(
            result["training"], {"training": share_train, "validation": share_val}, seed
        )
        result["training"], result["validation"] = carved["training"], carved["validation"]

    seen: dict[str, str] = {}
    for name in SPLITS:
        for item in result.get(name, []):
            patient = item.get("patient_id")
            if patient not in (None, "") and seen.setdefault(patient, name) != name:
                logger.warning("patient %s is in the %s and %s splits of the dataset", patient, seen[patient], name)
    return {name: result[name] for name in SPLITS if result.get(name)}


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling (NYU exam lists are pickles)
# ----------------------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, so only plain data can come out of it.

    Without globals a pickle can only build dicts, lists, tuples, sets, strings, bytes, numbers, booleans
    and None: every code-running path (REDUCE, BUILD, NEWOBJ, INST, OBJ, extension codes) needs a callable
    that only ``find_class`` could supply. NYU's exam list needs nothing more (checked opcode by opcode).

    Args:
        file: binary file object holding the pickle.
        path: the file's path, named in errors.
    """

    def __init__(self, file: IO[bytes], path: str | os.PathLike):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        raise BadInputError(
            self._path,
            f"refused to load {module}.{name} (only plain containers, strings, numbers, booleans and None "
            "may be unpickled)",
        )

    def persistent_load(self, pid):
        raise BadInputError(self._path, "refused a persistent id (only plain data may be unpickled)")


def restricted_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may hold only plain data (see :class:`RestrictedUnpickler`).

    Raises:
        BadInputError: the file is missing or unreadable, is not a valid pickle, or refers to any global
            (e.g. "refused to load posix.system"); nothing from the file is executed.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, path).load()
    except BadInputError:
        raise
    except FileNotFoundError:
        raise BadInputError(path, "pickle file not found") from None
    except Exception as e:  # any malformed stream: UnpicklingError, EOFError, ValueError, ...
        raise BadInputError(path, f"not a valid pickle ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------------------
# Shared helpers of the builders
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# NYU exam list
# ----------------------------------------------------------------------------------------------------------

_NYU_VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")


def build_nyu_items(
    exam_list_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    segmentation_dir: str | os.PathLike | None = None,
    image_suffix: str = ".png",
) -> BuildResult:
    """Items from an NYU exam list pickle (``exam_list_before_cropping.pkl`` layout), one per view image.

    Each exam is a dict with view keys ('L-CC', 'R-CC', 'L-MLO', 'R-MLO') listing image stems,
    'cancer_label' (left/right benign/malignant flags; 'unknown' set -> labels left out),
    'horizontal_flip' and '<view>_<class>_seg' lists of segmentation stems.

    Item keys: image (``<image_dir>/<stem><image_suffix>``), view, laterality ('L-CC' -> L, CC), benign,
    malignant (the breast's flags), patient_id (the exam's "patient_id" if present, else its index),
    horizontal_flip, mask_frame="model" (NYU segmentations are drawn in the preprocessed 2944x1920 frame)
    and mask_benign / mask_malignant when ``<segmentation_dir>/<seg stem>.png`` exists.
    Images not on disk are skipped and reported.

    Raises:
        BadInputError: the pickle is unsafe or not an exam list.
    """
    exam_list_path, image_dir = Path(exam_list_path), Path(image_dir)
    exams = restricted_load_pickle(exam_list_path)
    if not isinstance(exams, list) or not all(isinstance(e, dict) for e in exams):
        raise BadInputError(exam_list_path, "not an exam list (expected a list of dicts)")

    items, skipped = [], []
    for exam_index, exam in enumerate(exams):
        cancer = exam.get("cancer_label")
        for view_key in _NYU_VIEWS:
            stems = exam.get(view_key) or []
            if not isinstance(stems, list):
                raise BadInputError(exam_list_path, f"exam {exam_index}: {view_key!r} is not a list of image names")
            laterality, view = view_key.split("-")
            side = "left" if laterality == "L" else "right"
            for image_index, stem in enumerate(stems):
                image = image_dir / f"{stem}{image_suffix}"
                if not image.is_file():
                    skipped.append(f"{image}: image file not found")
                    continue
                item = {
                    "image": str(image.absolute()),
                    "view": view,
                    "laterality": laterality,
                    "patient_id": str(exam.get("patient_id", exam_index)),
                    "horizontal_flip": str(exam.get("horizontal_flip", "NO")),
                    "mask_frame": "model",
                }
                if isinstance(cancer, dict) and not cancer.get("unknown"):
                    for cls in CLASSES:
                        item[cls] = int(bool(cancer.get(f"{side}_{cls}", 0)))
                if segmentation_dir is not None:
                    for cls in CLASSES:
                        seg_stems = exam.get(f"{view_key}_{cls}_seg") or []
                        seg_stem = seg_stems[image_index] if image_index < len(seg_stems) else f"{stem}_{cls}"
                        seg = Path(segmentation_dir) / f"{seg_stem}.png"
                        if seg.is_file():
                            item[f"mask_{cls}"] = str(seg.absolute())
                items.append(item)
    return BuildResult(items, skipped)


# ----------------------------------------------------------------------------------------------------------
# CBIS-DDSM
# ----------------------------------------------------------------------------------------------------------

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
            **{cls: 0 for cls in CLASSES},
        }
        for row in rows:
            item[_CBIS_PATHOLOGY[row["pathology"].upper()]] = 1
        split = _CBIS_SPLIT.search(image.as_posix()) or _CBIS_SPLIT.search(rows[0].get("image file path", ""))
        if split:
            item["split"] = split.group(1).lower()  # "training" / "test"

        if any("roi mask file path" in r for r in rows):
            masks = {}
            for cls in CLASSES:
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


# ----------------------------------------------------------------------------------------------------------
# VinDr-Mammo
# ----------------------------------------------------------------------------------------------------------

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
        if view not in _VIEWS or laterality not in _LATERALITIES:
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
            **{cls: 0 for cls in CLASSES},
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


# ----------------------------------------------------------------------------------------------------------
# mini-MIAS
# ----------------------------------------------------------------------------------------------------------

_MIAS_SEVERITY = {"B": "benign", "M": "malignant"}


def _parse_mias_info(info_path: Path) -> dict[str, list[tuple[str | None, tuple[int, int, int] | None]]]:
    """REFNUM -> [(class or None for NORM, (x, y, radius) or None)] from a MIAS ``Info.txt``."""
    try:
        lines = info_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise BadInputError(info_path, "Info.txt not found") from None
    findings: dict[str, list] = {}
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) < 3 or not re.fullmatch(r"mdb\d+", tokens[0]):
            raise BadInputError(info_path, f"line {number}: expected 'REFNUM BG CLASS [SEVERITY X Y RADIUS]'")
        entries = findings.setdefault(tokens[0], [])
        if tokens[2].upper() == "NORM":
            entries.append((None, None))
            continue
        if len(tokens) < 4 or tokens[3].upper() not in _MIAS_SEVERITY:
            raise BadInputError(info_path, f"line {number}: severity must be B or M")
        cls = _MIAS_SEVERITY[tokens[3].upper()]
        has_circle = len(tokens) >= 7 and all(t.isdigit() for t in tokens[4:7])
        entries.append((cls, tuple(int(t) for t in tokens[4:7]) if has_circle else None))
    return findings


def build_mini_mias_items(
    info_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
) -> BuildResult:
    """Items from a (mini-)MIAS ``Info.txt`` (``REFNUM BG CLASS SEVERITY X Y RADIUS``), one per image.

    Images are ``<image_dir>/<REFNUM>.pgm``. Several rows per image are merged: SEVERITY B -> benign,
    M -> malignant, NORM rows give 0/0. Each circle (centre X, Y with the origin at the bottom-left corner,
    i.e. row = height - Y, column = X) is filled into ``<masks_dir>/<REFNUM>_<class>.png`` (0/255, image
    size); a class with a finding lacking coordinates gets no mask. All MIAS images are MLO views; images
    come in pairs of one woman, odd numbers the right breast (facing left) and even the left, hence
    laterality from the number's parity and patient_id "mias<(n+1)//2>".

    Raises:
        BadInputError: Info.txt is missing or malformed.
    """
    info_path, image_dir, masks_dir = Path(info_path), Path(image_dir), Path(masks_dir)
    items, skipped = [], []
    for ref, findings in sorted(_parse_mias_info(info_path).items()):
        image = image_dir / f"{ref}.pgm"
        if not image.is_file():
            skipped.append(f"{image}: image file not found")
            continue
        number = int(ref[3:])
        item = {
            "image": str(image.absolute()),
            "view": "MLO",
            "laterality": "R" if number % 2 else "L",
            "patient_id": f"mias{(number + 1) // 2:03d}",
            **{cls: 0 for cls in CLASSES},
        }
        circles = _shapes_by_class(findings, item, image, "coordinates", skipped)

        if circles:
            try:
                with Image.open(image) as im:
                    width, height = im.size
            except OSError as e:
                raise BadInputError(image, f"cannot read image ({e})") from e

            def circle_region(circle, height=height):
                x, y, radius = circle
                centre_row, centre_col = height - y, x  # MIAS origin is the bottom-left corner
                return lambda r, c: (r - centre_row) ** 2 + (c - centre_col) ** 2 <= radius**2

            regions = {cls: [circle_region(c) for c in cls_circles] for cls, cls_circles in circles.items()}
            _save_masks(item, _draw_masks((height, width), regions), masks_dir, ref)
        items.append(item)
    return BuildResult(items, skipped)


# ----------------------------------------------------------------------------------------------------------
# Generic CSV
# ----------------------------------------------------------------------------------------------------------


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
        for key in PATH_KEYS:
            value = row.get(key.replace("_", " "), "")
            if value:
                path = (root / value).absolute()
                item[key] = os.path.normpath(path)
                if not path.is_file() and missing is None:
                    missing = path
        if missing is not None:
            skipped.append(f"{missing}: file not found")
            continue
        for key in CLASSES:
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
