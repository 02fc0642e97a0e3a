"""The stage-2 patch cache: the K training patches of every image for the local module (paper section 3.3).

:class:`glam_bundle.handlers.PatchSelection` writes the cache with the frozen stage-1 global module (Algorithm 1 on
S_g for positive images, random breast patches for negative ones); :class:`PatchCacheDataset` reads it for
stage 3. Layout of ``cache_dir``::

    index.json                     the cache: format version, stage-1 checkpoint (path, sha256), parameters,
                                   dataset fingerprint, entries, failures, patch-recall summary
    patches/<index>_<key>.pt       one file per image (``torch.save`` of a dict of tensors, strings and ints)

An entry of ``index.json``: ``{"file": "patches/000003_<key>.pt", "index": 3, "image": "<path>", "label": [b, m],
"benign": 0/1, "malignant": 0/1, "selection": "algorithm1" | "random", "locations": [[r, c], ...]}``.
A patch file holds ``patches`` (K, 1, P, P) (float16 by default), ``label`` (2,) float32, ``locations``
(K, 2) int64 upper-left corners in the preprocessed image, ``image``, ``selection``, ``random_tier`` (see
:func:`glam_bundle.networks.patch_selection.breast_patch_locations`; "" for Algorithm 1),
``checkpoint_sha256``, ``num_patches``, ``crop_size``, ``image_size`` (H, W), ``index``, ``seed`` and
``lesions`` (per class, the index of the first patch that hits each lesion, -1 for none). ``<key>`` hashes
the checkpoint, the parameters and the datalist item with its files' size and time, so an interrupted build
reuses the files it finished. Every file is written atomically; ``index.json`` last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from glam_bundle.atomic_io import atomic_output, write_text_atomic
from glam_bundle.constants import CLASS_NAMES

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "PATCH_DIR",
    "PatchCacheMissingError",
    "read_index",
    "write_index",
    "save_entry",
    "load_entry",
    "PatchCacheDataset",
]

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
PATCH_DIR = "patches"


class PatchCacheMissingError(FileNotFoundError, TypeError):
    """The patch cache (or one of its files) is not there: patch selection (stage 2) has not run.

    Also a ``TypeError``, which is how Python's ``len()`` protocol says "no length": MONAI's ``Workflow`` and
    Ignite probe ``len(data_loader)`` when a trainer is built and treat a TypeError as an unsized loader (the epoch
    length is then found when the first epoch ends), so a trainer can be built over a cache that a
    :class:`glam_bundle.handlers.PatchSelection` attached to it writes when it starts.
    """


def _missing_message(cache_dir: Path, what: str) -> str:
    return (
        f"{cache_dir}: {what}; run patch selection (training stage 2: glam_bundle.handlers.PatchSelection with "
        "the stage-1 checkpoint) to build the patch cache before training the local module"
    )


def read_index(cache_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The cache's ``index.json`` as a dict, or None when it is missing or unreadable (half a cache)."""
    path = Path(cache_dir) / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def write_index(cache_dir: str | os.PathLike, index: Mapping[str, Any]) -> Path:
    """Write ``index.json`` atomically."""
    return write_text_atomic(json.dumps(index, indent=1, allow_nan=True) + "\n", Path(cache_dir) / INDEX_FILE)


def save_entry(path: str | os.PathLike, entry: Mapping[str, Any]) -> Path:
    """Save one image's patch entry (a dict of tensors, strings, ints and lists) atomically."""
    with atomic_output(path) as tmp:
        torch.save(dict(entry), tmp)
    return Path(path)


def load_entry(path: str | os.PathLike) -> dict[str, Any]:
    """Read a patch entry with ``torch.load(weights_only=True)`` on the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


class PatchCacheDataset(Dataset):
    """Map-style dataset of the stage-2 patch cache, for training the local module (stage 3).

    Items: ``{"patches": (K, 1, P, P) float32, "label": (2,) float32, "image": str, "patch_locations": (K, 2)
    int64}``, in the order of ``index.json``'s entries (``transform``, when given, is applied to the item).
    Batched by a DataLoader, ``glam_bundle.inferers.PreparePatchBatch`` and ``PatchInferer`` hand them to
    ``GLAM.forward_patches``.

    Lazy: ``index.json`` is read on the first ``len()``, item or ``data`` access, not in ``__init__``, so a config
    can instantiate the dataset before patch selection has written the cache. It is read again whenever the file
    changes (a rebuild replaces it atomically). A missing cache raises :class:`PatchCacheMissingError` telling to
    run patch selection first.

    ``data`` lists one dict per entry with ``image``, ``label``, ``benign``/``malignant`` (0/1), ``selection``,
    ``file`` and ``index`` (datalist-like, for class-balanced samplers).

    ``builder``, when given, is called once before the first read (e.g. the stage's
    :class:`glam_bundle.handlers.PatchSelection`, which reuses an up-to-date cache): the cache is then built or
    checked whenever the dataset is first used, whatever order a config instantiates things in. Without it,
    patch selection must run first (first entry of the config's ``run`` list, or attached to the trainer); note
    that ``DataLoader(shuffle=True)`` calls ``len()`` when it is built.

    Args:
        cache_dir: the folder :class:`glam_bundle.handlers.PatchSelection` writes.
        transform: optional callable applied to each item (e.g. patch augmentation).
        builder: optional callable without arguments run once, before the first access, to build the cache.
    """

    def __init__(
        self, cache_dir: str | os.PathLike, transform: Callable | None = None, builder: Callable[[], Any] | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.transform = transform
        self.builder = builder
        self._built = builder is None
        self._index: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None

    def _load(self) -> dict[str, Any]:
        if not self._built:
            self.builder()
            self._built = True
        path = self.cache_dir / INDEX_FILE
        try:
            status = os.stat(path)
        except FileNotFoundError:
            message = _missing_message(self.cache_dir, f"no patch cache ({INDEX_FILE} is missing)")
            raise PatchCacheMissingError(message) from None
        stamp = (status.st_mtime_ns, status.st_size, status.st_ino)
        if self._index is None or stamp != self._stamp:
            index = read_index(self.cache_dir)
            if index is None:
                raise PatchCacheMissingError(_missing_message(self.cache_dir, f"{INDEX_FILE} is unreadable"))
            if index.get("format_version") != FORMAT_VERSION:
                raise PatchCacheMissingError(
                    _missing_message(
                        self.cache_dir, f"cache format {index.get('format_version')} is not {FORMAT_VERSION}"
                    )
                )
            self._index, self._stamp = index, stamp
        return self._index

    @property
    def index(self) -> dict[str, Any]:
        """The parsed ``index.json`` (read on first access)."""
        return self._load()

    @property
    def data(self) -> list[dict[str, Any]]:
        """One datalist-like dict per entry (``image``, ``label``, ``benign``, ``malignant``, ``selection``, ...)."""
        return [dict(entry) for entry in self._load()["entries"]]

    @property
    def checkpoint_sha256(self) -> str:
        """sha256 of the stage-1 checkpoint whose global module selected the patches."""
        return str(self._load()["checkpoint_sha256"])

    def __len__(self) -> int:
        return len(self._load()["entries"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        entries = self._load()["entries"]
        entry = entries[index]
        path = self.cache_dir / entry["file"]
        if not path.is_file():
            raise PatchCacheMissingError(_missing_message(self.cache_dir, f"patch file {entry['file']} is missing"))
        stored = load_entry(path)
        item = {
            "patches": stored["patches"].float(),
            "label": stored["label"].float(),
            "image": str(stored["image"]),
            "patch_locations": stored["locations"].long(),
        }
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn get a copy: once built, the builder (a network, a dataset) stays here.
        state = dict(self.__dict__)
        if self._built:
            state["builder"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.cache_dir)!r})"


def class_flags(label: Any) -> dict[str, int]:
    """``{"benign": 0/1, "malignant": 0/1}`` of a label (2,) in {0, 1} (values above 0.5 count as 1)."""
    values = [float(v) for v in label]
    return {name: int(value > 0.5) for name, value in zip(CLASS_NAMES, values)}
