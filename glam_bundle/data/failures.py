"""Keep an epoch (or a batch inference job) going past cases whose files cannot be used.

``SkipBadCases`` turns an exception raised while loading one item into a small failure record that
travels through DataLoader workers like any item; ``collate_skip_failures`` separates those records from
the good items; ``write_failures_csv`` writes them out for the user.

Typical use::

    dataset = SkipBadCases(monai.data.Dataset(datalist, transform))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_skip_failures)
    for batch in loader:
        failures.extend(batch["failures"])
        if "image" not in batch:  # every item of this batch failed
            continue
        ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from monai.data import list_data_collate
from torch.utils.data import Dataset

from glam_bundle.atomic_io import write_csv
from glam_bundle.constants import FAILURES_KEY
from glam_bundle.data.errors import BadInputError

__all__ = ["SkipBadCases", "collate_skip_failures", "write_failures_csv", "failure_message", "is_failure"]

logger = logging.getLogger(__name__)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` followed by its causes (``raise ... from``) / contexts, outermost first, without cycles."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return chain


def failure_message(exc: BaseException) -> str:
    """The message that explains why an item failed.

    MONAI's ``apply_transform`` re-raises any transform error as ``RuntimeError("applying transform ...")``
    from the original one, so the useful message is further down the chain: the first
    :class:`BadInputError` found (its message starts with the file path), else the innermost cause
    as ``"<type>: <message>"``.
    """
    chain = _exception_chain(exc)
    for error in chain:
        if isinstance(error, BadInputError):
            return str(error)
    root = chain[-1]
    return f"{type(root).__name__}: {root}"


def is_failure(item: Any) -> bool:
    """True for a failure record produced by :class:`SkipBadCases`."""
    return isinstance(item, Mapping) and item.get("failed") is True


def _item_image_path(data: Any, index: int) -> str:
    """The ``"image"`` entry of the datalist item behind ``index``, or ``""`` when it cannot be found."""
    try:
        item = data[index]
    except Exception:  # the wrapped dataset may not expose its raw items
        return ""
    if isinstance(item, Mapping):
        return os.fspath(item.get("image", ""))
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return ""


class SkipBadCases(Dataset):
    """Map-style dataset wrapper that returns a failure record instead of raising.

    For an index whose item cannot be produced (bad file, failing transform), ``__getitem__`` returns
    ``{"failed": True, "image": <the datalist item's "image" path>, "error": <message>}``. The record is a
    plain dict of strings, so it crosses DataLoader worker processes (``num_workers > 0``) unchanged; use
    :func:`collate_skip_failures` as the loader's ``collate_fn`` to split it from the good items.

    Args:
        dataset: a map-style dataset, e.g. ``monai.data.Dataset`` or ``PersistentDataset``; the raw datalist
            items are looked up in its ``data`` attribute (MONAI's datasets have one) to name the image.
        log_failures: log a warning for each failed item.
    """

    def __init__(self, dataset: Dataset, log_failures: bool = True):
        self.dataset = dataset
        self.log_failures = log_failures

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except Exception as exc:  # any failure of one case must not end the epoch
            record = {
                "failed": True,
                "image": _item_image_path(getattr(self.dataset, "data", None), index),
                "error": failure_message(exc),
            }
            if self.log_failures:
                logger.warning("skipping case %d (%s): %s", index, record["image"], record["error"])
            return record


def collate_skip_failures(batch: Sequence[Any]) -> dict:
    """DataLoader ``collate_fn``: collate the good items, list the failure records under ``"failures"``.

    Args:
        batch: items from a :class:`SkipBadCases` dataset (dicts, or lists of dicts from multi-sample
            transforms, as accepted by ``monai.data.list_data_collate``).

    Returns:
        the ``list_data_collate`` result of the good items with an extra ``"failures"`` key (a list of the
        failure records, possibly empty); ``{"failures": [...]}`` alone when every item failed.
    """
    failures = [item for item in batch if is_failure(item)]
    good = [item for item in batch if not is_failure(item)]
    if not good:
        return {FAILURES_KEY: failures}
    collated = list_data_collate(good)
    if not isinstance(collated, dict):
        raise TypeError(f"collate_skip_failures needs dict items to add '{FAILURES_KEY}', got {type(collated)}.")
    collated[FAILURES_KEY] = failures
    return collated


def write_failures_csv(failures: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> str:
    """Write failure records to a CSV file with columns ``image,error``, atomically.

    The rows go to a temporary file in the destination folder, which then replaces ``path``, so a reader
    never sees a half-written file.

    Args:
        failures: records with ``"image"`` and ``"error"`` keys (other keys are ignored).
        path: destination CSV; parent folders are created.

    Returns:
        the path written, as a string.
    """
    rows = [{"image": record.get("image", ""), "error": record.get("error", "")} for record in failures]
    return str(write_csv(path, ("image", "error"), rows))
