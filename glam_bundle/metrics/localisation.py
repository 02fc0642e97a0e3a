"""Localisation and classification metrics of GLAM (paper appendix E), as MONAI cumulative metrics.

Localisation metrics compare saliency maps ``y_pred`` of shape (B, C, h, w), values in [0, 1], with
ground-truth masks ``y`` of shape (B, C, H, W), values in {0, 1}; C = 2 (channel 0 benign, 1 malignant).
The saliency map is resized to the mask's resolution first (see :func:`resize_to_mask`). An image counts for
class c only when its mask of class c has at least one positive pixel, as in the paper, which evaluates
localisation on the breasts that have a lesion of that class.

- :class:`SoftDiceMetric`: soft Dice 2·Σ(S·G) / (Σ S² + Σ G²) per image and class; mean, std and count.
- :class:`ImageLevelPxAPMetric`: average precision of the pixel precision-recall curve per image and class,
  exactly as ``sklearn.metrics.average_precision_score``; mean, std and count.
- :class:`DatasetLevelPxAPMetric`: one pixel precision-recall curve per class over all pixels of all counted
  images, built from score histograms, so its memory does not grow with the number of images.
- :class:`PerClassROCAUCMetric`: classification ROC AUC per class from image-level predictions (B, C) and
  labels (B, C), ignoring labels of -1 (unknown), via MONAI's ``compute_roc_auc``.

Every ``aggregate()`` returns a dict of plain floats keyed by class name.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric, ROCAUCMetric
from monai.metrics.rocauc import compute_roc_auc
from monai.utils import convert_to_tensor

from glam_bundle.constants import CLASS_NAMES

__all__ = [
    "INTERPOLATION_MODES",
    "DEFAULT_PRECISION_BITS",
    "DEFAULT_MIN_EXPONENT",
    "ScoreBinning",
    "resize_to_mask",
    "lesion_present",
    "compute_soft_dice",
    "compute_image_pxap",
    "compute_pixel_histograms",
    "precision_recall_curve_points",
    "average_precision_from_histograms",
    "SoftDiceMetric",
    "ImageLevelPxAPMetric",
    "DatasetLevelPxAPMetric",
    "PerClassROCAUCMetric",
]


# Modes whose output is a convex combination of input values, so a map in [0, 1] stays in [0, 1].
INTERPOLATION_MODES: tuple[str, ...] = ("nearest", "bilinear", "area")

# Default resolution of the dataset-level PxAP histograms: 2**14 bins per power of two (relative bin width
# 6.1e-5) from 2**-40 to 1. Equal-width bins lose saliency maps whose scores sit mostly near 0: with 100,000
# of them AP was 1e-3 off sklearn on sigmoid maps of median 6e-6, against 1e-6 for these (docs/metrics.md).
DEFAULT_PRECISION_BITS = 14
DEFAULT_MIN_EXPONENT = -40


def resize_to_mask(saliency: torch.Tensor, mask_size: Sequence[int], interpolation: str = "nearest") -> torch.Tensor:
    """Resize saliency maps (B, C, h, w) to the mask size (H, W); returned as float32 (B, C, H, W).

    ``"nearest"`` (default) is how the GLAM model itself brings its 184x120 global map to 2944x1920
    (exact 16x16 block replication), so a map keeps its block structure and ties; ``"bilinear"``
    (align_corners=False) gives a smooth map; ``"area"`` suits a saliency map larger than the mask.
    """
    if interpolation not in INTERPOLATION_MODES:
        raise ValueError(f"interpolation must be one of {INTERPOLATION_MODES}, got {interpolation!r}.")
    saliency = saliency.float()
    target = tuple(int(s) for s in mask_size)
    if tuple(saliency.shape[-2:]) == target:
        return saliency
    align_corners = False if interpolation == "bilinear" else None
    return F.interpolate(saliency, size=target, mode=interpolation, align_corners=align_corners)


def _prepare(y_pred: torch.Tensor, y: torch.Tensor, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; return saliency (B, C, H, W) float32 at mask resolution and boolean masks (B, C, H, W)."""
    y_pred = convert_to_tensor(y_pred, track_meta=False)
    y = convert_to_tensor(y, track_meta=False)
    if y_pred.ndim != 4 or y.ndim != 4:
        raise ValueError(
            f"saliency maps and masks must be (B, C, h, w) and (B, C, H, W), got {tuple(y_pred.shape)} "
            f"and {tuple(y.shape)}."
        )
    if y_pred.shape[:2] != y.shape[:2]:
        raise ValueError(f"batch/class dims differ: saliency {tuple(y_pred.shape)}, mask {tuple(y.shape)}.")
    if not torch.isfinite(y_pred).all():
        raise ValueError("saliency maps contain NaN or infinite values.")
    saliency = resize_to_mask(y_pred, y.shape[-2:], interpolation)
    # Binarised at 0.5 so that masks resized with a linear filter upstream still count as {0, 1}.
    return saliency, y.to(device=saliency.device) > 0.5


def _prepare_checked(metric: Any, y_pred: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a localisation metric's inputs (masks given, one channel per class), then :func:`_prepare` them."""
    if y is None:
        raise ValueError(f"{metric.__class__.__name__} needs ground-truth masks y.")
    if y_pred.shape[1] != len(metric.class_names):
        raise ValueError(f"expected {len(metric.class_names)} class channels, got {tuple(y_pred.shape)}.")
    return _prepare(y_pred, y, metric.interpolation)


def lesion_present(mask: torch.Tensor) -> torch.Tensor:
    """(B, C) boolean: whether each image's mask (B, C, H, W) of each class has a positive pixel."""
    return mask.flatten(2).any(dim=-1)


def compute_soft_dice(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft Dice 2·Σ(S·G) / (Σ S² + Σ G²) over (H, W) of same-size inputs (B, C, H, W).

    Returns float64 (B, C); NaN where the mask is empty (image not counted for that class).
    """
    s = saliency.float()
    g = mask.to(s.dtype)
    # float64 sums: a 2944x1920 mask can hold millions of pixels.
    intersection = (s * g).sum(dim=(-2, -1), dtype=torch.float64)
    denominator = (s * s).sum(dim=(-2, -1), dtype=torch.float64) + (g * g).sum(dim=(-2, -1), dtype=torch.float64)
    dice = 2.0 * intersection / denominator
    return torch.where(lesion_present(mask), dice, torch.full_like(dice, float("nan")))


def _average_precision_rows(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of each row of scores (K, N) against boolean targets (K, N), as sklearn computes it.

    sklearn: AP = Σ_k (R_k − R_{k−1}) P_k over the distinct scores k in decreasing order, tied scores
    forming one threshold. Equivalently each positive pixel contributes, divided by the number of positives,
    the precision at the last pixel of its tie group in the descending order. Returns float64 (K,).
    """
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    sorted_targets = torch.gather(targets, -1, order).to(torch.float64)
    num_pixels = scores.shape[-1]
    positions = torch.arange(num_pixels, device=scores.device).expand_as(order)
    true_positives = torch.cumsum(sorted_targets, dim=-1)
    precision = true_positives / (positions + 1)
    # A threshold sits at the last pixel of every run of equal scores.
    is_threshold = torch.ones_like(order, dtype=torch.bool)
    is_threshold[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    # Index of the threshold closing each pixel's tie group: a reverse running minimum of threshold positions.
    group_end = torch.where(is_threshold, positions, num_pixels - 1)
    group_end = torch.flip(torch.cummin(torch.flip(group_end, dims=[-1]), dim=-1).values, dims=[-1])
    precision_at_threshold = torch.gather(precision, -1, group_end)
    return (sorted_targets * precision_at_threshold).sum(dim=-1) / true_positives[:, -1]


def compute_image_pxap(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Image-level PxAP of same-size inputs (B, C, H, W): AP of every image and class, as sklearn's
    ``average_precision_score(mask.ravel(), saliency.ravel())``.

    Returns float64 (B, C); NaN where the mask is empty (image not counted for that class).
    """
    present = lesion_present(mask)
    result = torch.full(present.shape, float("nan"), dtype=torch.float64, device=saliency.device)
    if present.any():
        result[present] = _average_precision_rows(saliency.flatten(2)[present], mask.flatten(2)[present])
    return result


@dataclass(frozen=True)
class ScoreBinning:
    """Bins of saliency scores in [0, 1] for the dataset-level PxAP histograms.

    - Log-linear (default, ``num_bins=None``): ``2**precision_bits`` equal bins in every power-of-two range
      [2**e, 2**(e+1)) for e = ``min_exponent`` .. -1, i.e. a relative bin width of ``2**-precision_bits``
      whatever the score's magnitude; scores below ``2**min_exponent`` share the first bin and 1.0 has its own
      last bin. These are the float32 numbers truncated to ``precision_bits`` mantissa bits, so a bin index is
      an integer shift of the score's bit pattern (hand-written because no torch/MONAI histogram has
      magnitude-relative bins, which saliency maps need: most of their pixels lie within 1e-3 of zero).
    - Linear (``num_bins`` given): ``num_bins`` equal bins on [0, 1], the last one closed.

    A pixel's score is represented by its bin's lower edge: PxAP from these histograms equals sklearn's AP on
    scores rounded down to the lower edges.
    """

    num_bins: int | None = None
    precision_bits: int = DEFAULT_PRECISION_BITS
    min_exponent: int = DEFAULT_MIN_EXPONENT

    def __post_init__(self) -> None:
        if self.num_bins is not None and self.num_bins < 1:
            raise ValueError(f"num_bins must be positive, got {self.num_bins}.")
        if not 0 <= self.precision_bits <= 23:
            raise ValueError(f"precision_bits must be in [0, 23] (float32 mantissa), got {self.precision_bits}.")
        if not -126 <= self.min_exponent <= -1:
            raise ValueError(f"min_exponent must be in [-126, -1], got {self.min_exponent}.")

    @property
    def size(self) -> int:
        """Number of bins."""
        if self.num_bins is not None:
            return self.num_bins
        return (-self.min_exponent << self.precision_bits) + 1

    @property
    def _first_code(self) -> int:
        """Truncated float32 bit pattern of 2**min_exponent (its exponent field is 127 + min_exponent)."""
        return (127 + self.min_exponent) << self.precision_bits

    def index(self, scores: torch.Tensor) -> torch.Tensor:
        """Bin index (int32, same shape) of scores in [0, 1]; monotone non-decreasing in the score."""
        if self.num_bins is not None:
            # float64 product is exact for a float32 score, so each score lands in its mathematically correct
            # bin; truncation is floor for these non-negative values.
            return torch.clamp((scores.double() * self.num_bins).to(torch.int32), max=self.num_bins - 1)
        # Non-negative float32 numbers order like their bit patterns read as integers.
        codes = scores.float().contiguous().view(torch.int32) >> (23 - self.precision_bits)
        return torch.clamp_(codes - self._first_code, min=0)

    def lower_edges(self) -> np.ndarray:
        """Lower edge of every bin, float64 (size,), increasing, starting at 0."""
        if self.num_bins is not None:
            return np.arange(self.num_bins, dtype=np.float64) / self.num_bins
        codes = (np.arange(self.size, dtype=np.int64) + self._first_code) << (23 - self.precision_bits)
        edges = codes.astype(np.int32).view(np.float32).astype(np.float64)
        edges[0] = 0.0
        return edges


def compute_pixel_histograms(saliency: torch.Tensor, mask: torch.Tensor, binning: ScoreBinning) -> torch.Tensor:
    """Counts of pixel scores per class and ground truth over a batch of same-size inputs (B, C, H, W).

    Only images whose mask of a class has a positive pixel add to that class. Returns int64
    (C, 2, binning.size): index 0 along the second dim counts negative pixels, index 1 positive pixels.
    """
    if saliency.numel() and (saliency.min() < 0 or saliency.max() > 1):
        raise ValueError(
            f"dataset-level PxAP needs saliency values in [0, 1], got [{saliency.min().item()}, "
            f"{saliency.max().item()}]."
        )
    classes, num_bins = saliency.shape[1], binning.size
    present = lesion_present(mask)
    # One flat index per counted pixel, (class, is_positive, bin), so a single bincount fills every histogram;
    # int32 where it fits, as it halves the memory traffic of these per-pixel passes.
    dtype = torch.int32 if classes * 2 * num_bins < 2**31 else torch.int64
    index = binning.index(saliency[present]).to(dtype)
    index += mask[present].to(dtype) * num_bins
    index += (present.nonzero()[:, 1].to(dtype) * (2 * num_bins)).view(-1, 1, 1)
    counts = torch.bincount(index.flatten(), minlength=classes * 2 * num_bins)
    return counts.view(classes, 2, num_bins)


def precision_recall_curve_points(
    negative_counts: np.ndarray | torch.Tensor,
    positive_counts: np.ndarray | torch.Tensor,
    lower_edges: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel precision-recall curve of one class from its score histograms (num_bins,) each.

    Thresholds are the lower edges of the non-empty bins (``lower_edges``, default k/num_bins); a pixel counts
    as predicted positive at threshold τ when its bin's lower edge is ≥ τ. The output follows
    ``sklearn.metrics.precision_recall_curve``: ``precision`` and ``recall`` (n + 1,) for increasing
    thresholds (n,), ending with the point (1, 0). Recall is NaN when there is no positive pixel.
    """
    negative = np.asarray(convert_to_tensor(negative_counts, track_meta=False).cpu(), dtype=np.float64)
    positive = np.asarray(convert_to_tensor(positive_counts, track_meta=False).cpu(), dtype=np.float64)
    if negative.shape != positive.shape or negative.ndim != 1:
        raise ValueError(f"histograms must be 1-D of equal length, got {negative.shape} and {positive.shape}.")
    num_bins = negative.shape[0]
    edges = np.arange(num_bins, dtype=np.float64) / num_bins if lower_edges is None else np.asarray(lower_edges)
    if edges.shape != negative.shape:
        raise ValueError(f"lower_edges must have one value per bin ({num_bins}), got {edges.shape}.")
    occupied = np.flatnonzero(negative + positive)[::-1]  # non-empty bins, highest scores first
    # Counts at or above each threshold, walking the thresholds from the highest score down.
    true_positives = np.cumsum(positive[::-1])[num_bins - 1 - occupied]
    false_positives = np.cumsum(negative[::-1])[num_bins - 1 - occupied]
    precision = true_positives / np.maximum(true_positives + false_positives, 1)
    total_positives = true_positives[-1] if true_positives.size else 0.0
    recall = true_positives / total_positives if total_positives > 0 else np.full_like(true_positives, np.nan)
    return (
        np.concatenate([precision[::-1], [1.0]]),
        np.concatenate([recall[::-1], [0.0]]),
        edges[occupied[::-1]],
    )


def average_precision_from_histograms(
    negative_counts: np.ndarray | torch.Tensor, positive_counts: np.ndarray | torch.Tensor
) -> float:
    """PxAP of one class from its score histograms: Σ (R_k − R_{k−1}) P_k over the curve points, the sum
    sklearn uses; NaN when there is no positive pixel."""
    precision, recall, _ = precision_recall_curve_points(negative_counts, positive_counts)
    if recall.size == 1 or np.isnan(recall).any():
        return float("nan")
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _summarise_per_image(values: torch.Tensor | None, class_names: Sequence[str]) -> dict[str, float]:
    """Mean, population std (ddof 0) and count per class of per-image values (N, C), NaN = not counted."""
    summary: dict[str, float] = {}
    table = np.empty((0, len(class_names))) if values is None else values.detach().cpu().double().numpy()
    for index, name in enumerate(class_names):
        counted = table[:, index][~np.isnan(table[:, index])]
        summary[f"{name}_mean"] = float(counted.mean()) if counted.size else float("nan")
        summary[f"{name}_std"] = float(counted.std()) if counted.size else float("nan")
        summary[f"{name}_count"] = float(counted.size)
    return summary


class _PerImageLocalisationMetric(CumulativeIterationMetric):
    """Buffers one value per image and class (NaN where the class has no lesion) and reports, per class,
    ``{name}_mean``, ``{name}_std`` (population) and ``{name}_count`` over the counted images.

    Args:
        interpolation: how saliency maps are resized to the mask resolution, one of :data:`INTERPOLATION_MODES`.
        class_names: names of the channels, in order.
    """

    def __init__(self, interpolation: str = "nearest", class_names: Sequence[str] = CLASS_NAMES) -> None:
        super().__init__()
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"interpolation must be one of {INTERPOLATION_MODES}, got {interpolation!r}.")
        self.interpolation = interpolation
        self.class_names = tuple(class_names)

    def _score(self, saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """(B, C, h, w) saliency and (B, C, H, W) masks -> float64 (B, C) per-image values (NaN: not counted)."""
        saliency, mask = _prepare_checked(self, y_pred, y)
        return self._score(saliency, mask)

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        return _summarise_per_image(self.get_buffer(), self.class_names)


class SoftDiceMetric(_PerImageLocalisationMetric):
    """Soft Dice 2·Σ(S·G) / (Σ S² + Σ G²) per image and class (paper appendix E).

    An empty saliency map scores 0, an all-ones map 2|G| / (H·W + |G|); images without a lesion of a class
    are not counted for it. ``aggregate()`` -> ``{"benign_mean", "benign_std", "benign_count", ...}``.
    """

    def _score(self, saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return compute_soft_dice(saliency, mask)


class ImageLevelPxAPMetric(_PerImageLocalisationMetric):
    """Image-level PxAP: per image and class, the average precision of the pixel precision-recall curve with
    a threshold at every distinct score (ties handled like ``sklearn.metrics.average_precision_score``).

    Sorting holds a few float64/int64 copies of every counted (image, class) map at once: about 0.3 GB per
    2944x1920 map. ``aggregate()`` -> ``{"benign_mean", "benign_std", "benign_count", ...}``.
    """

    def _score(self, saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return compute_image_pxap(saliency, mask)


class DatasetLevelPxAPMetric(CumulativeIterationMetric):
    """Dataset-level PxAP: one pixel precision-recall curve per class over the pixels of all counted images.

    Scores are counted in the bins of a :class:`ScoreBinning`, separately for positive and negative pixels,
    and the counts are summed into one running (C, 2, bins) int64 histogram, so memory stays O(bins) (21 MB
    with the defaults) whatever the number of images. The result equals sklearn's AP on scores rounded down
    to the bin lower edges. Only images with a lesion of a class add pixels to that class's curve, as for the
    other localisation metrics. Saliency values must lie in [0, 1].

    Args:
        num_bins: ``None`` (default) for log-linear bins, else the number of equal-width bins on [0, 1].
        precision_bits: log-linear bins per power of two, as a power of two (relative bin width 2**-bits).
        min_exponent: log-linear bins start at 2**min_exponent; lower scores share the first bin.
        interpolation: how saliency maps are resized to the mask resolution, one of :data:`INTERPOLATION_MODES`.
        class_names: names of the channels, in order.

    ``aggregate()`` -> ``{"benign": ap, "malignant": ap}`` (NaN for a class without positive pixels);
    :meth:`curve_points` gives the curves for plots.
    """

    def __init__(
        self,
        num_bins: int | None = None,
        precision_bits: int = DEFAULT_PRECISION_BITS,
        min_exponent: int = DEFAULT_MIN_EXPONENT,
        interpolation: str = "nearest",
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        super().__init__()
        if interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"interpolation must be one of {INTERPOLATION_MODES}, got {interpolation!r}.")
        self.binning = ScoreBinning(num_bins=num_bins, precision_bits=precision_bits, min_exponent=min_exponent)
        self.interpolation = interpolation
        self.class_names = tuple(class_names)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """(B, C, h, w) saliency and (B, C, H, W) masks -> int64 (1, C, 2, bins) counts of the batch."""
        saliency, mask = _prepare_checked(self, y_pred, y)
        return compute_pixel_histograms(saliency, mask, self.binning).unsqueeze(0)

    def extend(self, *data: Any) -> None:
        """Add batch-first histograms (N, C, 2, bins) to the single running total instead of keeping them.

        The buffer therefore always holds one (C, 2, bins) tensor; ``get_buffer()`` gathers one per
        distributed rank and :meth:`histograms` sums them.
        """
        (histograms,) = data
        batch_total = convert_to_tensor(histograms, track_meta=False).sum(dim=0)
        if self._buffers is None:
            self._buffers = [[batch_total]]
        else:
            self._buffers[0][0] = self._buffers[0][0] + batch_total
        self._synced = False

    def append(self, *data: Any) -> None:
        """Add one histogram (C, 2, bins) to the running total."""
        (histogram,) = data
        self.extend(convert_to_tensor(histogram, track_meta=False).unsqueeze(0))

    def histograms(self) -> torch.Tensor:
        """Summed counts (C, 2, bins), int64 on CPU: [:, 0] negative pixels, [:, 1] positive pixels."""
        buffer = self.get_buffer()
        if buffer is None:
            return torch.zeros(len(self.class_names), 2, self.binning.size, dtype=torch.int64)
        return buffer.sum(dim=0).cpu()

    def curve_points(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per class, (precision, recall, thresholds) of the dataset-level curve, as
        :func:`precision_recall_curve_points` returns them."""
        counts, edges = self.histograms(), self.binning.lower_edges()
        return {
            name: precision_recall_curve_points(counts[index, 0], counts[index, 1], edges)
            for index, name in enumerate(self.class_names)
        }

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        counts = self.histograms()
        return {
            name: average_precision_from_histograms(counts[index, 0], counts[index, 1])
            for index, name in enumerate(self.class_names)
        }


class PerClassROCAUCMetric(ROCAUCMetric):
    """Classification ROC AUC per class from image-level predictions (B, C) and labels (B, C).

    Labels are 0/1, or -1 where unknown; unknown labels are left out of that class's AUC. Each class is
    computed with MONAI's ``compute_roc_auc`` (NaN when the known labels of a class are all alike).
    ``aggregate()`` -> ``{"benign": auc, "malignant": auc}``.
    """

    def __init__(self, class_names: Sequence[str] = CLASS_NAMES) -> None:
        super().__init__(average="none")
        self.class_names = tuple(class_names)

    def aggregate(self, average: Any = None) -> dict[str, float]:  # type: ignore[override]
        buffer = self.get_buffer()
        if buffer is None:
            return {name: float("nan") for name in self.class_names}
        y_pred, y = (b.detach().float().cpu() for b in buffer)
        if y_pred.ndim != 2 or y_pred.shape != y.shape or y.shape[1] != len(self.class_names):
            raise ValueError(
                f"predictions and labels must both be (N, {len(self.class_names)}), got "
                f"{tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        result: dict[str, float] = {}
        for index, name in enumerate(self.class_names):
            known = y[:, index] >= 0
            if not known.any():
                warnings.warn(f"no known {name} labels: AUC is NaN.", stacklevel=2)
                result[name] = float("nan")
                continue
            result[name] = float(compute_roc_auc(y_pred[known, index], y[known, index]))
        return result
