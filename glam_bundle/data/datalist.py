"""The datalist JSON format of the GLAM bundle: reading, writing, checking items, listing image folders.

Format (shared by the whole bundle)::

    {"training": [item, ...], "validation": [...], "test": [...]}      # any subset of the keys

Each item is a dict with ``"image"`` (path) and optionally ``"view"`` ("CC"/"MLO"), ``"laterality"``
("L"/"R"), ``"benign"`` / ``"malignant"`` (0/1; a missing key means unknown), ``"mask_benign"`` /
``"mask_malignant"`` (paths to 0/255 masks of the image's size), ``"patient_id"`` (str). Builders may add
``"mask_frame"`` ("model": the mask is already in the preprocessed 2944x1920 frame, as NYU's are) and
``"horizontal_flip"`` (NYU's exam flag). Paths are stored relative to the JSON file's folder (absolute
paths are allowed) and :func:`load_datalist` returns them absolute.

Splitting items into training/validation/test is in :mod:`glam_bundle.data.splits`; building items from
public datasets' annotations is in :mod:`glam_bundle.data.builders`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from typing import Any

from glam_bundle.atomic_io import write_text_atomic
from glam_bundle.constants import (
    CLASS_NAMES, FILE_KEYS, LABEL_MAP_KEY, LATERALITIES, LISTED_IMAGE_SUFFIXES, MASK_FILE_KEYS, SPLITS, VIEWS,
)
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.folder import OUTPUT_NAME_KEY, image_stem, list_folder, output_names, suffix_counts

__all__ = [
    "load_datalist",
    "datalist_from_folder",
    "load_inference_data",
    "write_datalist",
    "datalist_from_datastore",
]

logger = logging.getLogger(__name__)

_SPLIT_ALIASES = {
    "training": "training", "train": "training",
    "validation": "validation", "valid": "validation", "val": "validation",
    "test": "test", "testing": "test",
}
def _check_item(item: Any, where: str, json_path: Path) -> None:
    """Raise BadInputError when an item does not follow the datalist format."""
    if not isinstance(item, dict):
        raise BadInputError(json_path, f"{where} is a {type(item).__name__}, expected an object")
    if not isinstance(item.get("image"), str) or not item["image"]:
        raise BadInputError(json_path, f"{where} has no \"image\" path")
    for key in (*MASK_FILE_KEYS, LABEL_MAP_KEY):
        if key in item and (not isinstance(item[key], str) or not item[key]):
            raise BadInputError(json_path, f"{where}: \"{key}\" must be a non-empty path string")
    for key in CLASS_NAMES:
        if key in item and (isinstance(item[key], bool) or item[key] not in (0, 1)):
            raise BadInputError(json_path, f"{where}: \"{key}\" must be 0 or 1, got {item[key]!r}")
    if "mask_outline" in item and not isinstance(item["mask_outline"], bool):
        raise BadInputError(json_path, f"{where}: \"mask_outline\" must be true or false, got {item['mask_outline']!r}")
    if "view" in item and item["view"] not in VIEWS:
        raise BadInputError(json_path, f"{where}: \"view\" must be CC or MLO, got {item['view']!r}")
    if "laterality" in item and item["laterality"] not in LATERALITIES:
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
        raise _datalist_not_found(path) from None
    except IsADirectoryError:
        raise BadInputError(path, "a folder, not a datalist file; give the JSON file as --datalist, or its folder as "
                                   "--dataset_dir") from None
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
            for key in FILE_KEYS:
                if key in item:
                    item[key] = os.path.normpath(os.path.join(folder, item[key]))
            items.append(item)
    return items


def _datalist_not_found(path: Path) -> BadInputError:
    """The error for a datalist JSON that is not there: its folder missing (a wrong ``--dataset_dir``), or the file."""
    folder = path.parent
    if not folder.is_dir():
        missing = folder
        while not missing.parent.is_dir() and missing.parent != missing:  # the first folder of the path not there
            missing = missing.parent
        return BadInputError(
            folder,
            f"folder not found ({missing} does not exist; looked for {path.name} in it); check --dataset_dir (the "
            "folder of datalist.json) or give the datalist file with --datalist",
        )
    return BadInputError(
        path,
        "datalist file not found; give the folder holding datalist.json as --dataset_dir or the file as --datalist "
        "(scripts/build_datalist.py writes one, see docs/datalists.md)",
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _nothing_to_read(listing) -> str:
    """The one-line reason why a folder listing gave no mammogram."""
    n_files = len(listing.masks) + len(listing.others)
    where = f" in {_count(listing.n_folders, 'sub-folder')}" if listing.n_folders else ""
    readable = " ".join(LISTED_IMAGE_SUFFIXES) + " and DICOM files without a suffix"
    if n_files == 0:
        if listing.n_folders:
            return f"no mammogram to read: no files in {_count(listing.n_folders, 'sub-folder')} (hidden ones skipped); readable: {readable}"
        return f"no mammogram to read: empty folder; readable: {readable}"
    text = f"no mammogram to read: {_count(n_files, 'file')}{where}"
    if listing.masks:
        example, reason = next(iter(listing.masks.items()))
        text += f", {_count(len(listing.masks), 'image')} all recognised as masks (e.g. {Path(example).name}: {reason})"
    if listing.others:
        text += f", {len(listing.others)} not a readable image ({suffix_counts(listing.others)})"
    return f"{text}; readable: {readable}"


def datalist_from_folder(folder: str | os.PathLike, recursive: bool = True) -> list[dict]:
    """Every mammogram of a folder (and, by default, its sub-folders) as a datalist item.

    The rules (readable files, masks and annotation files recognised and excluded, masks paired with their
    image when named as the common datasets name them) are those of :func:`glam_bundle.data.folder.list_folder`.

    Args:
        folder: the folder to list.
        recursive: also list sub-folders (datasets nest images by patient or study). Hidden files and folders
            are skipped.

    Returns:
        Items sorted by path relative to ``folder`` (deterministic on every file system): an absolute
        ``"image"`` path and, where a mask was paired, ``"mask_benign"`` / ``"mask_malignant"`` (and
        ``"mask_outline": true`` for DDSM outline masks).

    Raises:
        BadInputError: the folder does not exist or holds no mammogram; the message names the folder and says
            what it holds, e.g. ``"/d: no mammogram to read: 12 files, 12 not a readable image (.txt x12); ..."``.
    """
    listing = list_folder(folder, recursive=recursive)
    if not listing.items:
        raise BadInputError(folder, _nothing_to_read(listing))
    logger.info("%s: %s", folder, listing.summary())
    for path, reason in listing.masks.items():
        logger.debug("%s: mask (%s)", path, reason)
    return listing.items


def load_inference_data(
    dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None, split: str | None = None
) -> list[dict]:
    """Items to run inference on: those of the ``datalist`` JSON (one split, or all splits when ``split`` is
    None) or, without a datalist, every mammogram in the folder ``dataset_dir`` and its sub-folders
    (:func:`datalist_from_folder`).

    Each item gets ``"output_name"``, the base name of its output files (``<output_name>_saliency.nii.gz``,
    ``<output_name>_figure.png``), see :func:`glam_bundle.data.folder.output_names`:

    - folder: the image's path relative to ``dataset_dir`` without the image suffix, sub-folders joined by
      ``"__"`` (``sub/C_1.RIGHT_CC.jpg`` → ``sub__C_1.RIGHT_CC``);
    - datalist: the file name without the image suffix; images whose names would be equal get their path
      relative to the datalist's folder instead (``a/x.png``, ``b/x.png`` → ``a__x``, ``b__x``).

    A name still taken gets ``_2``, ``_3``, ... in item order; an ``"output_name"`` already in a datalist item is
    kept. So the names are unique and the same on every run over the same input.

    Raises:
        BadInputError: ``dataset_dir`` is a file (a datalist goes in ``datalist``), or a folder with no image.
    """
    if datalist:
        items = load_datalist(datalist, split)
        paths = [item["image"] for item in items]
        stems = [image_stem(os.path.basename(path)).lower() for path in paths]
        counts = Counter(stems)
        relative = output_names(paths, Path(datalist).absolute().parent)
        names = output_names(paths, None)
        names = [r if counts[stem] > 1 else n for stem, n, r in zip(stems, names, relative)]
    elif os.path.isfile(dataset_dir):
        raise BadInputError(dataset_dir, "dataset_dir must be a folder of images; give a datalist JSON as --datalist")
    elif not os.path.isdir(dataset_dir):
        raise BadInputError(dataset_dir, "image folder not found (--dataset_dir); give the folder of the images to "
                                         "process, or a datalist JSON with --datalist")
    else:
        items = datalist_from_folder(dataset_dir)
        names = output_names([item["image"] for item in items], dataset_dir)
    taken = {str(item[OUTPUT_NAME_KEY]).lower() for item in items if item.get(OUTPUT_NAME_KEY)}
    for item, name in zip(items, names):
        if not item.get(OUTPUT_NAME_KEY):
            candidate, counter = name, 1
            while candidate.lower() in taken:
                counter += 1
                candidate = f"{name}_{counter}"
            taken.add(candidate.lower())
            item[OUTPUT_NAME_KEY] = candidate
    return items


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
            for key in FILE_KEYS:
                if key in entry:
                    entry[key] = _relative_to(folder, os.fspath(entry[key]))
            content[name].append(entry)
    write_text_atomic(json.dumps(content, indent=2) + "\n", path)
    return path


def datalist_from_datastore(
    training: Sequence[Mapping[str, Any]], validation: Sequence[Mapping[str, Any]] | None, path: str | os.PathLike
) -> Path:
    """Write MONAI Label's datastore lists as a datalist JSON of this bundle and return its path.

    MONAI Label's train task gives ``[{"image": path, "label": path}, ...]`` (``train#dataset#data`` and
    ``validate#dataset#data`` of ``configs/train.json``); each ``"label"`` is a label image (0 background,
    1 benign, 2 malignant) and becomes the item's ``"label_map"``, from which the load chain derives the lesion
    masks (:class:`glam_bundle.transforms.SplitLabelMapd`); the image-level labels are read from it here (a class
    with a pixel => 1, else 0), as the class-balanced sampler needs them before loading. Other keys pass through.
    Without validation items (MONAI Label's ``val_split`` 0) the training items validate, as the log says.
    """
    def convert(index: int, item: Mapping[str, Any], split: str) -> dict:
        if not isinstance(item, Mapping) or not isinstance(item.get("image"), str):
            raise BadInputError(path, f"{split}[{index}] from the datastore has no \"image\" path: {item!r}")
        out = {key: value for key, value in item.items() if key != "label"}
        label = item.get("label")
        if isinstance(label, str) and label:
            out[LABEL_MAP_KEY] = label
            present = _label_map_values(label)
            for value, name in enumerate(CLASS_NAMES, 1):
                out.setdefault(name, int(value in present))
        return out

    content = {"training": [convert(i, item, "training") for i, item in enumerate(training)]}
    content["validation"] = [convert(i, item, "validation") for i, item in enumerate(validation or [])]
    if not content["validation"]:
        logger.warning("no validation items from the datastore: the training items are used for validation")
        content["validation"] = list(content["training"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(content, indent=1), path)
    return path


def _label_map_values(path: str) -> set[int]:
    """The values present in a label image (read as the load chain reads it)."""
    from monai.transforms import LoadImage

    from glam_bundle.data.readers import MammogramReader

    plane = LoadImage(reader=MammogramReader(allow_constant=True, min_size=0), image_only=True)(path)
    return {int(v) for v in np.unique(np.asarray(plane))}
