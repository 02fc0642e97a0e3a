"""Ignite/MONAI engines of the bundle and the output transforms that read their outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from glam_bundle.constants import FAILURES_KEY


class SkipFailedCasesMixin:
    """Go on past bad cases in a MONAI workflow.

    Batches come from ``glam_bundle.data.failures.collate_skip_failures``: the failure records of a batch (under
    "failures") are appended to ``engine.state.failures`` (a list of {"image", "error"} dicts) and a batch in
    which every case failed is skipped: its output is an empty dict and no model events fire. Handlers that
    read outputs must accept the empty dict (the bundle's metric handlers and ``loss_from_output`` do).
    Batch keys named in ``output_batch_keys`` (e.g. "mask") are copied into the output so that metric
    handlers can read them next to "pred".
    """

    output_batch_keys: Sequence[str] = ()

    def _init_failure_tracking(self, output_batch_keys: Sequence[str]) -> None:
        self.output_batch_keys = tuple(output_batch_keys)
        self.state.failures = []
        self.add_event_handler(Events.STARTED, self._reset_failures)

    @staticmethod
    def _reset_failures(engine: Engine) -> None:
        engine.state.failures = []

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict:
        if isinstance(batchdata, dict) and FAILURES_KEY in batchdata:
            batchdata = dict(batchdata)
            engine.state.failures.extend(batchdata.pop(FAILURES_KEY))
            if "image" not in batchdata:
                return {}
        output = super()._iteration(engine, batchdata)  # type: ignore[misc]
        for key in self.output_batch_keys:
            if key in batchdata:
                output[key] = batchdata[key].to(engine.state.device)
        return output


class GLAMEvaluator(SkipFailedCasesMixin, SupervisedEvaluator):
    """``SupervisedEvaluator`` that skips bad cases (see ``SkipFailedCasesMixin``).

    Args:
        output_batch_keys: batch keys copied into ``engine.state.output`` (e.g. ["mask"] for localisation
            metrics).
        *args, **kwargs: those of ``SupervisedEvaluator``.
    """

    def __init__(self, *args: Any, output_batch_keys: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_failure_tracking(output_batch_keys)


class GLAMTrainer(SkipFailedCasesMixin, SupervisedTrainer):
    """``SupervisedTrainer`` that skips bad cases (see ``SkipFailedCasesMixin``); the loss function receives the
    network's whole output dict and the label batch (N, 2).

    Args:
        output_batch_keys: batch keys copied into ``engine.state.output``.
        *args, **kwargs: those of ``SupervisedTrainer``.
    """

    def __init__(self, *args: Any, output_batch_keys: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_failure_tracking(output_batch_keys)


def from_glam_output(pred_key: str, target_key: str = "label") -> Callable[[dict], tuple]:
    """Output transform for metric handlers: ``(output["pred"][pred_key], output[target_key])``, e.g.
    ``from_glam_output("saliency", "mask")`` or ``from_glam_output("y_global", "label")``."""

    def transform(output: dict) -> tuple:
        return output["pred"][pred_key], output[target_key]

    return transform


def loss_from_output(output: dict) -> float | None:
    """Scalar loss of a trainer iteration for StatsHandler/TensorBoardStatsHandler; None for a skipped batch."""
    return float(output["loss"].detach()) if output and "loss" in output else None
