"""Builder for DDSM-layout folders (DDSM, mini-DDSM): film, view/laterality from the names, pixel spacing from
the case's ``.ics`` file, outline masks paired by the folder listing."""

from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image

from glam_bundle.data.builders.common import BuildResult
from glam_bundle.data.folder import list_folder
from glam_bundle.transforms.utils import filename_view_laterality

__all__ = ["build_ddsm_items", "ddsm_spacing_mm", "DDSM_DIGITISER_SPACING_MM"]

# Pixel pitch of the three DDSM digitisers (Heath et al., "The Digital Database for Screening Mammography",
# IWDM 2000; the DDSM web site's "digitizer" pages): used when an .ics line lacks RESOLUTION.
DDSM_DIGITISER_SPACING_MM = {"LUMISYS": 0.050, "HOWTEK": 0.0435, "DBA": 0.042}
_ICS_LINE = re.compile(
    r"^(LEFT|RIGHT)_(CC|MLO)\s+LINES\s+(\d+)\s+PIXELS_PER_LINE\s+(\d+)(?:.*?RESOLUTION\s+([\d.]+))?", re.I
)


def _case_key(name: str) -> str:
    """``C_0029_1.LEFT_CC.jpg`` / ``C-0029-1.ics`` -> ``C00291``: DDSM spells the case with _ or -."""
    return re.sub(r"[^A-Z0-9]", "", name.split(".")[0].upper())


def ddsm_spacing_mm(image: str | os.PathLike) -> tuple[tuple[float, float], str] | None:
    """(row, col) pixel spacing in mm of a DDSM-named image and how it was found, from its case's ``.ics``.

    The ``.ics`` file beside the image lists per view the scanned size (``LINES`` x ``PIXELS_PER_LINE``) and
    the digitiser's ``RESOLUTION`` in micrometres (else the DIGITIZER's documented pitch). The image may be a
    downscaled copy (mini-DDSM halves DDSM): spacing = resolution x scanned size / image size, per axis.
    None when there is no .ics, no line for the view, or the image cannot be read.
    """
    image = Path(image)
    view, side = filename_view_laterality(image.name)
    if view is None:
        return None
    key = _case_key(image.name)
    for ics in sorted(image.parent.glob("*.ics")):
        if _case_key(ics.name) != key:
            continue
        text = ics.read_text(encoding="latin-1", errors="replace")
        digitiser = re.search(r"^DIGITIZER\s+(.+)$", text, re.M | re.I)
        pitch = None
        if digitiser:
            name = digitiser.group(1).upper()
            pitch = next((mm for maker, mm in DDSM_DIGITISER_SPACING_MM.items() if maker in name), None)
        for line in text.splitlines():
            match = _ICS_LINE.match(line.strip())
            if not match or match.group(1)[0].upper() != side or match.group(2).upper() != view:
                continue
            lines, pixels = int(match.group(3)), int(match.group(4))
            resolution = float(match.group(5)) / 1000 if match.group(5) else pitch
            if resolution is None:
                return None
            try:
                with Image.open(image) as im:
                    width, height = im.size
            except OSError:
                return None
            spacing = (resolution * lines / height, resolution * pixels / width)
            return (round(spacing[0], 5), round(spacing[1], 5)), f"{ics.name}: {lines}x{pixels} at {resolution * 1000:g} um"
    return None


def build_ddsm_items(root: str | os.PathLike) -> BuildResult:
    """Items of a DDSM-layout folder (DDSM, mini-DDSM): the folder listing's images and paired outline masks,
    plus what the dataset documents: ``"film": true`` (DDSM is digitised screen film), ``"view"`` and
    ``"laterality"`` from the names (``C_0001_1.LEFT_CC.jpg``) and ``"spacing_mm"`` [row, col] from the case's
    ``.ics`` file where there is one (:func:`ddsm_spacing_mm`). Labels stay as the listing leaves them.
    """
    listing = list_folder(root)
    items, skipped = [], []
    for item in listing.items:
        item = dict(item)
        view, side = filename_view_laterality(Path(item["image"]).name)
        item["film"] = True
        if view:
            item["view"], item["laterality"] = view, side
        found = ddsm_spacing_mm(item["image"])
        if found:
            item["spacing_mm"] = list(found[0])
        else:
            skipped.append(f"{item['image']}: no .ics line for this view, spacing unknown (kept, not resampled)")
        items.append(item)
    return BuildResult(items, skipped)
