"""Handler drawing the GLAM figure of the first validation cases to TensorBoard after every validation run."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from glam_bundle.handlers.summary_writer import LazySummaryWriter
from glam_bundle.visualize import display_step, downsample, glam_figure

__all__ = ["GLAMTensorBoardImages", "image_names"]

logger = logging.getLogger(__name__)

MAP_KEYS = ("saliency_global", "saliency_local", "saliency")
PREDICTION_KEYS = ("y_global", "y_local", "y_fusion")


def image_names(batch: Mapping[str, Any], size: int) -> list[str]:
    """File names of a collated batch's images (``image.meta["filename_or_obj"]``); "" where unknown."""
    meta = getattr(batch.get("image"), "meta", {}) or {}
    names = meta.get("filename_or_obj", [""] * size)
    names = [str(names)] if isinstance(names, str) else [str(n) for n in names]
    return (names + [""] * size)[:size]


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _stem(path: str) -> str:
    name = Path(path).name
    suffixes = "".join(Path(name).suffixes)
    return (name[: -len(suffixes)] if suffixes else name) or "image"


class GLAMTensorBoardImages(LazySummaryWriter):
    """Ignite handler writing the GLAM figure (:func:`glam_bundle.visualize.glam_figure`) of the first
    ``max_images`` cases of each evaluator run to TensorBoard.

    Attach it to the validation evaluator (``val_handlers``). During the run it keeps a subsampled CPU copy
    of the first ``max_images`` cases (image, ground-truth mask when ``has_mask`` says so, labels, the
    predictions ``y_global``/``y_local``/``y_fusion`` and the maps ``saliency_global``/``saliency_local``/
    ``saliency``, with ``patch_locations``, whichever the network output holds: the global-only stage has
    only S_g and ŷ_g); at EPOCH_COMPLETED it writes one figure per case under ``<tag>/<image stem>`` with
    global step ``engine.state.epoch``, which MONAI's ``Evaluator.run(global_epoch)`` sets to the trainer's
    epoch when ``ValidationHandler`` runs it (a stand-alone evaluation writes step 1). The figure is the
    inference figure's (one style, :mod:`glam_bundle.figure_style`): colour bars on 0-1 per class and map, a
    legend for the outlines and patches, a patch outside the breast flagged, the labels and every prediction
    the network returns in the title.

    Reads ``engine.state.output["pred"]`` (the network's dict, batched: ``decollate=False``) and
    ``engine.state.batch`` ("image" (N, 1, H, W) with its file names in the meta data, "label" (N, 2), "mask"
    (N, 2, H, W) and "has_mask" (N, 2) when present). Skipped batches (output ``{}``) are ignored.

    Args:
        log_dir: TensorBoard folder (the one of ``TensorBoardStatsHandler``); ignored when ``summary_writer``
            is given.
        max_images: cases drawn per run.
        crop_size: patch size (rows, cols) drawn on the figures.
        tag: tag prefix.
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` to share; None: one is made on
            ``log_dir`` at the first write.
        max_rows: arrays are kept and drawn subsampled to at most this many rows (736: a quarter of 2944).
    """

    def __init__(
        self,
        log_dir: str | Path = "./runs",
        max_images: int = 2,
        crop_size: Sequence[int] = (512, 512),
        tag: str = "validation",
        summary_writer: Any = None,
        max_rows: int = 736,
    ) -> None:
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
        self.log_dir = str(log_dir)
        self.max_images = int(max_images)
        self.crop_size = tuple(int(v) for v in crop_size)
        self.tag = tag.rstrip("/")
        self.max_rows = max_rows
        self._init_writer(summary_writer)
        self.cases: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.cases = []

    def collect(self, engine: Engine) -> None:
        """Keep the cases of this iteration until ``max_images`` are held."""
        output = engine.state.output
        if len(self.cases) >= self.max_images or not output:
            return
        if isinstance(output, (list, tuple)):
            raise TypeError("GLAMTensorBoardImages needs the evaluator's batched output: set decollate=False")
        pred = output.get("pred")
        if not isinstance(pred, Mapping):
            raise TypeError(f"expected engine.state.output['pred'] to be the GLAM output dict, got {type(pred)}")
        batch = engine.state.batch if isinstance(engine.state.batch, Mapping) else {}
        size = next((len(v) for k, v in pred.items() if k in MAP_KEYS + PREDICTION_KEYS), 0)
        names = image_names(batch, size)
        for i in range(size):
            if len(self.cases) >= self.max_images:
                break
            try:
                self.cases.append(self._case(i, names[i], output, pred, batch))
            except Exception:  # a figure is never worth stopping a validation run for
                logger.exception("GLAMTensorBoardImages: could not keep case %d (%s)", i, names[i])

    def _case(self, i: int, name: str, output: Mapping, pred: Mapping, batch: Mapping) -> dict[str, Any]:
        image = batch.get("image")
        if image is None:
            raise KeyError("the batch has no 'image'")
        full_size = tuple(int(v) for v in image.shape[-2:])
        step = display_step(full_size[0], self.max_rows)
        case: dict[str, Any] = {
            "name": name,
            "image_size": full_size,
            "image": downsample(_numpy(image[i, 0]), step),
            "predictions": {key: _numpy(pred[key][i]).tolist() for key in PREDICTION_KEYS if key in pred},
        }
        for key in MAP_KEYS:
            if key in pred:
                values = _numpy(pred[key][i])
                case[key] = downsample(values, max(1, round(step * values.shape[-2] / full_size[0])))
        if "patch_locations" in pred:
            case["patch_locations"] = _numpy(pred["patch_locations"][i])
        label = output.get("label", batch.get("label"))
        if label is not None:
            case["labels"] = _numpy(label[i]).reshape(-1).tolist()
        mask = output.get("mask", batch.get("mask"))
        has_mask = batch.get("has_mask")
        if mask is not None and (has_mask is None or bool(has_mask[i].any())):
            case["mask"] = downsample(_numpy(mask[i]), step, "max")
        return case

    def write(self, engine: Engine) -> None:
        """Write the kept cases' figures with global step ``engine.state.epoch``."""
        if not self.cases:
            return
        step = int(engine.state.epoch)
        used: set[str] = set()
        for case in self.cases:
            stem, candidate, counter = _stem(case["name"]), _stem(case["name"]), 1
            while candidate in used:
                counter += 1
                candidate = f"{stem}_{counter}"
            used.add(candidate)
            try:
                fig = glam_figure(
                    case["image"],
                    saliency_global=case.get("saliency_global"),
                    saliency=case.get("saliency"),
                    saliency_local=case.get("saliency_local"),
                    patch_locations=case.get("patch_locations"),
                    crop_size=self.crop_size,
                    mask=case.get("mask"),
                    name=Path(case["name"]).name or candidate,
                    labels=case.get("labels"),
                    predictions=case["predictions"] or None,
                    image_size=case["image_size"],
                )
                self.writer.add_figure(f"{self.tag}/{candidate}", fig, global_step=step, close=True)
            except Exception:
                logger.exception("GLAMTensorBoardImages: could not draw %s", case["name"])
        self.writer.flush()
        self.cases = []
