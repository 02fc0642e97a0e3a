"""Metric handlers of the GLAM bundle (Dice, image- and dataset-level PxAP, per-class AUC).

Metric handlers wrap the metrics of :mod:`glam_bundle.metrics` for ``key_val_metric`` /
``additional_metrics`` of MONAI evaluators, e.g. in a config::

    "key_metric": {"val_dice": {"_target_": "glam_bundle.handlers.SoftDice",
                                "output_transform": "$monai.handlers.from_engine(['saliency', 'mask'])"}}

Each one stores a scalar, the mean over classes (classes without any counted image are skipped), under its
name in ``engine.state.metrics``, so it can be the key metric; the per-class values of the metric's
``aggregate()`` dict go next to it as ``<name>_<key>``, e.g. ``val_dice_benign_mean``, ``val_dice_benign_std``,
``val_dice_benign_count``, where ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MetricsSaver`` pick them up.
The per-image handlers can also save the per-image values (N, C) (NaN: image not counted for that class) in
``engine.state.metric_details[<name>]``, as MONAI's ``MeanDice`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from glam_bundle.constants import CLASS_NAMES
from glam_bundle.metrics import (
    DEFAULT_MIN_EXPONENT,
    DEFAULT_PRECISION_BITS,
    DatasetLevelPxAPMetric,
    ImageLevelPxAPMetric,
    PerClassROCAUCMetric,
    SoftDiceMetric,
)

__all__ = ["PerClassMetricHandler", "SoftDice", "ImageLevelPxAP", "DatasetLevelPxAP", "PerClassROCAUC"]


def _identity(output: Any) -> Any:
    return output


class PerClassMetricHandler(IgniteMetricHandler):
    """IgniteMetricHandler for a metric whose ``aggregate()`` returns a dict of floats keyed per class.

    Args:
        metric_fn: the metric; ``aggregate()`` must hold ``f"{class_name}{key_suffix}"`` for every class.
        class_names: the classes averaged into the scalar.
        key_suffix: which entry of each class is averaged, e.g. ``"_mean"`` for per-image metrics.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g. ``from_engine(["pred", "label"])``.
        save_details: keep the metric's buffer in ``engine.state.metric_details`` (per-image metrics only).
    """

    def __init__(
        self,
        metric_fn: CumulativeIterationMetric,
        class_names: Sequence[str] = CLASS_NAMES,
        key_suffix: str = "",
        output_transform: Callable = _identity,
        save_details: bool = False,
    ) -> None:
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
        self.class_names = tuple(class_names)
        self.key_suffix = key_suffix
        self.summary: dict[str, float] = {}

    def iteration_completed(self, engine: Any) -> None:
        """Update from the iteration's output, unless the batch was skipped (every case failed to load: the
        bundle's engines then leave an empty output, see ``glam_bundle.engines.SkipFailedCasesMixin``)."""
        if engine.state.output:
            super().iteration_completed(engine)

    def compute(self) -> float:
        """Aggregate the metric, keep its dict in ``self.summary`` and return the mean over classes."""
        self.summary = {key: float(value) for key, value in super().compute().items()}
        per_class = [self.summary[f"{name}{self.key_suffix}"] for name in self.class_names]
        finite = [value for value in per_class if not math.isnan(value)]
        return float(np.mean(finite)) if finite else float("nan")

    def completed(self, engine: Any, name: str) -> None:
        """Store the scalar under ``name`` and each entry of the summary under ``f"{name}_{key}"``."""
        super().completed(engine, name)
        for key, value in self.summary.items():
            engine.state.metrics[f"{name}_{key}"] = value


class SoftDice(PerClassMetricHandler):
    """Soft Dice of saliency maps (B, C, h, w) against masks (B, C, H, W); scalar = mean over classes of the
    per-class mean Dice. See :class:`glam_bundle.metrics.SoftDiceMetric`."""

    def __init__(
        self, interpolation: str = "nearest", output_transform: Callable = _identity, save_details: bool = True
    ) -> None:
        super().__init__(
            SoftDiceMetric(interpolation=interpolation),
            key_suffix="_mean",
            output_transform=output_transform,
            save_details=save_details,
        )


class ImageLevelPxAP(PerClassMetricHandler):
    """Image-level PxAP of saliency maps (B, C, h, w) against masks (B, C, H, W); scalar = mean over classes of
    the per-class mean AP. See :class:`glam_bundle.metrics.ImageLevelPxAPMetric`."""

    def __init__(
        self, interpolation: str = "nearest", output_transform: Callable = _identity, save_details: bool = True
    ) -> None:
        super().__init__(
            ImageLevelPxAPMetric(interpolation=interpolation),
            key_suffix="_mean",
            output_transform=output_transform,
            save_details=save_details,
        )


class DatasetLevelPxAP(PerClassMetricHandler):
    """Dataset-level PxAP of saliency maps (B, C, h, w) against masks (B, C, H, W); scalar = mean over classes.
    See :class:`glam_bundle.metrics.DatasetLevelPxAPMetric` for the binning arguments."""

    def __init__(
        self,
        num_bins: int | None = None,
        precision_bits: int = DEFAULT_PRECISION_BITS,
        min_exponent: int = DEFAULT_MIN_EXPONENT,
        interpolation: str = "nearest",
        output_transform: Callable = _identity,
    ) -> None:
        metric = DatasetLevelPxAPMetric(
            num_bins=num_bins, precision_bits=precision_bits, min_exponent=min_exponent, interpolation=interpolation
        )
        # The buffer is a histogram, not per-image values, so it is not saved as metric details.
        super().__init__(metric, output_transform=output_transform, save_details=False)

    def curve_points(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per class, (precision, recall, thresholds) of the last epoch's dataset-level curve."""
        return self.metric_fn.curve_points()  # type: ignore[attr-defined]


class PerClassROCAUC(PerClassMetricHandler):
    """Classification ROC AUC per class from image-level predictions (B, C) and labels (B, C) with -1 for
    unknown; scalar = mean over classes. See :class:`glam_bundle.metrics.PerClassROCAUCMetric`."""

    def __init__(self, output_transform: Callable = _identity) -> None:
        super().__init__(PerClassROCAUCMetric(), output_transform=output_transform, save_details=False)
