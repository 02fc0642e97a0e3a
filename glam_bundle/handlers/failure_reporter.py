"""Handler writing the cases a workflow skipped (unreadable or corrupt images) to a CSV file."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, Events

from glam_bundle.data.failures import write_failures_csv

__all__ = ["FailureReporter"]

logger = logging.getLogger(__name__)


class FailureReporter:
    """Write the cases an engine skipped (``engine.state.failures``, filled by the bundle's engines, see
    ``glam_bundle.engines.SkipFailedCasesMixin``) to a CSV file (columns image, error) at the end of every
    epoch and of the run, atomically, and log how many there were.

    Args:
        output_file: the CSV file, e.g. ``<output_dir>/train_failures.csv``.
    """

    def __init__(self, output_file: str | Path) -> None:
        self.output_file = Path(output_file)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        failures = list(getattr(engine.state, "failures", []))
        write_failures_csv(failures, self.output_file)
        if failures:
            logger.warning("%d case(s) skipped so far, listed in %s", len(failures), self.output_file)
