"""Helpers for running the bundle's inference and evaluation under ``torchrun`` (``configs/multi_gpu_inference.json``,
``configs/multi_gpu_evaluate.json``; see docs/performance.md, "Scale out").

Every helper is a no-op in a single process (no initialised ``torch.distributed`` process group), so the handlers
that use them behave exactly as before there.

- :func:`is_distributed`, :func:`get_rank`, :func:`get_world_size`, :func:`barrier`.
- :func:`all_gather_objects`: one picklable object per rank, gathered in rank order on every rank.
- :func:`check_every_rank_has_items`: the clear error when a run has fewer images than processes.
- :class:`DistributedFailureReporter`: the skipped cases of every rank in one CSV file, written by rank 0.

The metrics need nothing here: MONAI's ``Cumulative`` buffers (behind every metric of :mod:`glam_bundle.metrics`)
already gather their per-image values / histograms across ranks with ``evenly_divisible_all_gather`` when they
are aggregated, so every rank computes the metrics over all images.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine

from glam_bundle.data.failures import write_failures_csv
from glam_bundle.errors import AllCasesFailedError

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_gather_objects",
    "check_every_rank_has_items",
    "DistributedFailureReporter",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` in a single process). A collective: every rank must
    call it, in the same order."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def check_every_rank_has_items(num_items: int) -> int:
    """Raise a ``ValueError`` naming both numbers when ``num_items`` (the whole datalist) is smaller than the number
    of processes: a rank without an image would wait forever for the others in the metric and merge collectives.
    Every rank sees the same datalist, so every rank raises. Returns ``num_items``."""
    world_size = get_world_size()
    if num_items < world_size:
        raise ValueError(f"{num_items} images for {world_size} processes: run with --nproc_per_node (x nodes) "
                         f"at most {num_items}, or without torchrun.")
    return num_items


# Imported here, after the helpers: glam_bundle.handlers imports them (a cycle that this order makes safe).
from glam_bundle.handlers.failure_reporter import FailureReporter  # noqa: E402


class DistributedFailureReporter(FailureReporter):
    """:class:`~glam_bundle.handlers.FailureReporter` for a run under ``torchrun``: the skipped cases of every
    rank are gathered (rank order) and rank 0 writes them to ``output_file``, atomically; every rank ends the run
    with :class:`~glam_bundle.errors.AllCasesFailedError` only when the epoch failed on every rank (no rank got
    an output). In a single process it is the plain ``FailureReporter``."""

    def __call__(self, engine: Engine) -> None:
        if not is_distributed():
            super().__call__(engine)
            return
        local = list(getattr(engine.state, "failures", []))
        gathered = all_gather_objects((local, local[self._failures_before_epoch:], self._epoch_outputs))
        failures = [f for part, _, _ in gathered for f in part]
        epoch_failures = [f for _, part, _ in gathered for f in part]
        epoch_outputs = sum(outputs for _, _, outputs in gathered)
        if get_rank() == 0:
            write_failures_csv(failures, self.output_file)
            if failures:
                logger.warning("%d case(s) skipped so far, listed in %s", len(failures), self.output_file)
        if epoch_failures and not epoch_outputs:
            raise AllCasesFailedError(len(epoch_failures), self.output_file, epoch_failures[0], what=self.what)
