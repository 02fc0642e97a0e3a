"""Ignite/MONAI engines of the bundle and the output transforms that read their outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from torch.utils.data import DistributedSampler

from glam_bundle.constants import FAILURES_KEY
from glam_bundle.data.samplers import seed_epoch
from glam_bundle.precision import (
    AutocastInferer,
    describe,
    resolve_autocast,
    resolve_channels_last,
    to_channels_last,
)

logger = logging.getLogger(__name__)


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
    """``SupervisedEvaluator`` that skips bad cases (see ``SkipFailedCasesMixin``) and runs each iteration under
    ``torch.inference_mode`` and the network under the autocast of ``precision``.

    Args:
        output_batch_keys: batch keys copied into ``engine.state.output`` (e.g. ["mask"] for localisation
            metrics).
        precision: "float32" (default: no autocast), "bfloat16", "float16" (GPU) or "auto" (see
            ``glam_bundle.precision``). With reduced precision the network runs under ``torch.autocast`` and its
            floating-point outputs are returned in float32; MONAI's ``amp`` is then ignored.
        inference_mode: run the iteration (batch preparation, network, postprocessing) under
            ``torch.inference_mode`` rather than only ``torch.no_grad`` (default True).
        channels_last: run the network with its weights and input in ``torch.channels_last``: True, False or
            "auto" (default: with reduced precision only, where it helps; ``glam_bundle.precision``).
        *args, **kwargs: those of ``SupervisedEvaluator``.
    """

    def __init__(
        self,
        *args: Any,
        output_batch_keys: Sequence[str] = (),
        precision: str = "float32",
        inference_mode: bool = True,
        channels_last: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_failure_tracking(output_batch_keys)
        self.precision = str(precision)
        self.inference_mode = bool(inference_mode)
        self.autocast = resolve_autocast(self.state.device, self.precision)
        self.channels_last = resolve_channels_last(self.state.device, self.precision, channels_last)
        if self.channels_last:
            to_channels_last(self.network)
        if self.autocast["enabled"] or self.channels_last:
            self.amp = self.amp and not self.autocast["enabled"]  # our autocast replaces MONAI's CUDA-only one
            self.inferer = AutocastInferer(self.inferer, self.autocast, channels_last=self.channels_last)
        self._precision_note = describe(self.state.device, self.precision)
        if self.channels_last:
            self._precision_note += ", channels_last"
        self.add_event_handler(Events.STARTED, self._log_precision)

    def _log_precision(self, engine: Engine) -> None:
        logger.info("%s; inference_mode %s", self._precision_note, self.inference_mode)

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict:
        with torch.inference_mode(self.inference_mode):
            return super()._iteration(engine, batchdata)


class GLAMTrainer(SkipFailedCasesMixin, SupervisedTrainer):
    """``SupervisedTrainer`` that skips bad cases (see ``SkipFailedCasesMixin``); the loss function receives the
    network's whole output dict and the label batch (N, 2).

    At each ``EPOCH_STARTED``, before ignite creates the epoch's data loader iterator (and before the handlers in
    ``train_handlers`` see the event), the trainer

    - seeds the epoch's randomness from ``(epoch_seed, epoch)`` when ``epoch_seed`` is set
      (``glam_bundle.data.samplers.seed_epoch``: random, numpy, torch, the dataset's random transforms, the
      loader's generator), so that a run resumed at an epoch boundary trains exactly as an uninterrupted one;
    - calls ``set_epoch(engine.state.epoch)`` (1-based) on the loader's sampler when it has one, e.g.
      ``glam_bundle.data.samplers.ClassBalancedSampler`` (MONAI's ``Workflow`` already does it for a
      ``DistributedSampler``, which is left to it).

    Args:
        output_batch_keys: batch keys copied into ``engine.state.output``.
        epoch_seed: seed of the per-epoch randomness (None: not reseeded, the RNGs run on across epochs).
        *args, **kwargs: those of ``SupervisedTrainer``.
    """

    def __init__(
        self, *args: Any, output_batch_keys: Sequence[str] = (), epoch_seed: int | None = None, **kwargs: Any
    ) -> None:
        # MONAI attaches train_handlers at the end of Workflow.__init__; hold them back so that the epoch seeding
        # and the sampler's set_epoch run before any handler's EPOCH_STARTED (as MONAI's DistributedSampler hook).
        train_handlers = kwargs.pop("train_handlers", None)
        super().__init__(*args, **kwargs)
        self.epoch_seed = None if epoch_seed is None else int(epoch_seed)
        if self.epoch_seed is not None:
            self.add_event_handler(Events.EPOCH_STARTED, self._seed_epoch)
            if getattr(self.data_loader, "persistent_workers", False):
                logger.warning(
                    "epoch_seed: the data loader keeps its workers between epochs (persistent_workers=True), so "
                    "their random transforms are not reseeded each epoch and a resumed run will differ"
                )
        sampler = getattr(self.data_loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)) and not isinstance(sampler, DistributedSampler):
            self.add_event_handler(Events.EPOCH_STARTED, self._set_sampler_epoch)
        if train_handlers is not None:
            self._register_handlers(train_handlers)
        self._init_failure_tracking(output_batch_keys)

    def _seed_epoch(self, engine: Engine) -> None:
        seed_epoch(
            self.epoch_seed,  # type: ignore[arg-type]
            engine.state.epoch,
            dataset=getattr(self.data_loader, "dataset", None),
            generator=getattr(self.data_loader, "generator", None),
        )

    def _set_sampler_epoch(self, engine: Engine) -> None:
        self.data_loader.sampler.set_epoch(engine.state.epoch)


def from_glam_output(pred_key: str, target_key: str = "label") -> Callable[[dict], tuple]:
    """Output transform for metric handlers: ``(output["pred"][pred_key], output[target_key])``, e.g.
    ``from_glam_output("saliency", "mask")`` or ``from_glam_output("y_global", "label")``."""

    def transform(output: dict) -> tuple:
        return output["pred"][pred_key], output[target_key]

    return transform


def loss_from_output(output: dict) -> float | None:
    """Scalar loss of a trainer iteration for StatsHandler/TensorBoardStatsHandler; None for a skipped batch."""
    return float(output["loss"].detach()) if output and "loss" in output else None

