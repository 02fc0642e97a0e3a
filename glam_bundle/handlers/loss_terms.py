"""Handler logging the terms of a GLAM loss (``loss.terms``) to TensorBoard and to the log."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from glam_bundle.handlers.summary_writer import LazySummaryWriter

__all__ = ["LossTermsLogger"]

logger = logging.getLogger(__name__)


class LossTermsLogger(LazySummaryWriter):
    """Ignite handler writing the terms of the training loss of each iteration to TensorBoard and their epoch
    means to the log.

    The losses of ``glam_bundle.losses`` keep the terms of their last call in ``loss.terms`` (a dict of floats,
    e.g. ``bce_s0``, ``bce_s1``, ``bce_s2``, ``l1``, ``sparsity``, ``total`` for ``GlobalModuleLoss``). Attach
    this handler to the trainer (``train_handlers``): at ITERATION_COMPLETED it reads them and writes every
    ``interval``-th iteration under ``<tag>/<term>`` with global step ``engine.state.iteration``; at
    EPOCH_COMPLETED it logs the mean of each term over the epoch's iterations through ``logging`` (logger
    ``glam_bundle.handlers.loss_terms``, level INFO). An iteration whose batch was skipped (output ``{}``) or
    whose loss was not called (the terms are those already seen) counts nowhere.

    Args:
        loss: the loss object given to the trainer (anything with a ``terms`` dict).
        log_dir: TensorBoard folder; ignored when ``summary_writer`` is given.
        tag: tag prefix.
        interval: write to TensorBoard every ``interval`` iterations (the epoch means use all iterations).
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` to share; None: one is made on ``log_dir``
            at the first write.
    """

    def __init__(
        self,
        loss: Any,
        log_dir: str | Path = "./runs",
        tag: str = "train_loss_terms",
        interval: int = 1,
        summary_writer: Any = None,
    ) -> None:
        if not hasattr(loss, "terms"):
            raise TypeError(f"{type(loss).__name__} has no 'terms'; use a loss from glam_bundle.losses")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.loss = loss
        self.log_dir = str(log_dir)
        self.tag = tag.rstrip("/")
        self.interval = int(interval)
        self._init_writer(summary_writer)
        self._last: Any = None
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.sums, self.counts = {}, {}

    def iteration_completed(self, engine: Engine) -> None:
        if not engine.state.output:  # skipped batch: every case failed
            return
        terms = self.loss.terms
        if not terms or terms is self._last:  # the loss was not called in this iteration
            return
        self._last = terms
        for name, value in terms.items():
            if math.isfinite(value):
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1
        if engine.state.iteration % self.interval == 0:
            for name, value in terms.items():
                self.writer.add_scalar(f"{self.tag}/{name}", value, engine.state.iteration)

    def epoch_means(self) -> dict[str, float]:
        """Mean of each term over the iterations of the current epoch (finite values only)."""
        return {name: self.sums[name] / self.counts[name] for name in self.sums}

    def epoch_completed(self, engine: Engine) -> None:
        means = self.epoch_means()
        if means:
            text = ", ".join(f"{name} {value:.5g}" for name, value in means.items())
            logger.info("Epoch[%d] loss terms (mean of %d iterations): %s", engine.state.epoch,
                        max(self.counts.values()), text)
        self.flush()

    def completed(self, engine: Engine) -> None:
        self.flush()
