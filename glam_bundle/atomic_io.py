"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves the old one.

``atomic_output`` is the one helper; ``write_csv``, ``write_text_atomic`` and ``save_png_atomic`` are built on it.
"""

from __future__ import annotations

import csv
import glob
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["atomic_output", "remove_stale_temporaries", "write_csv", "write_text_atomic", "save_png_atomic"]


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` that replaces ``path`` only when the block succeeds.

    The temporary name keeps the full suffix (e.g. ``.nii.gz``) so writers that pick the format from the
    file name work; on error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_output` left next to ``path`` when its process was killed
    mid-write (``.<stem>.<random><suffix>``; never read, only in the way). Call it where one process owns
    ``path``, before writing it again. Returns the files removed."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    removed = []
    for stale in path.parent.glob(f".{glob.escape(path.stem)}.*{glob.escape(suffix)}"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def write_csv(path: str | Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows (dicts keyed by ``columns``; other keys ignored) to a CSV file atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` as UTF-8 to ``path``, atomically (parent folders are created)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
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
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
