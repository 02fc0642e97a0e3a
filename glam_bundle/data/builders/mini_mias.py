"""Builder for (mini-)MIAS ``Info.txt`` (severity labels, circle masks)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image

from glam_bundle.constants import CLASS_NAMES
from glam_bundle.data.builders.common import BuildResult, _draw_masks, _save_masks, _shapes_by_class
from glam_bundle.data.errors import BadInputError

__all__ = ["build_mini_mias_items"]

_MIAS_SEVERITY = {"B": "benign", "M": "malignant"}
# Pixel spacing of (mini-)MIAS: the films were digitised at 50 micrometres and mini-MIAS reduced them to 200.
_MIAS_SPACING_MM = 0.2


def _parse_mias_info(info_path: Path) -> dict[str, list[tuple[str | None, tuple[int, int, int] | None]]]:
    """REFNUM -> [(class or None for NORM, (x, y, radius) or None)] from a MIAS ``Info.txt``."""
    try:
        lines = info_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise BadInputError(info_path, "Info.txt not found") from None
    findings: dict[str, list] = {}
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) < 3 or not re.fullmatch(r"mdb\d+", tokens[0]):
            raise BadInputError(info_path, f"line {number}: expected 'REFNUM BG CLASS [SEVERITY X Y RADIUS]'")
        entries = findings.setdefault(tokens[0], [])
        if tokens[2].upper() == "NORM":
            entries.append((None, None))
            continue
        if len(tokens) < 4 or tokens[3].upper() not in _MIAS_SEVERITY:
            raise BadInputError(info_path, f"line {number}: severity must be B or M")
        cls = _MIAS_SEVERITY[tokens[3].upper()]
        has_circle = len(tokens) >= 7 and all(t.isdigit() for t in tokens[4:7])
        entries.append((cls, tuple(int(t) for t in tokens[4:7]) if has_circle else None))
    return findings


def build_mini_mias_items(
    info_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
) -> BuildResult:
    """Items from a (mini-)MIAS ``Info.txt`` (``REFNUM BG CLASS SEVERITY X Y RADIUS``), one per image.

    Images are ``<image_dir>/<REFNUM>.pgm``. Several rows per image are merged: SEVERITY B -> benign,
    M -> malignant, NORM rows give 0/0. Each circle (centre X, Y with the origin at the bottom-left corner,
    i.e. row = height - Y, column = X) is filled into ``<masks_dir>/<REFNUM>_<class>.png`` (0/255, image
    size); a class with a finding lacking coordinates gets no mask. All MIAS images are MLO views; images
    come in pairs of one woman, odd numbers the right breast (facing left) and even the left, hence
    laterality from the number's parity and patient_id "mias<(n+1)//2>". The dataset documents its images as
    digitised screen film at 200 micrometres per pixel: items carry ``"film": true`` and ``"spacing_mm": 0.2``
    (the preprocessing then uses the film breast mask and resamples to the model frame's spacing).

    Raises:
        BadInputError: Info.txt is missing or malformed.
    """
    info_path, image_dir, masks_dir = Path(info_path), Path(image_dir), Path(masks_dir)
    items, skipped = [], []
    for ref, findings in sorted(_parse_mias_info(info_path).items()):
        image = image_dir / f"{ref}.pgm"
        if not image.is_file():
            skipped.append(f"{image}: image file not found")
            continue
        number = int(ref[3:])
        item = {
            "image": str(image.absolute()),
            "view": "MLO",
            "laterality": "R" if number % 2 else "L",
            # MIAS documents its images as screen film digitised at 200 micrometres (Suckling et al. 1994)
            "film": True,
            "spacing_mm": _MIAS_SPACING_MM,
            "patient_id": f"mias{(number + 1) // 2:03d}",
            **{cls: 0 for cls in CLASS_NAMES},
        }
        circles = _shapes_by_class(findings, item, image, "coordinates", skipped)

        if circles:
            try:
                with Image.open(image) as im:
                    width, height = im.size
            except OSError as e:
                raise BadInputError(image, f"cannot read image ({e})") from e

            def circle_region(circle, height=height):
                x, y, radius = circle
                centre_row, centre_col = height - y, x  # MIAS origin is the bottom-left corner
                return lambda r, c: (r - centre_row) ** 2 + (c - centre_col) ** 2 <= radius**2

            regions = {cls: [circle_region(c) for c in cls_circles] for cls, cls_circles in circles.items()}
            _save_masks(item, _draw_masks((height, width), regions), masks_dir, ref)
        items.append(item)
    return BuildResult(items, skipped)
