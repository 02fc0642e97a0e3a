"""Builders of datalist items from public datasets' annotation files, one dataset per module.

Each ``build_*_items`` returns a :class:`BuildResult`: the items (absolute paths, each possibly carrying a
``"split"`` taken from the dataset) plus the files that were skipped and why. :func:`glam_bundle.data.splits.split_items`
turns the items into the split dict that :func:`glam_bundle.data.datalist.write_datalist` saves. Mask PNGs
that a builder has to draw (boxes, circles, unions of ROI masks) are written atomically into a ``masks_dir``.
"""

from glam_bundle.data.builders.cbis_ddsm import build_cbis_ddsm_items
from glam_bundle.data.builders.common import BuildResult
from glam_bundle.data.builders.csv_table import build_csv_items
from glam_bundle.data.builders.ddsm import build_ddsm_items, ddsm_spacing_mm
from glam_bundle.data.builders.mini_mias import build_mini_mias_items
from glam_bundle.data.builders.nyu import RestrictedUnpickler, build_nyu_items, restricted_load_pickle
from glam_bundle.data.builders.vindr import build_vindr_items

__all__ = [
    "BuildResult",
    "RestrictedUnpickler",
    "restricted_load_pickle",
    "build_nyu_items",
    "build_cbis_ddsm_items",
    "build_vindr_items",
    "build_mini_mias_items",
    "build_csv_items",
    "build_ddsm_items",
    "ddsm_spacing_mm",
]
