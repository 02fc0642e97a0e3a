"""MONAI's ``CheckpointSaver`` with files that appear atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from glam_bundle.atomic_io import atomic_output, remove_stale_temporaries

__all__ = ["AtomicCheckpointSaver"]


class _AtomicDiskSaver(BaseSaveHandler):
    """Saves like the ``_DiskSaver`` it wraps (its folder, its fixed file name if any, rank 0 only) through
    :func:`glam_bundle.atomic_io.atomic_output`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if self.inner.save_on_rank != idist.get_rank():
            return
        path = Path(self.inner.dirname) / (getattr(self.inner, "filename", None) or filename)
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)

    def remove(self, filename: str) -> None:
        self.inner.remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments) whose files -- the best model by the key metric, the final
    and the interval checkpoints -- are written to a temporary file next to the target and renamed over it only
    when complete.

    MONAI turns ignite's atomic saving off (for the permissions of the temporary file), so a training run killed
    while it writes the best model leaves a truncated ``model_global.pt`` that the next stage cannot load
    (found by the fault suite, docs/fault_suite.md). :func:`~glam_bundle.atomic_io.atomic_output` gives the file
    the permissions a plain ``open`` would. Temporary files of a write that was killed are removed when the saver is
    attached to the next run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(checkpoint.save_handler)

    def attach(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint):
                name = getattr(checkpoint.save_handler.inner, "filename", None) if checkpoint is not None else None
                if name:
                    remove_stale_temporaries(Path(self.save_dir) / name)
        super().attach(engine)
