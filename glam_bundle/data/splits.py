"""Splitting datalist items into training/validation/test, by patient or by the dataset's own split."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from glam_bundle.constants import SPLITS
from glam_bundle.data.datalist import _SPLIT_ALIASES

__all__ = ["DEFAULT_FRACTIONS", "patient_level_split", "split_items"]

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"training": 0.7, "validation": 0.1, "test": 0.2}


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
