"""Dataset caching of the preprocessing chain: the deterministic part of each item is computed once.

:func:`make_cached_dataset` wraps a chain (e.g. :func:`glam_bundle.transforms.default_preprocessing`) in a
``PersistentDataset`` (disk), a ``CacheDataset`` (memory) or a plain ``Dataset``. The disk cache key hashes the
item with its files' size and time (:func:`item_fingerprint`) and the cached transforms' classes and parameters
(:func:`transform_fingerprint`), so a rewritten file or a changed preprocessing parameter gives new entries.

This module does not import :mod:`glam_bundle.transforms` (which re-exports ``make_cached_dataset``,
``transform_fingerprint`` and ``allow_cached_meta`` for configs naming ``glam_bundle.transforms.*``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from copy import deepcopy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import CastToTyped, Compose, DeleteItemsd, EnsureTyped
from monai.transforms.traits import RandomizableTrait
from monai.transforms.transform import Randomizable, Transform
from monai.utils import SpaceKeys, TraceKeys

from glam_bundle.constants import FILE_KEYS
from glam_bundle.errors import CACHE_HINT, ConfigError, is_disk_full

__all__ = [
    "CACHE_MODES",
    "transform_fingerprint",
    "item_fingerprint",
    "allow_cached_meta",
    "make_cached_dataset",
    "cache_usage",
]

logger = logging.getLogger(__name__)

# Attributes that are caches or state filled on first use (not configuration) and would make the hash
# unstable; thread-local objects (e.g. MONAI's "_tracing") are skipped too.
_VOLATILE_ATTRIBUTES = ("_backends",)


def _describe(obj: Any, depth: int = 0) -> Any:
    """JSON-able description of a transform's configuration (class names and parameters, recursively)."""
    if depth > 8:
        return type(obj).__qualname__
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return np.asarray(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj).tolist()
    if isinstance(obj, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_describe(v, depth + 1) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(str(_describe(v, depth + 1)) for v in obj)
    if isinstance(obj, (np.random.RandomState, np.random.Generator)):
        return type(obj).__qualname__
    if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    if hasattr(obj, "__dict__"):
        state = {
            k: _describe(v, depth + 1)
            for k, v in sorted(vars(obj).items())
            if k not in _VOLATILE_ATTRIBUTES and not isinstance(v, threading.local)
        }
        return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", **state}
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))  # e.g. torch.float32, enums


@functools.lru_cache(maxsize=1)
def preprocessing_code_fingerprint() -> str:
    """sha256 of the source of the code that decides what a preprocessing cache entry holds: the readers and every
    transform of the bundle. A new version of the bundle (a changed rule, a fixed bug) then misses the entries an
    older one wrote instead of reusing them."""
    package = Path(__file__).resolve().parents[1]
    sources = sorted((package / "transforms").rglob("*.py")) + [
        package / "data" / name for name in ("readers.py", "dicom_reader.py", "image_checks.py")
    ]
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def transform_fingerprint(transforms: Sequence | Transform) -> bytes:
    """Hash (bytes, as MONAI's ``hash_transform`` expects) of the transforms' classes and parameters and of the
    bundle's preprocessing code (:func:`preprocessing_code_fingerprint`).

    MONAI's ``json_hashing`` cannot serialise transform objects and silently falls back to hashing the
    class names only (so a new window size would reuse stale cache entries); ``pickle_hashing`` depends on
    pickle's byte layout. This hashes a sorted JSON description of every public attribute instead.
    """
    description = {
        "code": preprocessing_code_fingerprint(),
        "transforms": _describe(list(transforms) if isinstance(transforms, Sequence) else [transforms]),
    }
    dump = json.dumps(description, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(dump).hexdigest().encode()


def allow_cached_meta() -> None:
    """Allow-list, for ``torch.load(weights_only=True)``, the types MONAI readers put in MetaTensor meta.

    The meta data of a loaded image holds numpy arrays (``spatial_shape``, ``original_affine``,
    ``spacing``) and MONAI string enums (``space``, ``TraceKeys``); without this a ``PersistentDataset``
    cannot read its own files and silently recomputes every item.
    """
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    scalar_types = (bool, np.uint8, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, str)
    numpy_dtypes = [type(np.dtype(t)) for t in scalar_types]
    torch.serialization.add_safe_globals([_reconstruct, np.ndarray, np.dtype, *numpy_dtypes, SpaceKeys, TraceKeys])


class _AfterCache(Randomizable):
    """Runs ``transforms`` after a ``PersistentDataset``'s cache.

    PersistentDataset caches up to the first ``RandomizableTrait``; being one (and forwarding the random
    state to the wrapped transforms, so DataLoader workers seed them) lets the trailing dtype casts run
    after the cache, so that the cache keeps compact dtypes (bool masks) and the casts cost a few ms.
    """

    def __init__(self, transforms: Sequence):
        self.transforms = Compose(list(transforms))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> _AfterCache:
        self.transforms.set_random_state(seed, state)
        return self

    def randomize(self, data: Any) -> None:  # the wrapped transforms draw their own numbers
        pass

    def __call__(self, data):
        return self.transforms(data)


_CAST_TRANSFORMS = (EnsureTyped, CastToTyped)


def _defer_trailing_casts(head: list) -> tuple[list, list]:
    """Split the cached transforms ``head`` into what is cached and the casts that can run after the cache.

    Trailing ``EnsureTyped``/``CastToTyped`` casts move after the cache (the cache keeps compact dtypes). A
    trailing ``DeleteItemsd`` stays before the cache (the deleted entries are not stored) and the casts before
    it move too when they touch none of its keys (a deletion and a cast of other keys commute).
    """
    head, casts, deletions, deleted = list(head), [], [], set()
    while head:
        last = head[-1]
        if isinstance(last, DeleteItemsd) and not any(last.use_re):
            deleted.update(str(key).split(last.sep)[0] for key in last.keys)
            deletions.insert(0, head.pop())
        elif isinstance(last, _CAST_TRANSFORMS) and not deleted.intersection(map(str, last.keys)):
            casts.insert(0, head.pop())
        else:
            break
    return head + deletions, casts


CACHE_MODES = ("disk", "memory", "none")


def item_fingerprint(item: Mapping) -> bytes:
    """Cache key of a datalist item: its entries plus the size and modification time of its files.

    MONAI's default (``pickle_hashing``) hashes the item dict only, so a file rewritten in place (e.g.
    phantoms regenerated with another seed) would be served stale from the cache.
    """
    stats = {}
    for key in FILE_KEYS:  # the datalist keys holding files whose content the cached result depends on
        if isinstance(item.get(key), (str, os.PathLike)) and os.path.isfile(item[key]):
            status = os.stat(item[key])
            stats[key] = (status.st_size, status.st_mtime_ns)
    return pickle_hashing({"item": dict(item), "files": stats})


def _size_text(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"  # not reached


def _entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"


def cache_usage(cache_dir: str | os.PathLike) -> tuple[int, int]:
    """(number of cache entries, their total size in bytes) of a disk cache folder; (0, 0) when it is missing."""
    count = size = 0
    try:
        with os.scandir(cache_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".pt") and entry.is_file():
                    count += 1
                    size += entry.stat().st_size
    except OSError:
        pass
    return count, size


def _free_bytes(folder: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


# cache folder -> (entries, bytes) when this process first opened it; the end-of-run report compares with them.
_OPENED: dict[str, tuple[int, int]] = {}
_REPORTER_PID: list[int] = []


def _report_cache_growth() -> None:
    """At the end of the run (atexit, main process only): each disk cache the run added to, with its size."""
    if not _REPORTER_PID or _REPORTER_PID[0] != os.getpid():
        return
    for folder, (count_before, size_before) in _OPENED.items():
        count, size = cache_usage(folder)
        if count > count_before:
            logger.info("cache: %s now holds %s, %s (%d new, %s); delete it freely (rebuilt when needed), "
                        "or run with --cache memory / --cache none to keep nothing on disk", folder, _entries(count),
                        _size_text(size), count - count_before, _size_text(size - size_before))


def _register(folder: Path, n_items: int) -> None:
    """Log the cache's place and size when a dataset opens it; warn when the disk looks too small for it."""
    key = str(folder.absolute())
    count, size = cache_usage(folder)
    if key not in _OPENED:
        _OPENED[key] = (count, size)
    if not _REPORTER_PID:
        _REPORTER_PID.append(os.getpid())
        atexit.register(_report_cache_growth)
    free = _free_bytes(folder)
    logger.info("cache (disk): %s: %s, %s, for %d items; %s free on its disk (delete it freely; --cache "
                "memory or none keeps nothing on disk)", key, _entries(count), _size_text(size), n_items,
                _size_text(free) if free is not None else "unknown")
    if count and free is not None:
        needed = size / count * max(0, n_items - count)
        if needed > free:
            logger.warning("cache (disk): %s: about %s more needed for %d items but %s free; %s", key,
                           _size_text(needed), n_items, _size_text(free), CACHE_HINT)


class _DiskCache(PersistentDataset):
    """``PersistentDataset`` that goes on without caching when the disk is full (one warning naming the folder and
    ``--cache memory`` / ``none``), and warns once, after its first new entry, when the free space looks too small
    for the entries still to come."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._disk_full = False
        self._space_checked = False

    def _hashfile(self, item: Any) -> Path:
        return self.cache_dir / f"{self.hash_func(item).decode('utf-8')}{self.transform_hash}.pt"

    _UNREADABLE = object()

    def _read_entry(self, hashfile: Path) -> Any:
        """The cached item in ``hashfile``; an entry ``torch.load`` cannot read (truncated by a crash or a full
        disk, garbage, a pickle that ``weights_only`` refuses) is deleted with a warning and ``_UNREADABLE`` returned,
        so that it is rebuilt. (MONAI itself rebuilds only an entry with a bad magic number or an unpickling error
        and fails on the rest, e.g. a truncated zip.)"""
        try:
            return torch.load(hashfile, weights_only=self.weights_only)
        except PermissionError:
            raise
        except Exception as exc:  # noqa: BLE001 -- whatever makes the entry unreadable, it is rebuilt
            text = str(exc).strip()
            logger.warning("cache (disk): %s: unreadable entry, rebuilt (%s%s)", hashfile, type(exc).__name__,
                           f": {text.splitlines()[0][:200]}" if text else "")
            hashfile.unlink(missing_ok=True)
            return self._UNREADABLE

    def _cachecheck(self, item_transformed):
        hashfile = self._hashfile(item_transformed)
        if hashfile.is_file():
            entry = self._read_entry(hashfile)
            if entry is not self._UNREADABLE:
                return entry
        if self._disk_full and not hashfile.is_file():
            return self._pre_transform(deepcopy(item_transformed))
        new = not hashfile.is_file()
        try:
            result = super()._cachecheck(item_transformed)
        except (OSError, RuntimeError) as exc:
            if not is_disk_full(exc):
                raise
            self._disk_full = True
            logger.warning("cache (disk): %s: disk full, items are no longer cached (%s); free some space, or %s",
                           self.cache_dir, str(exc).strip().splitlines()[0][:200], CACHE_HINT)
            return self._pre_transform(deepcopy(item_transformed))
        if new and not self._space_checked and hashfile.is_file():
            self._space_checked = True
            self._check_space(hashfile.stat().st_size)
        return result

    def _check_space(self, entry_bytes: int) -> None:
        count, _ = cache_usage(self.cache_dir)
        needed = entry_bytes * max(0, len(self.data) - count)
        free = _free_bytes(self.cache_dir)
        if free is not None and needed > free:
            logger.warning("cache (disk): %s: the %d items still to cache need about %s (%s each) but %s is free; %s",
                           self.cache_dir, len(self.data) - count, _size_text(needed), _size_text(entry_bytes),
                           _size_text(free), CACHE_HINT)


def make_cached_dataset(
    data: Sequence[Mapping], transform: Compose, cache_dir: str | Path | None = None, cache: str = "disk"
) -> Dataset:
    """A dataset of ``data`` through ``transform`` that computes the deterministic part once per item.

    ``cache`` chooses where that part is kept:

    - ``"disk"``: a ``PersistentDataset`` in ``cache_dir`` (the default: full-resolution mammograms rarely fit in
      memory). Everything up to the first random transform is stored (exact: float32 image, bool masks, with the
      MetaTensor meta data), except trailing ``EnsureTyped``/``CastToTyped`` casts, which run after reading the
      cache (also those before a trailing ``DeleteItemsd`` of other keys, see :func:`_defer_trailing_casts`).
      The file name hashes the item with its files' size and time (:func:`item_fingerprint`) and
      :func:`transform_fingerprint` of the cached transforms, so a rewritten file or a changed preprocessing
      parameter (e.g. the window size) gives new entries. Files are read back with
      ``weights_only=True`` (see :func:`allow_cached_meta`).
    - ``"memory"``: a ``CacheDataset`` filled as items are first read (``runtime_cache``), so a bad image
      fails in ``__getitem__`` where ``glam_bundle.data.failures.SkipBadCases`` can report it, not while the
      dataset is built. About 23 MB of RAM per 2944×1920 image.
    - ``"none"``: a plain ``Dataset``.

    The disk cache logs its folder, entries, size and the disk's free space when the dataset is created, and at the
    end of a run that added entries, its new size; it warns (suggesting ``--cache memory`` or ``--cache none``)
    when the free space looks too small for the items still to cache, and when the disk is full it goes on
    without caching. A bad ``cache`` or ``cache_dir`` is a :class:`glam_bundle.errors.ConfigError` (one line).
    """
    if cache not in CACHE_MODES:
        raise ConfigError("cache", repr(cache), f"the cache must be one of {', '.join(CACHE_MODES)} (disk: a folder, --cache_dir; "
                                                "memory: RAM; none: no cache)")
    if cache == "none":
        return Dataset(data=data, transform=transform)
    if cache == "memory":
        return CacheDataset(data=data, transform=transform, runtime_cache=True, progress=False)
    if cache_dir is None:
        raise ConfigError("cache_dir", None, "--cache disk needs a cache folder; give --cache_dir <folder>, or --cache "
                                             "memory / none")
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError("cache_dir", cache_dir, f"a file, not a folder; give a folder for the disk cache, or {CACHE_HINT}")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("cache_dir", cache_dir, f"cannot create the cache folder ({exc.strerror or exc}); give a "
                                                  f"writable --cache_dir, or {CACHE_HINT}") from None
    allow_cached_meta()
    transforms = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    first_random = next(
        (i for i, t in enumerate(transforms) if isinstance(t, RandomizableTrait) or not isinstance(t, Transform)),
        len(transforms),
    )
    head, casts = _defer_trailing_casts(transforms[:first_random])
    tail = casts + transforms[first_random:]
    chain = Compose(head + ([_AfterCache(tail)] if tail else []))
    _register(cache_dir, len(data))
    return _DiskCache(
        data=data,
        transform=chain,
        cache_dir=cache_dir,
        hash_func=item_fingerprint,
        hash_transform=transform_fingerprint,
        track_meta=True,
    )
