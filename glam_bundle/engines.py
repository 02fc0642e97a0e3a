"""Ignite/MONAI engines of the bundle."""

from __future__ import annotations

from typing import Any

from ignite.engine import Events
from monai.engines import SupervisedEvaluator


class GLAMEvaluator(SupervisedEvaluator):
    """SupervisedEvaluator that goes on past bad cases.

    Batches come from ``glam_bundle.data.robust.collate_skip_failures``: the failure records of a batch (under
    "failures") are appended to ``engine.state.failures`` (a list of {"image", "error"} dicts) and a batch in
    which every case failed is skipped (its output is an empty dict, no model events fire). The network's
    dict output is kept whole under "pred".
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state.failures = []
        self.add_event_handler(Events.STARTED, self._reset_failures)

    @staticmethod
    def _reset_failures(engine: SupervisedEvaluator) -> None:
        engine.state.failures = []

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        if isinstance(batchdata, dict) and "failures" in batchdata:
            batchdata = dict(batchdata)
            engine.state.failures.extend(batchdata.pop("failures"))
            if "image" not in batchdata:
                return {}
        return super()._iteration(engine, batchdata)
