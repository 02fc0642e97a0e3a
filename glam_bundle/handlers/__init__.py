"""Ignite handlers of the GLAM bundle, one job per module (as ``monai.handlers``).

- ``failure_reporter``: :class:`FailureReporter`, the skipped cases to CSV.
- ``metric_handlers``: Dice, image- and dataset-level PxAP and per-class AUC for MONAI evaluators.
- ``evaluation_report``: :class:`EvaluationReport`, metrics.json, the Table-1 markdown and PR curves.
- ``inference_writer``: :class:`GLAMInferenceWriter`, predictions.csv, saliency NIfTI and figures.
- ``release_outputs``: :class:`ReleaseIterationOutputs`, an iteration's tensors dropped once its handlers ran.
- ``resume``: :class:`ResumeCheckpoint`, the training state at epoch ends, to resume a killed stage.
- ``checkpoint_saver``: :class:`AtomicCheckpointSaver`, MONAI's ``CheckpointSaver`` writing its files atomically.
- ``patch_selection``: :class:`PatchSelection`, training stage 2: the local module's patch cache and patch recall.
- ``tensorboard_images``: :class:`GLAMTensorBoardImages`, the figures of the first validation cases in TensorBoard.
- ``loss_terms``: :class:`LossTermsLogger`, the terms of the training loss in TensorBoard and the log.
"""

from glam_bundle.handlers.checkpoint_saver import AtomicCheckpointSaver
from glam_bundle.handlers.evaluation_report import EvaluationReport
from glam_bundle.handlers.failure_reporter import FailureReporter
from glam_bundle.handlers.inference_writer import PREDICTION_COLUMNS, GLAMInferenceWriter
from glam_bundle.handlers.loss_terms import LossTermsLogger
from glam_bundle.handlers.patch_selection import PatchSelection
from glam_bundle.handlers.metric_handlers import (
    DatasetLevelPxAP,
    ImageLevelPxAP,
    PerClassMetricHandler,
    PerClassROCAUC,
    SoftDice,
)
from glam_bundle.handlers.release_outputs import ReleaseIterationOutputs
from glam_bundle.handlers.resume import ResumeCheckpoint, ResumeError
from glam_bundle.handlers.tensorboard_images import GLAMTensorBoardImages

__all__ = [
    "AtomicCheckpointSaver",
    "FailureReporter",
    "PerClassMetricHandler",
    "SoftDice",
    "ImageLevelPxAP",
    "DatasetLevelPxAP",
    "PerClassROCAUC",
    "EvaluationReport",
    "GLAMInferenceWriter",
    "PREDICTION_COLUMNS",
    "ReleaseIterationOutputs",
    "ResumeCheckpoint",
    "ResumeError",
    "PatchSelection",
    "GLAMTensorBoardImages",
    "LossTermsLogger",
]
