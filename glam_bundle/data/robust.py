"""Former name of :mod:`glam_bundle.data.failures`, kept so that users' configs with ``_target_``
"glam_bundle.data.robust.SkipBadCases" / "$glam_bundle.data.robust.collate_skip_failures" keep working."""

from glam_bundle.data.failures import SkipBadCases, collate_skip_failures, failure_message, is_failure, write_failures_csv

__all__ = ["SkipBadCases", "collate_skip_failures", "write_failures_csv", "failure_message", "is_failure"]
