"""One figure style for every figure the bundle draws: the inference figures (:mod:`glam_bundle.visualize`), the
TensorBoard images (:class:`glam_bundle.handlers.GLAMTensorBoardImages`), the evaluation report's
precision-recall curves (:class:`glam_bundle.handlers.EvaluationReport`), ``scripts/tensorboard_figure.py`` and
``scripts/contact_sheet.py``.

Colours follow the classes everywhere: benign green, malignant red (channel order of
:data:`glam_bundle.constants.CLASS_NAMES`), in outlines, overlays, titles and colour bars. The selected patch is
a gold box; a patch the figure flags (outside the breast) is an orange dashed box. Saliency maps use one
fixed 0-1 scale. Change a colour or a size here and every figure follows.
"""

from __future__ import annotations

__all__ = [
    "CLASS_COLOURS",
    "CLASS_COLOUR_MAPS",
    "PATCH_COLOUR",
    "FLAG_COLOUR",
    "BREAST_COLOUR",
    "MAP_COLOURS",
    "CHANCE_COLOUR",
    "CURVE_COLOUR",
    "PANEL_FACE",
    "IMAGE_CMAP",
    "SALIENCY_RANGE",
    "SALIENCY_TICKS",
    "TITLE_SIZE",
    "PANEL_TITLE_SIZE",
    "LABEL_SIZE",
    "LEGEND_SIZE",
    "NOTE_SIZE",
    "TICK_SIZE",
]

# Classes (channel order: benign, malignant).
CLASS_COLOURS = ("#2ca02c", "#d62728")  # benign green, malignant red
CLASS_COLOUR_MAPS = ("Greens", "Reds")  # saliency overlays of each class
# Patches and outlines.
PATCH_COLOUR = "#ffd700"  # selected patch box (gold)
FLAG_COLOUR = "#ff7f0e"  # a flagged patch (outside the breast): orange, dashed box and note
BREAST_COLOUR = "#17becf"  # breast-mask outline (contact sheet)
# Saliency maps S_g, S_l, S_c (evaluation PR curves: neither class colour, so a curve is never read as a class).
MAP_COLOURS = {"S_g": "#1f77b4", "S_l": "#9467bd", "S_c": "#222222"}
CHANCE_COLOUR = "#7f7f7f"
CURVE_COLOUR = "#ff7043"  # scalar curves of scripts/tensorboard_figure.py (TensorBoard's orange)
PANEL_FACE = "#f5f5f5"  # background of plot panels
# Images and maps.
IMAGE_CMAP = "gray"
SALIENCY_RANGE = (0.0, 1.0)  # every saliency map is drawn on this fixed scale
SALIENCY_TICKS = (0.0, 0.5, 1.0)
# Font sizes (points).
TITLE_SIZE = 10  # figure title (suptitle)
PANEL_TITLE_SIZE = 9
LABEL_SIZE = 8  # axis and colour-bar labels
LEGEND_SIZE = 8
NOTE_SIZE = 8  # notes drawn in a panel
TICK_SIZE = 7
