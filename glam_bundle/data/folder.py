"""Listing a folder of mammograms: which files are images, which are masks beside them, which mask goes with which.

A user points inference at a folder as their archive or a public dataset lays it out: sub-folders per patient
or study, DICOMs without a suffix, and, beside the images, lesion masks, structure masks and annotation files.
:func:`list_folder` walks the folder (recursively by default), sorts every file into one of

- **mammograms**: a file a reader of the bundle takes (:func:`glam_bundle.data.image_checks.backend_for`: by
  suffix, or the DICOM magic bytes for a file without one) that no rule below recognises as a mask;
- **masks**, excluded from the mammograms and, when the name says which image and which class they belong to,
  paired with that image as ``mask_benign`` / ``mask_malignant``;
- **other files** (no reader takes them: CSV, TXT, ``.OVERLAY``, ...), ignored.

Hidden files and folders (name starting with ".") are skipped; links to folders are not followed (no cycles). The rules use the naming conventions of the
common datasets and a few header fields, never the pixels:

1. *Derived from a sibling image*: ``<image>_<word>.<ext>`` or ``<word>_<image>.<ext>`` where ``<image>`` is
   the stem of another image in the same folder and ``<word>`` is a mask word (``mask``, ``roi``, ``seg``,
   ``segmentation``, ``outline``, ``contour``, ``overlay``, ``lesion``, ``label``; mini-DDSM's
   ``<image>_Mask.jpg`` and ``Mask_<image>.jpg``), a lesion class (``benign``, ``malignant``, ``cancer``:
   CSAW-S ``<image>_cancer.png``, the bundle's own ``<image>_benign.png``), or a structure class
   (CSAW-S's ``calcifications``, ``mammary_gland``, ``pectoral_muscle``, ``text``, ...). Words may carry a
   number (``_Mask2``) and be combined (``_mask_benign``, ``_benign_mask``).
2. *Named as a mask*: the first or last word of the stem is ``mask``, ``roi``, ``seg``, ``segmentation``,
   ``outline`` or ``contour`` (``foo_mask.png``, ``Mask_x.jpg``) even without its image.
   Also without their image: two or more files ``<name>_<class>`` sharing one ``<name>``, each ``<class>`` a
   lesion or structure class (the masks of other annotators, as CSAW-S keeps them), are masks (not paired).
3. *In a mask folder*: a sub-folder of the listed folder named ``masks``, ``segmentation``, ``roi``,
   ``annotations``, ``labels``, ``ground_truth``, ... (NYU's ``segmentation/``).
4. *CBIS-DDSM*: a file under an abnormality folder ``<Mass|Calc>-<Training|Test>_P_<id>_<SIDE>_<VIEW>_<n>``
   or a series folder ``... ROI mask images ...`` / ``... cropped images ...`` (the TCIA layout), or a DICOM
   whose SeriesDescription says ROI mask or cropped image.
5. *Content*: a 1-bit image (PIL mode "1", as CSAW-S stores masks), a DICOM object that is not an image
   (Modality SEG, SR, PR, KO, RTSTRUCT, ...) and ``DICOMDIR``.

Pairing (rule 1 only, same folder): the class is ``malignant`` for ``cancer`` / ``malignant``, ``benign`` for
``benign``; a class-less mask word takes the class of the nearest ancestor folder named as DDSM and mini-DDSM
name their volumes (``Cancer``/``cancers``/``malignant`` → malignant, ``Benign``/``benigns``/
``benign_without_callbacks`` → benign); with no class it is excluded but not paired. Structure masks are never
paired. When several masks name one image and class, the first in sorted order is kept (mini-DDSM's
``Mask_<image>`` copies of ``<image>_Mask``). DDSM-named images (``[A-D]_<case>_<n>.<SIDE>_<VIEW>``) have
*outline* masks: their items get ``"mask_outline": true`` (the mask is a closed contour to threshold at
half range and fill, for the mask loader).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from glam_bundle.constants import LISTED_IMAGE_SUFFIXES, MASK_FILE_KEYS
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.image_checks import backend_for

__all__ = [
    "FolderListing",
    "MASK_OUTLINE_KEY",
    "OUTPUT_NAME_KEY",
    "image_stem",
    "list_folder",
    "output_names",
    "suffix_counts",
]

logger = logging.getLogger(__name__)

# Item key set on folder items whose masks are closed outlines to fill (DDSM / mini-DDSM).
MASK_OUTLINE_KEY = "mask_outline"
# Item key with the base name of an item's output files (see :func:`output_names`).
OUTPUT_NAME_KEY = "output_name"

# Words (lower case, optionally followed by digits) naming a lesion mask without its class.
MASK_WORDS = frozenset({
    "mask", "masks", "roi", "seg", "segmentation", "outline", "contour", "overlay", "lesion", "label", "annotation",
})
# Mask words that make a file a mask even without an image of its name beside it (first or last word).
ORPHAN_MASK_WORDS = frozenset({"mask", "masks", "roi", "seg", "segmentation", "outline", "contour"})
# Lesion classes in file names -> mask key.
CLASS_WORDS = {"benign": "mask_benign", "malignant": "mask_malignant", "cancer": "mask_malignant",
               "malignancy": "mask_malignant"}
# Structure classes (CSAW-S and the like): masks of anatomy or artefacts, never lesions.
STRUCTURE_WORDS = frozenset({
    "calcification", "calcifications", "axillary_lymph_nodes", "foreign_object", "mammary_gland", "nipple",
    "non-mammary_tissue", "pectoral_muscle", "pectoral", "skin", "text", "thick_vessels", "unclassified",
    "breast", "breast_mask", "background", "vessels", "muscle",
})
# Sub-folders whose images are masks.
MASK_FOLDERS = frozenset({
    "mask", "masks", "segmentation", "segmentations", "seg", "segs", "roi", "rois", "annotation", "annotations",
    "labels", "ground_truth", "groundtruth", "gt", "overlays", "outlines", "contours",
})
# Folders naming the class of the masks below them (DDSM volumes, mini-DDSM).
CLASS_FOLDERS = {
    "benign": "mask_benign", "benigns": "mask_benign", "benign_without_callback": "mask_benign",
    "benign_without_callbacks": "mask_benign", "cancer": "mask_malignant", "cancers": "mask_malignant",
    "malignant": "mask_malignant", "malignancy": "mask_malignant",
}
_CBIS_ABNORMALITY = re.compile(r"^(mass|calc)-(training|test)_p_\d+_(left|right)_(cc|mlo)_\d+$", re.IGNORECASE)
_CBIS_SERIES = re.compile(r"roi mask|cropped image", re.IGNORECASE)
_DDSM_IMAGE = re.compile(r"^[a-d]_\d{4}_\d\.(left|right)_(cc|mlo)$", re.IGNORECASE)
_NON_IMAGE_DICOM = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "DOC", "REG", "RWV", "OT_SEG"})
_SEPARATORS = re.compile(r"[_\-. ]+")
_WORD_NUMBER = re.compile(r"^([a-z]+?)\d*$")
_SUFFIXES_LONGEST_FIRST = tuple(sorted(LISTED_IMAGE_SUFFIXES, key=len, reverse=True))


def image_stem(name: str) -> str:
    """The file name without its image suffix (``.nii.gz``, ``.dcm``, ``.png``, ...), every other dot kept.

    ``C_0001_1.RIGHT_CC.jpg`` → ``C_0001_1.RIGHT_CC``; ``1.2.840.10008.5.dcm`` → ``1.2.840.10008.5``; a
    DICOM named by its UID without a suffix keeps its whole name.
    """
    lower = name.lower()
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class FolderListing:
    """What :func:`list_folder` found.

    Attributes:
        items: one ``{"image": path, ["mask_benign"|"mask_malignant": path, "mask_outline": True]}`` per
            mammogram, absolute paths, sorted by path relative to the folder.
        masks: path → reason, for every image file recognised as a mask (paired or not).
        others: paths of the files no reader takes.
        n_folders: sub-folders seen (hidden ones not counted).
    """

    folder: Path
    n_folders: int = 0
    items: list[dict] = field(default_factory=list)
    masks: dict[str, str] = field(default_factory=dict)
    others: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts of files, images, masks and the suffixes of the other files."""
        n_files = len(self.items) + len(self.masks) + len(self.others)
        text = f"{n_files} files: {len(self.items)} mammograms, {len(self.masks)} masks, {len(self.others)} other files"
        if self.others:
            text += f" ({suffix_counts(self.others)})"
        return text


def suffix_counts(paths: list[str]) -> str:
    counts = Counter(Path(p).suffix.lower() or "no suffix" for p in paths)
    return ", ".join(f"{suffix} x{n}" for suffix, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _words(text: str) -> list[str]:
    return [w for w in _SEPARATORS.split(text.lower()) if w]


def _base_word(word: str) -> str:
    match = _WORD_NUMBER.match(word)
    return match.group(1) if match else word


def _classify_words(text: str) -> tuple[str, str | None] | None:
    """Classify the part of a name that follows (or precedes) an image stem.

    Returns ``("structure", None)``, ``("lesion", mask_key or None)`` or None when the text is no mask name.
    """
    lower = text.lower().strip("_-. ")
    if lower in STRUCTURE_WORDS or lower.replace("-", "_") in STRUCTURE_WORDS:
        return "structure", None
    words = [_base_word(w) for w in _words(lower)]
    if not words:
        return None
    classes = {CLASS_WORDS[w] for w in words if w in CLASS_WORDS}
    known = all(w in MASK_WORDS or w in CLASS_WORDS for w in words)
    if known and len(classes) <= 1:
        return "lesion", (classes.pop() if classes else None)
    if any(w in STRUCTURE_WORDS for w in words) and all(
        w in STRUCTURE_WORDS or w in MASK_WORDS for w in words
    ):
        return "structure", None
    return None


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _walk(folder: Path, recursive: bool) -> tuple[list[Path], int]:
    """Files under ``folder`` (hidden ones skipped), sorted by relative path, and the number of sub-folders."""
    files, n_dirs = [], 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        n_dirs += len(dirs)
        if not recursive:
            dirs[:] = []
        files.extend(Path(root) / n for n in names if not n.startswith("."))
    files = [f for f in files if f.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix()), n_dirs


def _content_mask_reason(path: Path, backend: str) -> str | None:
    """A reason when the file's header says it is no mammogram (1-bit image, non-image DICOM object)."""
    if path.name.upper() == "DICOMDIR":
        return "DICOMDIR index"
    try:
        if backend == "pil":
            from PIL import Image

            with Image.open(path) as image:  # reads the header only
                if image.mode == "1":
                    return "1-bit image (a mask)"
        elif backend == "dicom":
            import pydicom

            header = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["Modality", "SeriesDescription", "ImageType"])
            modality = str(getattr(header, "Modality", "")).upper()
            if modality in _NON_IMAGE_DICOM:
                return f"DICOM {modality} object, not an image"
            description = str(getattr(header, "SeriesDescription", ""))
            if _CBIS_SERIES.search(description):
                return f"CBIS-DDSM {description.strip()!r} (ROI mask or crop)"
    except Exception:  # an unreadable header: leave the file to the reader, which reports it
        return None
    return None


def _ancestor_class(path: Path) -> str | None:
    for parent in path.absolute().parents:
        key = CLASS_FOLDERS.get(parent.name.lower())
        if key:
            return key
    return None


def list_folder(folder: str | os.PathLike, recursive: bool = True) -> FolderListing:
    """Sort the files of ``folder`` into mammograms (with their paired masks), masks and other files.

    Args:
        folder: the folder to list.
        recursive: also list sub-folders (the default: datasets nest images by patient or study).

    Returns:
        a :class:`FolderListing` (the rules are in the module docstring).

    Raises:
        BadInputError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(folder, "image folder not found")
    files, n_folders = _walk(folder, recursive)
    listing = FolderListing(folder=folder, n_folders=n_folders)
    images: list[tuple[Path, str]] = []
    for path in files:
        backend = backend_for(str(path))
        if backend is None:
            listing.others.append(str(path.absolute()))
        else:
            images.append((path, backend))

    # Rules 3-4: folders.
    candidates: list[Path] = []
    for path, backend in images:
        relative_dirs = path.relative_to(folder).parts[:-1]
        reason = None
        for part in relative_dirs:
            if part.lower() in MASK_FOLDERS:
                reason = f"in the mask folder {part!r}"
            elif _CBIS_ABNORMALITY.match(part):
                reason = f"in the CBIS-DDSM abnormality folder {part!r} (ROI mask or crop)"
            elif _CBIS_SERIES.search(part):
                reason = f"in the CBIS-DDSM series folder {part!r} (ROI mask or crop)"
        if reason:
            listing.masks[str(path.absolute())] = reason
        else:
            candidates.append(path)

    # Rules 1-2: names, within each folder.
    by_folder: dict[Path, list[Path]] = {}
    for path in candidates:
        by_folder.setdefault(path.parent, []).append(path)
    pairs: dict[Path, dict] = {}
    mammograms: list[Path] = []
    for paths in by_folder.values():
        stems = {image_stem(p.name).lower(): p for p in paths}
        left: list[Path] = []
        for path in paths:
            stem = image_stem(path.name)
            match = _match_sibling(stem, stems)
            if match is not None:
                image, kind, key = match
                _record_mask(listing, pairs, path, image, kind, key)
                continue
            words = _words(stem)
            if words and (_base_word(words[0]) in ORPHAN_MASK_WORDS or _base_word(words[-1]) in ORPHAN_MASK_WORDS):
                listing.masks[str(path.absolute())] = "named as a mask, no image of that name beside it"
                continue
            left.append(path)
        # Masks whose image is elsewhere (CSAW-S annotator folders): several files <name>_<class> sharing a name.
        groups = {path: _class_prefixes(image_stem(path.name)) for path in left}
        counts = Counter(prefix for prefixes in groups.values() for prefix in prefixes)
        for path in left:
            shared = [prefix for prefix in groups[path] if counts[prefix] > 1]
            if shared:
                listing.masks[str(path.absolute())] = (
                    f"one of {counts[shared[0]]} masks named {shared[0]}_<class>, no image {shared[0]} beside them"
                )
            else:
                mammograms.append(path)

    # Rule 5: headers of what the names left as mammograms.
    backends = dict(images)
    kept = []
    for path in mammograms:
        reason = _content_mask_reason(path, backends[path])
        if reason:
            listing.masks[str(path.absolute())] = reason
        else:
            kept.append(path)
    mammograms = sorted(kept, key=lambda p: p.relative_to(folder).as_posix())
    mammogram_set = set(mammograms)
    for path in mammograms:
        item = {"image": str(path.absolute())}
        for key, mask in sorted(pairs.get(path, {}).items()):
            if key in MASK_FILE_KEYS:
                item[key] = str(mask.absolute())
        if any(k in item for k in MASK_FILE_KEYS) and _DDSM_IMAGE.match(image_stem(path.name)):
            item[MASK_OUTLINE_KEY] = True
        listing.items.append(item)
    # A mask paired with an image that itself turned out to be a mask: keep it excluded, unpaired.
    for image in set(pairs) - mammogram_set:
        for mask in pairs[image].values():
            listing.masks[str(mask.absolute())] += " (its image is itself a mask)"
    return listing


def _match_sibling(stem: str, stems: dict[str, Path]) -> tuple[Path, str, str | None] | None:
    """The sibling image whose stem prefixes (or suffixes) ``stem`` at a separator with mask words after (or
    before) it; the longest such stem wins. Linear in the length of ``stem`` (dictionary look-ups), so that
    folders of many thousand images list quickly."""
    lower = stem.lower()
    candidates = []
    for k, char in enumerate(lower):
        if char in "_-. " and 0 < k < len(lower) - 1:
            candidates.append((lower[:k], stem[k + 1:]))  # <image>_<words>
            candidates.append((lower[k + 1:], stem[:k]))  # <words>_<image>
    best = None
    for other, rest in candidates:
        path = stems.get(other)
        if path is None or (best is not None and len(other) <= best[0]):
            continue
        kind = _classify_words(rest)
        if kind is not None:
            best = (len(other), path, *kind)
    return best[1:] if best else None


def _class_prefixes(stem: str) -> set[str]:
    """Prefixes ``p`` of ``stem`` such that ``stem`` is ``p_<class>`` with a lesion class or structure class
    (a bare mask word is not enough: ``scan_2`` and ``scan_3`` are images)."""
    lower, prefixes = stem.lower(), set()
    for k, char in enumerate(lower):
        if char in "_-. " and 0 < k < len(lower) - 1:
            kind = _classify_words(stem[k + 1:])
            if kind is not None and (kind[0] == "structure" or kind[1] is not None):
                prefixes.add(lower[:k])
    return prefixes


def _record_mask(listing: FolderListing, pairs: dict, mask: Path, image: Path, kind: str, key: str | None) -> None:
    where = str(mask.absolute())
    if kind == "structure":
        listing.masks[where] = f"structure mask of {image.name}"
        return
    key = key or _ancestor_class(mask)
    if key is None:
        listing.masks[where] = f"lesion mask of {image.name} of unknown class (not paired)"
        return
    slot = pairs.setdefault(image, {})
    if key in slot:
        listing.masks[where] = f"{key} of {image.name}, already paired with {slot[key].name}"
        return
    slot[key] = mask
    listing.masks[where] = f"{key} of {image.name}"


def output_names(paths: list[str], base: str | os.PathLike | None) -> list[str]:
    """Unique, deterministic base names for the output files of ``paths``.

    The name is the path relative to ``base`` with the image suffix stripped (:func:`image_stem`) and the
    folder separators replaced by ``"__"`` (``sub/dir/C_1.RIGHT_CC.jpg`` → ``sub__dir__C_1.RIGHT_CC``); a path
    outside ``base`` (or with no base) gives its file name alone. A name already taken, compared without
    case, gets ``_2``, ``_3``, ... in list order.
    """
    names, taken = [], set()
    root = os.path.abspath(base) if base else None
    for path in paths:
        absolute = os.path.abspath(path)
        relative = os.path.relpath(absolute, root) if root else os.pardir
        if relative == os.pardir or relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
            parts = [os.path.basename(absolute)]
        else:
            parts = Path(relative).parts
        name = "__".join([*parts[:-1], image_stem(parts[-1])]) or "image"
        candidate, counter = name, 1
        while candidate.lower() in taken:
            counter += 1
            candidate = f"{name}_{counter}"
        taken.add(candidate.lower())
        names.append(candidate)
    return names
