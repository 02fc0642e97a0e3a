"""Metrics of the GLAM bundle as MONAI metrics: localisation (soft Dice, image- and dataset-level PxAP, per-class
AUC; :mod:`.localisation`) and the patch recall of the patch selection (:mod:`.patch_recall`)."""

from glam_bundle.metrics import localisation, patch_recall
from glam_bundle.metrics.localisation import *  # noqa: F401,F403
from glam_bundle.metrics.patch_recall import *  # noqa: F401,F403

__all__ = [*localisation.__all__, *patch_recall.__all__]
