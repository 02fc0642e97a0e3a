"""Builder for NYU's exam list pickle, read with an unpickler that lets only plain data through."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import IO, Any

from glam_bundle.constants import CLASS_NAMES
from glam_bundle.data.builders.common import BuildResult
from glam_bundle.data.errors import BadInputError

__all__ = ["RestrictedUnpickler", "restricted_load_pickle", "build_nyu_items"]


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
                    for cls in CLASS_NAMES:
                        item[cls] = int(bool(cancer.get(f"{side}_{cls}", 0)))
                if segmentation_dir is not None:
                    for cls in CLASS_NAMES:
                        seg_stems = exam.get(f"{view_key}_{cls}_seg") or []
                        seg_stem = seg_stems[image_index] if image_index < len(seg_stems) else f"{stem}_{cls}"
                        seg = Path(segmentation_dir) / f"{seg_stem}.png"
                        if seg.is_file():
                            item[f"mask_{cls}"] = str(seg.absolute())
                items.append(item)
    return BuildResult(items, skipped)
