"""Kept so that configs naming ``glam_bundle.reports.EvaluationReport`` or ``glam_bundle.reports.require_checkpoint``
keep working; the report is :mod:`glam_bundle.handlers.evaluation_report`."""

from glam_bundle.checkpoint import require_checkpoint
from glam_bundle.handlers.evaluation_report import *  # noqa: F401,F403
from glam_bundle.handlers.evaluation_report import EvaluationReport

__all__ = ["EvaluationReport", "require_checkpoint"]
