"""Breast foreground masks and orientation of (H, W) mammogram planes (numpy): the original GLAM/NYU rule
for digital mammograms and a robust rule for scanned film."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from glam_bundle.constants import JPEG_BLOCK

__all__ = [
    "otsu_threshold",
    "original_breast_mask",
    "breast_region",
    "film_breast_mask",
    "chest_wall_on_right",
    "chest_wall_evidence",
    "remove_thin_strips",
    "background_level",
    "flat_background_fraction",
    "ragged_background_specks",
    "film_from_pixels",
    "negative_image",
    "chest_wall_corner_coverage",
    "view_from_image",
]


def _largest_component(mask: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Largest 4-connected component of ``mask`` (ties -> lowest label, as the original's idxmax).

    Args:
        mask: (H, W) bool.
        candidates: optional bool per label (index 0 = background) restricting the choice; when no
            candidate is set, every component is eligible.
    """
    labels, count = ndi.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    if candidates is not None and candidates[1:].any():
        sizes = np.where(candidates, sizes, 0)
    return labels == int(np.argmax(sizes))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the histogram split maximising the between-class variance.

    Written here because MONAI's ``ForegroundMask`` needs scikit-image, which the bundle does not depend on.
    Pixels strictly above the returned value form the bright class.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)[:-1]
    weight_high = values.size - weight_low
    sum_low = np.cumsum(hist * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (np.dot(hist, centres) - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def original_breast_mask(image: np.ndarray, iterations: int = 100) -> np.ndarray:
    """The original crop_mammogram foreground (§5.1 steps 2-5) of a digital mammogram.

    pixel > 0, binary erosion ``iterations`` times with SciPy's default cross, largest 4-connected
    component, binary dilation ``iterations`` times.

    Args:
        image: (H, W) raw intensities (background exactly 0).

    Returns:
        (H, W) bool mask.
    """
    mask = image > 0
    if iterations > 0:
        mask = ndi.binary_erosion(mask, iterations=iterations)
    mask = _largest_component(mask)
    if iterations > 0 and mask.any():
        mask = ndi.binary_dilation(mask, iterations=iterations)
    return mask


def breast_region(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What is breast in a digital mammogram: the pixels > 0 of the 4-connected components of the foreground
    that the breast mask touches (:func:`original_breast_mask`: the largest component after the erosion).

    Everything else above 0 -- burned-in labels ("L", "[LCC]", "RMLO"), markers, detector or paddle edges
    that do not touch the breast -- is an artefact. The breast mask itself is *not* the breast's extent:
    its erosion and dilation by 100 cut the corners where the breast meets the image edge (16,683 and
    23,376 breast pixels at the chest wall of NYU 0_L-CC and 0_R-CC, up to 150 px from the mask), so those
    are kept. A label or marker that touches the breast belongs to its component and stays (the original
    mask leaves its thin strokes out, but the breast's own thin edges too, so it cannot tell them apart).

    Args:
        image: (H, W) raw intensities (background exactly 0).
        mask: (H, W) bool breast mask.

    Returns:
        (H, W) bool.
    """
    foreground = np.asarray(image) > 0
    labels, count = ndi.label(foreground)
    touched = np.unique(labels[np.asarray(mask, dtype=bool)])
    return np.isin(labels, touched[touched > 0])


# A seed on the other side this many times larger than the largest on the given chest-wall side wins.
_MIRRORED_SEED_RATIO = 4.0


def film_breast_mask(
    image: np.ndarray, chest_wall: str | None = None, smoothing: float = 1 / 200, strip_width: float = 0.03
) -> np.ndarray:
    """Breast mask of a scanned film mammogram (non-zero background, film border, burned-in labels).

    1. ``t_high`` = Otsu threshold of the non-zero pixels (zero = padding/no film), separating tissue
       from film background; ``t_low`` = Otsu threshold of the non-zero pixels at or below ``t_high``
       (faint tissue near the skin line vs film background), at least the film background's histogram
       peak + 3 standard deviations of the pixels below the peak.
    2. Seed: components of the opened ``image > t_high`` (opening of radius ``smoothing * min(H, W)``
       cuts thin bridges to labels and removes thin film-border lines); the largest one that reaches
       the chest-wall side of the film (within 2 % of the width from the first/last column where the film
       covers at least half the rows) wins -- labels and markers float in the background, the breast
       leans on the chest wall. ``chest_wall`` ("left"/"right") restricts the side, unless a component on the
       other side is over 4 times larger (a film stored mirrored); None accepts both.
    3. Grow the seed through the opened ``image > t_low`` (hysteresis), fill holes and dilate by the
       opening radius so the skin line is kept.
    4. Cut thin strips attached to the breast (film edges, scanner lines: narrower than ``strip_width`` of
       the shorter image side, 3 %; :func:`remove_thin_strips`).

    Args:
        image: (H, W) raw intensities.
        chest_wall: side of the chest wall in this image, or None when unknown.
        smoothing: opening radius as a fraction of the shorter image side.

    Returns:
        (H, W) bool mask (empty when the image has no non-zero pixel).
    """
    image = np.asarray(image, dtype=np.float32)
    nonzero = image > 0
    if not nonzero.any():
        return np.zeros(image.shape, dtype=bool)
    height, width = image.shape
    radius = max(1, round(min(height, width) * smoothing))
    t_high = otsu_threshold(image[nonzero])
    dark = image[nonzero & (image <= t_high)]
    t_low = otsu_threshold(dark) if dark.size else 0.0
    if dark.size:
        # Without faint tissue in the dark class, Otsu splits the film background's own noise: keep t_low
        # above the background peak + 3 standard deviations of its lower (pure noise) half.
        hist, edges = np.histogram(dark, bins=256)
        peak = float(edges[int(np.argmax(hist))] + edges[int(np.argmax(hist)) + 1]) / 2
        below = dark[dark < peak]
        spread = float(np.sqrt(np.mean((below - peak) ** 2))) if below.size else 0.0
        t_low = max(t_low, peak + 3 * spread)

    bright = ndi.binary_opening(image > t_high, iterations=radius)
    labels, count = ndi.label(bright)
    if count == 0:
        return np.zeros(image.shape, dtype=bool)
    film_columns = np.flatnonzero(nonzero.mean(axis=0) >= 0.5)
    if film_columns.size == 0:
        film_columns = np.flatnonzero(nonzero.any(axis=0))
    tolerance = max(2, round(0.02 * width))
    on_side = {"left": np.zeros(count + 1, dtype=bool), "right": np.zeros(count + 1, dtype=bool)}
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            on_side["left"][index] = box[1].start <= film_columns[0] + tolerance
            on_side["right"][index] = box[1].stop - 1 >= film_columns[-1] - tolerance
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    either = on_side["left"] | on_side["right"]
    candidates = on_side.get(chest_wall, either)
    if chest_wall in on_side and sizes[either].max(initial=0) > _MIRRORED_SEED_RATIO * sizes[candidates].max(initial=0):
        # far more tissue leans on the other side: a film stored mirrored to its laterality (the orientation step
        # then follows the image); a label or marker on the given side must not become the breast
        candidates = either
    if candidates[1:].any():
        sizes = np.where(candidates, sizes, 0)
    seed = labels == int(np.argmax(sizes))

    faint = ndi.binary_opening(image > t_low, iterations=radius) | seed
    faint_labels, _ = ndi.label(faint)
    mask = np.isin(faint_labels, np.unique(faint_labels[seed]))
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_dilation(mask, iterations=radius) & nonzero | mask
    return remove_thin_strips(mask, strip_width * min(height, width))


def remove_thin_strips(mask: np.ndarray, width: float) -> np.ndarray:
    """The breast without thin strips attached to it (film edges, scanner lines, the film holder's rim).

    Morphological reconstruction: the core is the largest component of the points deeper than ``width`` / 2
    inside the mask (an opening by a disc of diameter ``width``; thin strips vanish, the breast stays); the
    result is the mask within ``width`` of the core. A strip attached to the breast keeps only its root (at
    most ``width`` long). Computed on a mask downsampled to about 500 rows/columns on the short side.

    Args:
        mask: (H, W) bool.
        width: widest strip (pixels) to remove.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or width < 2:
        return mask
    step = max(1, min(mask.shape) // 500)
    small = mask[::step, ::step]
    radius = width / 2 / step
    # padded: a strip along the image border is as thin as one inside (the border is not breast)
    depth = ndi.distance_transform_edt(np.pad(small, 1))[1:-1, 1:-1]
    core = _largest_component(depth > radius)
    if not core.any():
        return mask
    near = ndi.distance_transform_edt(~core) <= 2 * radius + 1
    near = np.repeat(np.repeat(near, step, axis=0), step, axis=1)[: mask.shape[0], : mask.shape[1]]
    return _largest_component(mask & near)


def chest_wall_evidence(mask: np.ndarray) -> tuple[bool, float]:
    """Content rule for the breast's orientation: (is the chest wall on the right of this (H, W) mask, how clearly).

    The chest wall is a long vertical edge of the breast region while the nipple side tapers to a point,
    so the breast has more pixels in the outer tenth of its bounding box on the chest-wall side. The second value
    is the ratio of the two tenths' pixels, larger over smaller (1: no evidence; 2.3-44 on the shared sets'
    views, except mini-MIAS mdb152, 1.2).
    """
    columns = np.asarray(mask, dtype=bool).sum(axis=0)
    occupied = np.flatnonzero(columns)
    if occupied.size == 0:
        return False, 1.0
    first, last = int(occupied[0]), int(occupied[-1])
    band = max(1, (last - first + 1) // 10)
    right, left = int(columns[last - band + 1 : last + 1].sum()), int(columns[first : first + band].sum())
    return right > left, max(right, left) / max(min(right, left), 1)


def chest_wall_on_right(mask: np.ndarray) -> bool:
    """Is the chest wall on the right of this (H, W) mask? (:func:`chest_wall_evidence`)"""
    return chest_wall_evidence(mask)[0]


def background_level(
    image: np.ndarray, lossy: bool = False, min_flat_background: float = 0.02, low_share: float = 0.1
) -> float:
    """The value of a digital mammogram's flat background: its minimum; for a lossily stored image without a flat
    region at its minimum (under ``min_flat_background`` of the pixels), the most frequent of its lowest values
    (the lowest ``low_share`` of its range): JPEG's ringing dips below a background that a VOI window or an export
    put above 0."""
    image = np.asarray(image)
    if not image.size:
        return 0.0
    low = float(image.min())
    if not lossy or flat_background_fraction(image) >= min_flat_background:
        return low
    values, counts = np.unique(image[image <= low + low_share * (float(image.max()) - low)], return_counts=True)
    return float(values[np.argmax(counts)])


def flat_background_fraction(image: np.ndarray, padding: float = 0.95, level: float | None = None) -> float:
    """Share of the pixels that hold exactly the image's minimum value (or ``level``: the flat background),
    inside the padding: rows and columns at the image edges that are (almost, ``padding``) all at it -- a scanned
    film padded to a square or to the scanner's width, with the odd scanner line across -- are not counted:
    padding is not a detector background."""
    image = np.asarray(image)
    if not image.size:
        return 0.0
    flat = image == (image.min() if level is None else level)
    rows, cols = np.flatnonzero(flat.mean(axis=1) < padding), np.flatnonzero(flat.mean(axis=0) < padding)
    if rows.size == 0 or cols.size == 0:
        return 1.0
    return float(np.mean(flat[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))


def ragged_background_specks(
    image: np.ndarray, speck: int = 20, clearance: float = 3.0, level: float | None = None
) -> float:
    """Specks scattered in the background: components of at most ``speck`` pixels of the flat region (pixels
    exactly at the minimum, or at ``level``) or of the rest that lie more than ``clearance`` pixels from the edge
    of the flat region without them, per 1000 pixels of that edge.

    A clipped film's noise scatters specks across its background; resampling and JPEG ringing along a digital
    mammogram's skin line leave them only at the edge (within one 8-pixel JPEG block), and the clearance sets
    those aside.
    """
    image = np.asarray(image)
    flat = image == (image.min() if level is None else level)
    specks = np.zeros_like(flat)
    smooth = flat.copy()
    for region, other_side in ((flat, False), (~flat, True)):
        labels, count = ndi.label(region)
        if count:
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            sizes[0] = speck + 1  # label 0 is the other region, never a speck
            small = sizes[labels] <= speck
            specks |= small
            smooth[small] = other_side
    edge = smooth ^ ndi.binary_erosion(smooth)
    edge_pixels = int(edge.sum())
    labels, count = ndi.label(specks)
    if edge_pixels == 0 or count == 0:
        return 0.0
    # The speck pixels within ``clearance`` of the edge: the edge dilated by a disc of that radius, computed on the
    # speck pixels only (the mask), which is exact and some 20 times faster than a distance transform of the image.
    radius = int(clearance)
    rows, cols = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    disc = rows**2 + cols**2 <= clearance**2
    near = ndi.binary_dilation(edge, structure=disc, mask=specks | edge) & specks
    touching = np.zeros(count + 1, dtype=bool)
    touching[labels[near]] = True
    return 1000.0 * float((~touching[1:]).sum()) / edge_pixels


def negative_image(image: np.ndarray, min_background_at_max: float = 0.05, max_flat_at_min: float = 0.02) -> bool:
    """Is this a negative mammogram: stored inverted, dense tissue dark and the background white?

    A MONOCHROME1 image exported without its inversion (a common slip of DICOM-to-PNG conversions) has the
    digital unit's flat background at the image's *maximum*: at least ``min_background_at_max`` (5 %) of the
    pixels hold exactly the maximum, and no flat region sits at the minimum (:func:`flat_background_fraction`
    under ``max_flat_at_min``). Positive images have their flat background at the minimum, or none (film); on
    the shared sets at most 0.3 % of a mammogram's pixels hold its maximum (burned-in labels, saturated specks).
    """
    image = np.asarray(image)
    if not image.size:
        return False
    at_max = float(np.mean(image == image.max()))
    return at_max >= min_background_at_max and flat_background_fraction(image) < max_flat_at_min


def film_from_pixels(
    image: np.ndarray, min_flat_background: float = 0.02, max_specks: float = 5.0, lossy: bool = False
) -> tuple[bool, str]:
    """Film or digital from the pixels alone, for files that say nothing (PNG/JPEG/PGM exports).

    A digital mammogram "for presentation" has a constant background that the unit's software draws: every
    pixel outside the breast (and outside the collimation) is set to one value along a clean curve. A scanned
    film has no such region -- film base, fog, film edges and scanner noise give every background pixel its
    own value -- or, where the scanner clipped the dark film to 0, a flat region whose edge follows the film's
    noise, with specks scattered across it. Rules, in order:

    1. less than ``min_flat_background`` (2 %) of the pixels inside the padding
       (:func:`flat_background_fraction`) at the exact minimum -> film ("pixels:no-flat-background");
    2. more than ``max_specks`` (5) specks per 1000 edge pixels more than 3 pixels from the flat region's edge
       (:func:`ragged_background_specks`), or, for a lossily stored image (the reader's ``lossy_compression``),
       more than ``2 * max_specks`` beyond one 8-pixel JPEG block, where JPEG's ringing reaches
       -> film ("pixels:ragged-background");
    3. else digital ("pixels:flat-background").

    A lossily stored image without a flat region at its minimum is digital when its most frequent low value
    (:func:`background_level`) is a flat region passing rule 2 (a digital view with a gray background under JPEG
    ringing: NYU and CSAW-S with the background at 20 of 255, JPEG q95: 0.31-0.72 flat, at most 0.4 specks; the
    mini-DDSM films 0.16-0.63 but 19-85 specks), else film by rule 1.

    On the shared sets: rule 1 -- every mini-DDSM JPEG 0.000 and 11 of the 24 mini-MIAS PGMs 0.000-0.003 once
    their padding is set aside (NYU 0.31-0.32, CSAW-S 0.27-0.72); rule 2 -- the other 13 mini-MIAS PGMs 20-176
    specks and CBIS-DDSM 435-2128 (NYU and CSAW-S 0-0.1; CSAW-S downscaled with a Lanczos filter, whose ringing
    clips at 0 along the skin line, at most 0.8). Lossy: CBIS-DDSM saved as 8-bit JPEG 58-410 and mini-MIAS
    mdb001 as JPEG q95 28 (q75: 7.7, taken for digital), NYU and CSAW-S as 8-bit JPEG at most 2.2.

    Returns:
        (film, source).
    """
    level = background_level(image, lossy, min_flat_background)
    if flat_background_fraction(image, level=level) < min_flat_background:
        return True, "pixels:no-flat-background"
    clearance, most = (JPEG_BLOCK, 2 * max_specks) if lossy else (3.0, max_specks)
    if ragged_background_specks(image, clearance=clearance, level=level) > most:
        # at the minimum: a clipped film's ragged background; at a low value above the minimum (a JPEG without a
        # flat minimum), a film's darkest values are its noise, not a background
        return True, "pixels:ragged-background" if level == float(np.min(image)) else "pixels:no-flat-background"
    return False, "pixels:flat-background"


def chest_wall_corner_coverage(mask: np.ndarray, corner: float = 0.3) -> float:
    """Share of the top chest-wall corner of a right-facing breast mask's bounding box that is breast.

    The corner is the triangle ``(row - top) / height + (col - left) / width < corner`` of the bounding box.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0.0
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    yy = (np.arange(top, bottom) - top)[:, None] / (bottom - top)
    xx = (np.arange(left, right) - left)[None, :] / (right - left)
    triangle = (yy + xx) < corner
    return float(mask[top:bottom, left:right][triangle].mean()) if triangle.any() else 0.0


def view_from_image(mask: np.ndarray, min_coverage: float = 0.95) -> str:
    """"MLO" when the pectoral muscle is in the image, else "CC" (right-facing breast mask, chest wall left).

    In an MLO view the pectoral muscle and the axilla run up to the top of the image along the chest wall,
    so the breast region fills the top chest-wall corner of its bounding box (the muscle's bright triangle);
    in a CC view the breast contour curves away from that corner. The larger coverage of the corner
    triangles of 0.3 and 0.5 (:func:`chest_wall_corner_coverage`) is at least ``min_coverage`` => MLO. On the
    shared sets: MLO 0.97-1.00 (mini-DDSM, mini-MIAS, CSAW-S; mini-MIAS mdb152, whose breast covers the film,
    0.78), CC 0.71-0.86 (NYU, CBIS-DDSM, mini-DDSM, CSAW-S); the half-ellipse phantoms: CC 0.92-0.93, MLO 0.99.
    """
    coverage = max(chest_wall_corner_coverage(mask, 0.3), chest_wall_corner_coverage(mask, 0.5))
    return "MLO" if coverage >= min_coverage else "CC"
