"""Evaluation report of the GLAM bundle: metrics.json, a markdown table in the layout of the paper's Tables 1
and 2, and dataset-level precision-recall curve plots, written when an evaluator completes.

Used by ``configs/evaluate.json`` (see docs/evaluation.md); the table looks like::

    | Saliency map | Dice malignant | Dice benign | Image-level PxAP malignant | ... | AUC benign |
    |---|---|---|---|---|
    | S_g | 0.390 ± 0.253 | 0.335 ± 0.259 | 0.461 ± 0.296 | ... | 0.770 |
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files only
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402

from glam_bundle import distributed  # noqa: E402
from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.constants import CLASS_NAMES  # noqa: E402
from glam_bundle.figure_style import (  # noqa: E402
    CHANCE_COLOUR,
    CLASS_COLOURS,
    LABEL_SIZE,
    LEGEND_SIZE,
    MAP_COLOURS,
    PANEL_TITLE_SIZE,
    TICK_SIZE,
    TITLE_SIZE,
)
from glam_bundle.handlers.metric_handlers import DatasetLevelPxAP, PerClassMetricHandler  # noqa: E402

__all__ = ["LOCALISATION_METRICS", "TABLE_CLASSES", "format_value", "EvaluationReport"]

# Localisation metrics of one saliency map, in the column order of the paper's tables.
LOCALISATION_METRICS: tuple[str, ...] = ("dice", "image_pxap", "dataset_pxap")
METRIC_TITLES = {"dice": "Dice", "image_pxap": "Image-level PxAP", "dataset_pxap": "Dataset-level PxAP"}
# The paper lists malignant before benign in every table.
TABLE_CLASSES: tuple[str, ...] = ("malignant", "benign")
NOT_AVAILABLE = "n/a"


def _finite_or_none(value: Any) -> float | None:
    """JSON-safe float: NaN and infinities become None (null), since JSON has no NaN."""
    value = float(value)
    return value if math.isfinite(value) else None


def format_value(mean: float | None, std: float | None = None, digits: int = 3) -> str:
    """``"0.390 ± 0.253"`` (or ``"0.390"`` without std) as in the paper; ``"n/a"`` for a missing/NaN mean."""
    if mean is None or not math.isfinite(mean):
        return NOT_AVAILABLE
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


class EvaluationReport:
    """Ignite handler writing the evaluation report into ``output_dir`` when the engine completes.

    Files (each written atomically):

    - ``metrics.json``: per saliency map and class, Dice and image-level PxAP mean/std/count, dataset-level
      PxAP with its positive/negative pixel counts, classification AUC per class, label counts, the number of
      evaluated images, the failures from ``engine.state.failures``, the checkpoint path, ``info`` and every
      scalar of ``engine.state.metrics``. NaN (no image of that class) is written as null.
    - ``table.md``: the paper's Table 1 / Table 2 layout, one row per saliency map; NaN printed as "n/a".
    - ``pr_curve_<class>.png`` per class: the dataset-level precision-recall curve of every map, AP in the
      legend, the numbers of images, of images with a lesion mask of that class and of lesion pixels under the
      title. With fewer than ``min_positive_images`` images with a lesion mask of the class (or no lesion
      pixel) no curve is drawn and the plot says why; with fewer than ``few_positive_images`` the curves are
      drawn with a note that they rest on few lesions.

    Under ``torchrun`` (``configs/multi_gpu_evaluate.json``) every rank evaluates its share of the images; the
    metrics are already over all images (their buffers are gathered across ranks when aggregated), the image and
    label counts and the failures of every rank are gathered here, and rank 0 writes the files.

    Args:
        output_dir: folder of the report (created if needed).
        maps: row label -> {"dice": SoftDice, "image_pxap": ImageLevelPxAP, "dataset_pxap": DatasetLevelPxAP},
            the metric handler objects attached to the same evaluator (in a config: ``"@validate#..."``
            references to ``key_metric`` / ``additional_metrics`` entries), e.g. rows "S_g", "S_l", "S_c".
        auc: the PerClassROCAUC handler of the classification output, or None (AUC columns show "n/a").
        checkpoint_path: path of the evaluated weights, recorded in metrics.json and under the table.
        info: extra JSON-serialisable facts recorded in metrics.json (e.g. the datalist and split).
        class_names: names of the class channels, in channel order.
        table_classes: classes of the table columns, in column order (the paper: malignant, then benign).
        digits: decimals printed in the table (metrics.json keeps full precision).
        title: heading of table.md.
        min_positive_images: images with a lesion mask of a class needed to draw its curves.
        few_positive_images: below this many such images the plot notes that the curves rest on few lesions.
    """

    metrics_filename = "metrics.json"
    table_filename = "table.md"
    curve_filename = "pr_curve_{}.png"

    def __init__(
        self,
        output_dir: str | os.PathLike,
        maps: Mapping[str, Mapping[str, PerClassMetricHandler]],
        auc: PerClassMetricHandler | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        info: Mapping[str, Any] | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        table_classes: Sequence[str] = TABLE_CLASSES,
        digits: int = 3,
        title: str = "GLAM evaluation",
        min_positive_images: int = 1,
        few_positive_images: int = 5,
    ) -> None:
        for label, handlers in maps.items():
            missing = [m for m in LOCALISATION_METRICS if m not in handlers]
            if missing:
                raise ValueError(f"saliency map {label!r} lacks metric handlers {missing}.")
            if not isinstance(handlers["dataset_pxap"], DatasetLevelPxAP):
                raise TypeError(f"maps[{label!r}]['dataset_pxap'] must be a DatasetLevelPxAP handler (for its curve).")
        unknown = [c for c in table_classes if c not in class_names]
        if unknown:
            raise ValueError(f"table_classes {unknown} are not among class_names {list(class_names)}.")
        self.output_dir = Path(output_dir)
        self.maps = {label: dict(handlers) for label, handlers in maps.items()}
        self.auc = auc
        self.checkpoint_path = None if checkpoint_path is None else os.path.abspath(checkpoint_path)
        self.info = dict(info or {})
        self.class_names = tuple(class_names)
        self.table_classes = tuple(table_classes)
        self.digits = digits
        self.title = title
        self.min_positive_images = max(1, int(min_positive_images))
        self.few_positive_images = int(few_positive_images)
        self._reset_counts()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _reset_counts(self) -> None:
        self.num_images = 0
        # Per class: images labelled positive (1), negative (0) and unknown (-1).
        self.label_counts = {name: {"positive": 0, "negative": 0, "unknown": 0} for name in self.class_names}
        self._failures: list[Any] | None = None  # every rank's failures, gathered under torchrun

    def started(self, engine: Engine) -> None:
        self._reset_counts()

    def iteration_completed(self, engine: Engine) -> None:
        """Count the batch's images and labels; a skipped batch (every case failed) has an empty output."""
        output = engine.state.output
        if not output:
            return
        labels = np.asarray(output["label"].detach().cpu(), dtype=np.float64).reshape(-1, len(self.class_names))
        self.num_images += labels.shape[0]
        for index, name in enumerate(self.class_names):
            column = labels[:, index]
            self.label_counts[name]["positive"] += int((column == 1).sum())
            self.label_counts[name]["negative"] += int((column == 0).sum())
            self.label_counts[name]["unknown"] += int((column < 0).sum())

    def summary(self, engine: Engine) -> dict[str, Any]:
        """Everything metrics.json holds, as a JSON-safe dict (NaN -> None)."""
        localisation: dict[str, Any] = {}
        for label, handlers in self.maps.items():
            entry: dict[str, Any] = {}
            for metric in ("dice", "image_pxap"):
                values = handlers[metric].summary
                entry[metric] = {
                    name: {
                        "mean": _finite_or_none(values[f"{name}_mean"]),
                        "std": _finite_or_none(values[f"{name}_std"]),
                        "count": int(values[f"{name}_count"]),
                    }
                    for name in self.class_names
                }
            dataset_handler = handlers["dataset_pxap"]
            pixel_counts = dataset_handler.metric_fn.histograms().sum(dim=-1)  # (C, 2): negative, positive
            entry["dataset_pxap"] = {
                name: {
                    "ap": _finite_or_none(dataset_handler.summary[name]),
                    "negative_pixels": int(pixel_counts[index, 0]),
                    "positive_pixels": int(pixel_counts[index, 1]),
                }
                for index, name in enumerate(self.class_names)
            }
            localisation[label] = entry
        auc_values = self.auc.summary if self.auc is not None else {}
        failures = [
            {str(k): v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in f.items()}
            for f in (self._failures if self._failures is not None else getattr(engine.state, "failures", []))
        ]
        return {
            "checkpoint": self.checkpoint_path,
            "info": self.info,
            "num_images": self.num_images,
            "num_failures": len(failures),
            "failures": failures,
            "labels": self.label_counts,
            "localisation": localisation,
            "classification_auc": {
                name: _finite_or_none(auc_values.get(name, float("nan"))) for name in self.class_names
            },
            "figures": [self.curve_filename.format(name) for name in self.table_classes],
            "engine_metrics": {
                key: _finite_or_none(value)
                for key, value in engine.state.metrics.items()
                if isinstance(value, (int, float, np.number))
            },
        }

    def table(self, summary: Mapping[str, Any]) -> str:
        """The markdown table (Table 1 / Table 2 layout) of a :meth:`summary` dict, with its notes."""
        header = ["Saliency map"]
        for metric in LOCALISATION_METRICS:
            header += [f"{METRIC_TITLES[metric]} {name}" for name in self.table_classes]
        header += [f"AUC {name}" for name in self.table_classes]
        lines = [
            f"# {self.title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for label, entry in summary["localisation"].items():
            cells = [label]
            for metric in ("dice", "image_pxap"):
                cells += [
                    format_value(entry[metric][name]["mean"], entry[metric][name]["std"], self.digits)
                    for name in self.table_classes
                ]
            for values in (
                {name: entry["dataset_pxap"][name]["ap"] for name in self.table_classes},
                summary["classification_auc"],
            ):
                cells += [format_value(values[name], digits=self.digits) for name in self.table_classes]
            lines.append("| " + " | ".join(cells) + " |")
        first = next(iter(summary["localisation"].values()), None)
        lesion_counts = (
            ", ".join(f"{name} {first['dice'][name]['count']}" for name in self.table_classes) if first else "none"
        )
        lines += [
            "",
            (
                "Dice and image-level PxAP: mean ± population std over the images with a lesion mask of that "
                "class; dataset-level PxAP: one precision-recall curve over all their pixels; "
                "AUC: classification ROC AUC of the global prediction ŷ_g, the same for every row. "
                f"{NOT_AVAILABLE}: no image of that class (for AUC: known labels of one value only)."
            ),
            "",
            f"- images evaluated: {summary['num_images']}; failures: {summary['num_failures']}",
            f"- images with a lesion mask: {lesion_counts}",
            f"- checkpoint: {summary['checkpoint'] or 'not recorded'}",
        ]
        return "\n".join(lines) + "\n"

    def positives(self, class_name: str) -> tuple[int, int, int]:
        """(images with a lesion mask of ``class_name``, its lesion pixels, all pixels) behind its PR curves."""
        index = self.class_names.index(class_name)
        images = pixels = total = 0
        for handlers in self.maps.values():  # every map sees the same images and masks: take the largest counts
            count = handlers["dice"].summary.get(f"{class_name}_count", 0)
            images = max(images, int(count) if count == count else 0)
            counts = handlers["dataset_pxap"].metric_fn.histograms()[index].sum(dim=-1)
            pixels, total = max(pixels, int(counts[1])), max(total, int(counts.sum()))
        return images, pixels, total

    def curve_figure(self, class_name: str) -> Figure:
        """The dataset-level PR curves of every map for one class (see the class docstring), as a Figure."""
        figure = Figure(figsize=(5.5, 5.2), dpi=100, layout="constrained")
        axis = figure.add_subplot()
        colour = CLASS_COLOURS[self.class_names.index(class_name)]
        images, pixels, total = self.positives(class_name)
        too_few = images < self.min_positive_images or pixels == 0
        drawn = 0
        for number, (label, handlers) in enumerate(self.maps.items()):
            if too_few:
                break
            handler = handlers["dataset_pxap"]
            precision, recall, _ = handler.curve_points()[class_name]
            if recall.size < 2 or np.isnan(recall).any():
                continue
            ap = handler.summary.get(class_name, float("nan"))
            axis.plot(recall, precision, drawstyle="steps-post", label=f"{label} (AP {format_value(ap)})",
                      color=MAP_COLOURS.get(label, f"C{number}"), lw=1.6)
            drawn += 1
        if not drawn:
            needed = f"at least {self.min_positive_images} needed" if images < self.min_positive_images else \
                "no lesion pixel in them"
            axis.text(0.5, 0.5, f"too few positives to draw a precision-recall curve:\n{images} image"
                      f"{'' if images == 1 else 's'} with a {class_name} lesion mask ({needed})",
                      ha="center", va="center", fontsize=LABEL_SIZE + 1, color=colour, wrap=True,
                      gid="too-few-positives", transform=axis.transAxes)
        else:
            # A map carrying no information has precision = the share of lesion pixels at every recall.
            chance = pixels / max(total, 1)
            axis.axhline(chance, color=CHANCE_COLOUR, linestyle=":", label=f"chance ({chance:.3f})")
            axis.legend(loc="upper right", fontsize=LEGEND_SIZE)
        axis.set(xlim=(0, 1), ylim=(0, 1.02))
        axis.set_xlabel("pixel recall", fontsize=LABEL_SIZE)
        axis.set_ylabel("pixel precision", fontsize=LABEL_SIZE)
        axis.tick_params(labelsize=TICK_SIZE)
        figure.suptitle(f"Dataset-level pixel precision-recall: {class_name}", fontsize=TITLE_SIZE,
                        color=colour)
        counts = f"{self.num_images} images, {images} with a {class_name} lesion mask, {pixels:,} lesion pixels"
        if drawn and images < self.few_positive_images:
            counts += f"\nfew lesions (fewer than {self.few_positive_images} images): the curves are noisy"
        axis.set_title(counts, fontsize=PANEL_TITLE_SIZE)
        axis.grid(alpha=0.3)
        return figure

    def plot_curves(self, class_name: str, path: str | os.PathLike) -> Path:
        """Write :meth:`curve_figure` of one class to a PNG (atomically); returns its path."""
        figure = self.curve_figure(class_name)
        with atomic_output(path) as tmp:
            figure.savefig(tmp, format="png")
        return Path(path)

    def gather_ranks(self, engine: Engine) -> None:
        """Under torchrun: the image and label counts become the sums over every rank and the failures those of
        every rank, in rank order (a collective: every rank calls it). Nothing in a single process."""
        if not distributed.is_distributed():
            return
        failures = [{str(k): v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in f.items()}
                    for f in getattr(engine.state, "failures", [])]
        parts = distributed.all_gather_objects((self.num_images, self.label_counts, failures))
        self.num_images = sum(part[0] for part in parts)
        self.label_counts = {name: {key: sum(part[1][name][key] for part in parts) for key in counts}
                             for name, counts in self.label_counts.items()}
        self._failures = [failure for part in parts for failure in part[2]]

    def completed(self, engine: Engine) -> None:
        """Write metrics.json, table.md and the PR-curve PNGs (under torchrun: rank 0, over every rank's images)."""
        self.gather_ranks(engine)
        if distributed.get_rank() != 0:
            return
        summary = self.summary(engine)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for class_name in self.table_classes:
            self.plot_curves(class_name, self.output_dir / self.curve_filename.format(class_name))
        with atomic_output(self.output_dir / self.table_filename) as tmp:
            tmp.write_text(self.table(summary), encoding="utf-8")
        with atomic_output(self.output_dir / self.metrics_filename) as tmp:
            tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        engine.logger.info(f"evaluation report written to {self.output_dir}")
