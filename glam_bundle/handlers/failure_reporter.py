"""Handler writing the cases a workflow skipped (unreadable or corrupt images) to a CSV file."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, Events

from glam_bundle.data.failures import write_failures_csv
from glam_bundle.errors import AllCasesFailedError

__all__ = ["FailureReporter"]

logger = logging.getLogger(__name__)


class FailureReporter:
    """Write the cases an engine skipped (``engine.state.failures``, filled by the bundle's engines, see
    ``glam_bundle.engines.SkipFailedCasesMixin``) to a CSV file (columns image, error) at the end of every
    epoch and of the run, atomically, and log how many there were.

    An epoch in which every case failed (no batch gave an output) ends the run with
    :class:`glam_bundle.errors.AllCasesFailedError` (one line ``error: all N ... failed ...``, exit status 2):
    training or evaluating on nothing would only produce meaningless metrics and checkpoints.

    Args:
        output_file: the CSV file, e.g. ``<output_dir>/train_failures.csv``.
        what: what the cases are, for that message (default "images").
    """

    def __init__(self, output_file: str | Path, what: str = "images") -> None:
        self.output_file = Path(output_file)
        self.what = what
        self._epoch_outputs = 0
        self._failures_before_epoch = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_outputs = 0
        self._failures_before_epoch = len(getattr(engine.state, "failures", []))

    def _iteration_completed(self, engine: Engine) -> None:
        if engine.state.output:  # an empty dict: every case of the batch failed
            self._epoch_outputs += 1

    def __call__(self, engine: Engine) -> None:
        failures = list(getattr(engine.state, "failures", []))
        write_failures_csv(failures, self.output_file)
        if failures:
            logger.warning("%d case(s) skipped so far, listed in %s", len(failures), self.output_file)
        epoch_failures = failures[self._failures_before_epoch:]
        if epoch_failures and not self._epoch_outputs:
            raise AllCasesFailedError(len(epoch_failures), self.output_file, epoch_failures[0], what=self.what)
