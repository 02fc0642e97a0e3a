"""Kept so that configs naming ``glam_bundle.inference.GLAMInferenceWriter`` or ``glam_bundle.inference.SelectOutputsd``
keep working; they are in :mod:`glam_bundle.handlers.inference_writer` and :mod:`glam_bundle.transforms.post`."""

from glam_bundle.handlers.inference_writer import PREDICTION_COLUMNS, GLAMInferenceWriter
from glam_bundle.transforms.post.dictionary import SelectOutputsd

__all__ = ["GLAMInferenceWriter", "PREDICTION_COLUMNS", "SelectOutputsd"]
