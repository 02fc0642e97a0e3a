"""Per-epoch sampling of the training set and per-epoch randomness.

The paper trains on a class-balanced subset that changes every epoch (section 4.1: "at each epoch we use all exams
with lesions and an equal number of randomly-sampled exams without lesions"): :class:`ClassBalancedSampler`.

Every random draw of an epoch is a function of ``(seed, epoch)`` only, so a run killed mid-epoch and resumed from
its last end-of-epoch checkpoint (``glam_bundle.handlers.ResumeCheckpoint``) trains exactly as an uninterrupted one:

- :func:`derive_seed` turns ``(seed, epoch, stream)`` into independent 32-bit seeds;
- :class:`ClassBalancedSampler` draws its subset and order from its own ``torch.Generator`` seeded by
  ``(seed, epoch)`` (set with ``set_epoch``, as ``DistributedSampler``); it needs no state in a checkpoint;
- :func:`seed_epoch` seeds ``random``, numpy, torch (CPU and CUDA), the random transforms of a dataset and a data
  loader's own generator from ``(seed, epoch)``; ``glam_bundle.engines.GLAMTrainer(epoch_seed=...)`` calls it at
  each epoch start, before the epoch's data loader iterator exists.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data.utils import set_rnd
from torch.utils.data import Sampler

from glam_bundle.constants import CLASS_NAMES, IMAGE_KEY

__all__ = ["ClassBalancedSampler", "derive_seed", "seed_epoch", "datalist_items", "item_is_positive"]

logger = logging.getLogger(__name__)

# Independent random streams drawn from the same (seed, epoch).
SAMPLER_STREAM = 0
GLOBAL_STREAM = 1
TRANSFORM_STREAM = 2
LOADER_STREAM = 3


def derive_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 32-bit seed that depends on ``(seed, epoch, stream)`` only (numpy's ``SeedSequence`` hashing).

    Nearby seeds and epochs give unrelated streams (unlike ``seed + epoch``), and ``stream`` separates the users of
    one ``(seed, epoch)`` (sampler, global RNGs, transforms, loader generator).
    """
    if int(seed) < 0 or int(epoch) < 0 or int(stream) < 0:
        raise ValueError(f"seed, epoch and stream must be >= 0, got {seed}, {epoch}, {stream}")
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int, dataset: Any = None, generator: torch.Generator | None = None) -> int:
    """Seed everything an epoch draws from, as a function of ``(seed, epoch)`` only.

    - ``random``, ``numpy.random`` and torch (CPU and every CUDA device): the network's own randomness (e.g. GLAM's
      random patches of negative images), ``RandomSampler`` and the base seed that a data loader iterator draws
      for its workers when it is created (MONAI's ``worker_init_fn`` seeds each worker's transforms from it);
    - the random transforms of ``dataset`` (``monai.data.utils.set_rnd``): those that run in the main process
      when ``num_workers=0``;
    - ``generator``: a data loader's own ``generator``, when it has one (then workers' base seeds come from it).

    Call it before the epoch's data loader iterator is created (``GLAMTrainer`` does, at ``EPOCH_STARTED``).

    Returns:
        the seed given to ``random``/numpy/torch.
    """
    value = derive_seed(seed, epoch, GLOBAL_STREAM)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds all CUDA devices
    if dataset is not None:
        set_rnd(dataset, derive_seed(seed, epoch, TRANSFORM_STREAM))
    if generator is not None:
        generator.manual_seed(derive_seed(seed, epoch, LOADER_STREAM))
    return value


def wrapped_datasets(dataset: Any) -> Iterator[Any]:
    """``dataset`` and the datasets behind its ``.dataset`` wrappers (e.g. ``SkipBadCases``), outermost first, each
    once (a wrapper cycle ends the walk)."""
    current, seen = dataset, set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "dataset", None)


def datalist_items(dataset: Any) -> Sequence[Mapping]:
    """The datalist items behind a training dataset.

    Accepts a list of items or a dataset: ``.dataset`` attributes are unwrapped (e.g. ``SkipBadCases``) until one
    object has ``.data`` (MONAI's ``Dataset``, ``CacheDataset``, ``PersistentDataset``).
    """
    for current in wrapped_datasets(dataset):
        if isinstance(current, Sequence) and not isinstance(current, (str, bytes)):
            return current
        data = getattr(current, "data", None)
        if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            return data
    raise TypeError(
        f"cannot find the datalist items of {type(dataset).__name__}: expected a list of items or a dataset that "
        "has (possibly behind '.dataset' wrappers) a '.data' list, as MONAI's datasets"
    )


def _label_value(value: Any) -> float | None:
    """A class label as 0/1 (float), ``None`` when unknown (missing, ``None`` or negative)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.item()
    value = float(value)
    if math.isnan(value) or value < 0:
        return None
    return value


def item_is_positive(item: Mapping, class_names: Sequence[str] = CLASS_NAMES) -> bool | None:
    """True when any class of ``item`` is 1, False when every class is known and 0, None when unknown."""
    values = [_label_value(item.get(name)) for name in class_names]
    if any(v is not None and v > 0 for v in values):
        return True
    if all(v is not None for v in values):
        return False
    return None


def _describe_item(item: Any, index: int) -> str:
    if isinstance(item, Mapping) and IMAGE_KEY in item:
        image = item[IMAGE_KEY]
        if isinstance(image, (str, os.PathLike)):
            return f"item {index} ({os.fspath(image)})"
    return f"item {index}"


class ClassBalancedSampler(Sampler[int]):
    """All positive items and as many randomly chosen negative items, anew each epoch (paper section 4.1).

    A positive item has a class key (``"benign"``, ``"malignant"``) equal to 1; a negative one has every class key
    known and 0. Each epoch uses every positive index and ``min(#positives, #negatives)`` negative indices drawn
    without replacement, in a shuffled order; both are a function of ``(seed, epoch)`` only (the sampler's own
    ``torch.Generator``), so nothing needs saving to resume. Call :meth:`set_epoch` at each epoch start, as for
    ``DistributedSampler``: ``glam_bundle.engines.GLAMTrainer`` does (with ``engine.state.epoch``, 1-based, as
    MONAI does for ``DistributedSampler``). When the items are all positive or all negative, every item is used
    (shuffled), with a warning.

    Labels are read on the first ``__iter__``/``__len__`` (and again when the number of items changes). An item
    whose label is unknown (missing key, ``None`` or -1) is an error: training needs labels.

    Distributed training: each of ``num_replicas`` ranks gets a disjoint shard of equal length (the epoch's list is
    padded by repeating it, or truncated with ``drop_last``, as ``DistributedSampler``), so this sampler replaces
    ``DistributedSampler`` under DDP. ``num_replicas``/``rank`` default to ``torch.distributed``'s when it is
    initialised, else 1/0.

    Args:
        dataset: the training dataset (e.g. ``SkipBadCases(make_cached_dataset(data=items, ...))``) or a list of
            datalist items; see :func:`datalist_items`.
        seed: the seed of every epoch's draw.
        num_replicas: number of distributed ranks.
        rank: this process's rank.
        drop_last: drop the tail of the epoch's list so it divides evenly across ranks instead of padding it.
        class_names: the label keys (default ``glam_bundle.constants.CLASS_NAMES``).
    """

    def __init__(
        self,
        dataset: Any,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.class_names = tuple(class_names)
        self.epoch = 0
        self._positives: list[int] | None = None
        self._negatives: list[int] | None = None
        self._num_items = -1
        self._warned_one_class = False
        self._last_iterated_epoch: int | None = None
        self._warned_same_epoch = False

    def set_epoch(self, epoch: int) -> None:
        """Use the draw of ``epoch`` from the next ``__iter__`` on."""
        self.epoch = int(epoch)

    def _classify(self) -> tuple[list[int], list[int]]:
        items = datalist_items(self.dataset)
        if self._positives is not None and len(items) == self._num_items:
            return self._positives, self._negatives  # type: ignore[return-value]
        positives, negatives, unknown = [], [], []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise TypeError(f"ClassBalancedSampler: {_describe_item(item, index)} is not a dict: {item!r}")
            try:
                positive = item_is_positive(item, self.class_names)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"ClassBalancedSampler: {_describe_item(item, index)} has a label that is not a number: {exc}"
                ) from exc
            if positive is None:
                unknown.append(_describe_item(item, index))
            else:
                (positives if positive else negatives).append(index)
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ValueError(
                f"ClassBalancedSampler: {len(unknown)} training item(s) with an unknown label: {shown}. Every training "
                f"item needs {' and '.join(repr(c) for c in self.class_names)} set to 0 or 1 (missing, null or -1 "
                "means unknown); fix the datalist or drop these items from its training split."
            )
        self._positives, self._negatives, self._num_items = positives, negatives, len(items)
        return positives, negatives

    @property
    def num_positives(self) -> int:
        return len(self._classify()[0])

    @property
    def num_negatives(self) -> int:
        return len(self._classify()[1])

    def _epoch_size(self) -> int:
        positives, negatives = self._classify()
        if not positives or not negatives:
            return len(positives) + len(negatives)
        return len(positives) + min(len(positives), len(negatives))

    def __len__(self) -> int:
        """Indices this rank yields per epoch."""
        total = self._epoch_size()
        if self.drop_last:
            return total // self.num_replicas
        return math.ceil(total / self.num_replicas)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """The whole (all ranks) shuffled list of dataset indices of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        positives, negatives = self._classify()
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.seed, epoch, SAMPLER_STREAM))
        if positives and negatives:
            count = min(len(positives), len(negatives))
            chosen = torch.randperm(len(negatives), generator=generator)[:count].tolist()
            indices = positives + [negatives[i] for i in chosen]
        else:
            if not self._warned_one_class and (positives or negatives):
                logger.warning(
                    "ClassBalancedSampler: the training items are all %s (%d); every item is used each epoch",
                    "positive" if positives else "negative", len(positives) + len(negatives),
                )
                self._warned_one_class = True
            indices = positives + negatives
        order = torch.randperm(len(indices), generator=generator).tolist()
        return [indices[i] for i in order]

    def __iter__(self) -> Iterator[int]:
        if self._last_iterated_epoch == self.epoch and not self._warned_same_epoch:
            logger.warning(
                "ClassBalancedSampler iterated twice with epoch %d: set_epoch is not being called, so every epoch "
                "uses the same negatives (use glam_bundle.engines.GLAMTrainer, or call set_epoch each epoch)",
                self.epoch,
            )
            self._warned_same_epoch = True
        self._last_iterated_epoch = self.epoch
        indices = self.epoch_indices()
        if not indices:
            return iter([])
        if self.drop_last:
            total = (len(indices) // self.num_replicas) * self.num_replicas
            indices = indices[:total]
        else:
            total = math.ceil(len(indices) / self.num_replicas) * self.num_replicas
            padding = total - len(indices)
            if padding:
                indices = indices + (indices * math.ceil(padding / len(indices)))[:padding]
        return iter(indices[self.rank : total : self.num_replicas])
