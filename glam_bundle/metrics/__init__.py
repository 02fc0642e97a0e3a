"""Metrics of the GLAM bundle as MONAI metrics: localisation (soft Dice, image- and dataset-level PxAP, per-class
AUC; :mod:`.localisation`) and the patch recall of the patch selection (:mod:`.patch_recall`)."""

from glam_bundle.metrics.localisation import (
    DEFAULT_MIN_EXPONENT,
    DEFAULT_PRECISION_BITS,
    DatasetLevelPxAPMetric,
    INTERPOLATION_MODES,
    ImageLevelPxAPMetric,
    PerClassROCAUCMetric,
    ScoreBinning,
    SoftDiceMetric,
    average_precision_from_histograms,
    compute_image_pxap,
    compute_pixel_histograms,
    compute_soft_dice,
    lesion_present,
    precision_recall_curve_points,
    resize_to_mask,
)
from glam_bundle.metrics.patch_recall import RECALL_AT, lesion_patch_hits, summarise_patch_recall

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
    "RECALL_AT",
    "lesion_patch_hits",
    "summarise_patch_recall",
]
