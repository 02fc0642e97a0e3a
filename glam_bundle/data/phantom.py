"""Synthetic mammogram phantoms with lesions of known class and mask, for demos and tests without private data.

A phantom is a 12-bit (0..4095) uint16 image laid out like a raw NYU view: a left breast faces right
(chest wall at column 0), a right breast faces left, background is 0. It has a half-ellipse breast
outline with a skin line, parenchyma made of power-law (1/f^beta) noise, a pectoral muscle triangle on
MLO views, and lesions that are brighter than the tissue around them:

- benign: larger circumscribed round/oval masses;
- malignant: small irregular masses with spicules, or clusters of tiny bright calcifications.

Lesion sizes are fractions of the image height, so a 368x240 phantom is a scaled-down 2944x1920 one
(calcification specks never shrink below one pixel).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import fft, ndimage

from glam_bundle.atomic_io import atomic_output, save_png_atomic
from glam_bundle.constants import CLASS_NAMES, LATERALITIES, VIEWS
from glam_bundle.data.datalist import write_datalist
from glam_bundle.data.splits import DEFAULT_FRACTIONS, patient_level_split

__all__ = [
    "LESION_KINDS",
    "Phantom",
    "power_law_noise",
    "make_phantom",
    "as_scanned_film",
    "save_dicom_atomic",
    "generate_dataset",
]

# Lesion kind -> class it belongs to.
LESION_KINDS = {"benign_mass": "benign", "malignant_mass": "malignant", "calcification_cluster": "malignant"}
MAX_VALUE = 4095  # 12-bit detector range, as in the NYU images


class Phantom(NamedTuple):
    """One synthetic view.

    Attributes:
        image: (H, W) uint16, values in 0..4095, background 0.
        masks: {"benign": (H, W) uint8, "malignant": (H, W) uint8}, 1 inside a lesion of that class.
        labels: {"benign": 0/1, "malignant": 0/1}, 1 iff a lesion of that class is present.
        kinds: the kind (a key of ``LESION_KINDS``) of every lesion placed, in placement order; () without lesions.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    kinds: tuple[str, ...] = ()


def power_law_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum 1/f^beta (f in cycles per pixel), made by filtering in Fourier space.

    beta ~ 3 gives the cloud-like look of breast parenchyma (Burgess et al. measured beta ~ 3 on mammograms).

    Returns:
        (H, W) float32 field with mean 0 and standard deviation 1.
    """
    height, width = shape
    freq = np.hypot(fft.fftfreq(height)[:, None], fft.rfftfreq(width)[None, :]).astype(np.float32)
    freq[0, 0] = np.inf  # no DC component: the mean is set below
    amplitude = freq ** np.float32(-beta / 2.0)
    spectrum = amplitude * (
        rng.standard_normal(freq.shape, dtype=np.float32) + 1j * rng.standard_normal(freq.shape, dtype=np.float32)
    )
    field = fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    return (field / max(field.std(), 1e-12)).astype(np.float32)


def _smooth_wobble(n: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A slowly varying 1-D factor around 1 (a few low harmonics), to make outlines less geometric."""
    t = np.linspace(0.0, 1.0, n)
    wobble = sum(rng.uniform(-1, 1) * np.sin(2 * np.pi * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 5))
    return 1.0 + amplitude * wobble


def _breast_extent(height: int, width: int, view: str, rng: np.random.Generator) -> np.ndarray:
    """Per-row breast width in pixels from the chest wall (column 0), (H,) float; 0 where there is no breast."""
    rows = np.arange(height, dtype=np.float64)
    if view == "CC":
        centre, semi_rows = height * rng.uniform(0.46, 0.54), height * rng.uniform(0.36, 0.43)
        depth = width * rng.uniform(0.62, 0.8)
        extent = depth * np.sqrt(np.clip(1.0 - ((rows - centre) / semi_rows) ** 2, 0.0, None))
    else:
        # MLO: the breast reaches up into the axilla, narrowing towards the top edge, and is rounded below.
        centre, semi_rows = height * rng.uniform(0.52, 0.58), height * rng.uniform(0.33, 0.38)
        depth, top = width * rng.uniform(0.66, 0.82), width * rng.uniform(0.4, 0.5)
        upper = top + (depth - top) * np.sin(0.5 * np.pi * np.clip(rows / centre, 0.0, 1.0))
        lower = depth * np.sqrt(np.clip(1.0 - ((rows - centre) / semi_rows) ** 2, 0.0, None))
        extent = np.where(rows < centre, upper, lower)
    return np.minimum(extent * _smooth_wobble(height, 0.015, rng), width - 1)


class _Lesion(NamedTuple):
    centre: tuple[float, float]
    extent: float  # radius of a disk that holds the whole lesion, pixels
    kind: str


def _lesion_extent(
    kind: str, height: int, rng: np.random.Generator, size_scale: float = 1.0, contrast_scale: float = 1.0
) -> tuple[float, dict]:
    """Draw a lesion's shape parameters; returns its bounding radius and the parameters.

    Sizes are fractions of the image height (times ``size_scale``); contrasts are 12-bit intensity steps (times
    ``contrast_scale``).
    """
    height = height * size_scale
    extent, params = _lesion_shape(kind, height, rng)
    params["contrast"] = params["contrast"] * contrast_scale
    return extent, params


def _lesion_shape(kind: str, height: float, rng: np.random.Generator) -> tuple[float, dict]:
    if kind == "benign_mass":
        semi_major = height * rng.uniform(0.022, 0.034)
        params = dict(
            semi_major=semi_major,
            semi_minor=semi_major * rng.uniform(0.65, 1.0),
            angle=rng.uniform(0, np.pi),
            contrast=rng.uniform(550, 750),
        )
        return semi_major, params
    if kind == "malignant_mass":
        radius = height * rng.uniform(0.011, 0.018)
        harmonics = [(k, rng.uniform(0.0, 0.12), rng.uniform(0, 2 * np.pi)) for k in range(2, 8)]
        n_spicules = int(rng.integers(6, 13))
        spicules = [(rng.uniform(0, 2 * np.pi), radius * rng.uniform(1.2, 2.4)) for _ in range(n_spicules)]
        params = dict(
            radius=radius,
            harmonics=harmonics,
            spicules=spicules,
            spicule_width=max(0.75, height * 0.0012),
            contrast=rng.uniform(600, 800),
        )
        core = radius * (1 + sum(a for _, a, _ in harmonics))
        return core + max(length for _, length in spicules), params
    if kind == "calcification_cluster":
        cluster = height * rng.uniform(0.007, 0.012)
        speck = max(1.0, height * rng.uniform(0.0007, 0.0015))
        n = int(rng.integers(6, 16))
        radial, angle = cluster * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
        params = dict(
            offsets=np.stack([radial * np.sin(angle), radial * np.cos(angle)], axis=1),
            speck=speck,
            contrast=rng.uniform(900, 1300, n),
        )
        return cluster + speck + 1.0, params
    raise ValueError(f"unknown lesion kind {kind!r} (use one of {', '.join(LESION_KINDS)})")


def _draw_lesion(
    kind: str, params: dict, dr: np.ndarray, dc: np.ndarray, calcification_mask: str = "specks"
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity added by a lesion and its mask, on offsets (dr, dc) from its centre (broadcast grids).

    ``calcification_mask``: "specks" (each speck plus one pixel) or "cluster" (the disk holding every speck, as
    a radiologist outlines a cluster)."""
    if kind == "benign_mass":
        cos, sin = math.cos(params["angle"]), math.sin(params["angle"])
        u, v = dr * cos + dc * sin, -dr * sin + dc * cos
        rho = np.sqrt((u / params["semi_major"]) ** 2 + (v / params["semi_minor"]) ** 2)
        # A flat-topped dome with a sharp rim: the circumscribed look of cysts and fibroadenomas.
        dome = 0.75 + 0.25 * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
        rim = np.clip((1.0 - rho) * params["semi_minor"] + 0.5, 0.0, 1.0)  # ~1 px antialiased edge
        return params["contrast"] * dome * rim, rho <= 1.0

    if kind == "malignant_mass":
        distance, phi = np.hypot(dr, dc), np.arctan2(dr, dc)
        outline = params["radius"] * (1 + sum(a * np.cos(k * phi + p) for k, a, p in params["harmonics"]))
        core = distance <= outline
        intensity = np.where(core, params["contrast"] * (0.8 + 0.2 * np.clip(1 - distance / outline, 0, 1)), 0.0)
        spicules = np.zeros(np.broadcast_shapes(dr.shape, dc.shape), dtype=bool)
        for angle, length in params["spicules"]:
            along = dr * math.sin(angle) + dc * math.cos(angle)
            across = np.abs(-dr * math.cos(angle) + dc * math.sin(angle))
            reach = params["radius"] + length
            tapering = params["spicule_width"] * (1.0 - 0.6 * np.clip(along / reach, 0.0, 1.0))
            on_line = (along >= 0) & (along <= reach) & (across <= tapering)
            fading = params["contrast"] * (0.3 + 0.5 * np.clip(1.0 - along / reach, 0.0, 1.0))
            intensity = np.maximum(intensity, np.where(on_line, fading, 0.0))
            spicules |= on_line
        return intensity, core | spicules

    # calcification cluster: tiny bright specks; the mask hugs each speck with a one-pixel margin.
    intensity = np.zeros(np.broadcast_shapes(dr.shape, dc.shape), dtype=np.float64)
    mask = np.zeros(intensity.shape, dtype=bool)
    for (off_r, off_c), contrast in zip(params["offsets"], params["contrast"]):
        distance = np.hypot(dr - off_r, dc - off_c)
        intensity = np.maximum(intensity, np.where(distance <= params["speck"], contrast, 0.0))
        mask |= distance <= params["speck"] + 1.0
    if calcification_mask == "cluster":
        radius = float(np.hypot(params["offsets"][:, 0], params["offsets"][:, 1]).max()) + params["speck"] + 1.0
        mask = np.hypot(dr, dc) <= radius
    return intensity, mask


class _DrawnLesion(NamedTuple):
    extent: float  # radius of a disk that holds the whole lesion, pixels
    reach: int  # half-size of the square window it is drawn in
    intensity: np.ndarray  # (2 reach + 1, 2 reach + 1) intensity added, centred on the lesion
    mask: np.ndarray  # (2 reach + 1, 2 reach + 1) bool


def _drawn_lesion(
    kind: str, height: int, rng: np.random.Generator, size_scale: float, contrast_scale: float,
    calcification_mask: str, max_area: float | None, max_draws: int = 20,
) -> _DrawnLesion:
    """A lesion drawn in its own window (:func:`_lesion_extent`, :func:`_draw_lesion`), drawn again smaller while
    its mask has more than ``max_area`` pixels (None: no limit). Area grows with the square of the size, so each
    redraw scales the size by sqrt(max_area / area) (and 5 % less, as the new shape is drawn at random too)."""
    for _ in range(max_draws):
        extent, params = _lesion_extent(kind, height, rng, size_scale, contrast_scale)
        reach = int(math.ceil(extent)) + 1
        offsets = np.arange(-reach, reach + 1, dtype=np.float64)
        intensity, mask = _draw_lesion(kind, params, offsets[:, None], offsets[None, :], calcification_mask)
        area = int(mask.sum())
        if max_area is None or area <= max_area:
            return _DrawnLesion(extent, reach, intensity, mask)
        size_scale *= 0.95 * math.sqrt(max_area / area)
    raise ValueError(
        f"no {kind} fits in {max_area:.0f} pixels (max_lesion_fraction of this breast): raise max_lesion_fraction "
        "or use a larger image"
    )


def _kind_scale(lesion_scale: float | Mapping[str, float], kind: str) -> float:
    """The size factor of a lesion kind: a number for every kind, or a mapping by kind or by class name."""
    if not isinstance(lesion_scale, Mapping):
        return float(lesion_scale)
    return float(lesion_scale.get(kind, lesion_scale.get(LESION_KINDS[kind], 1.0)))


def _resolve_kinds(lesions: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Lesion kinds; a bare class name picks a kind of that class (malignant: mass 60 %, calcifications 40 %)."""
    kinds = []
    for lesion in lesions:
        if lesion == "benign":
            kinds.append("benign_mass")
        elif lesion == "malignant":
            kinds.append("malignant_mass" if rng.uniform() < 0.6 else "calcification_cluster")
        elif lesion in LESION_KINDS:
            kinds.append(lesion)
        else:
            raise ValueError(f"unknown lesion {lesion!r} (use benign, malignant or one of {', '.join(LESION_KINDS)})")
    return kinds


def make_phantom(
    height: int = 2944,
    width: int = 1920,
    view: str = "CC",
    laterality: str = "L",
    lesions: Sequence[str] = (),
    rng: np.random.Generator | int | None = None,
    lesion_scale: float | Mapping[str, float] = 1.0,
    contrast_scale: float = 1.0,
    calcification_mask: str = "specks",
    max_lesion_fraction: float | None = None,
) -> Phantom:
    """Make one synthetic mammogram view.

    Args:
        height, width: image size (rows, columns); the paper frame is 2944x1920.
        view: "CC" or "MLO" (MLO adds the pectoral muscle at the upper chest-wall corner).
        laterality: "L" (breast faces right, chest wall on the left) or "R" (mirrored).
        lesions: lesions to place, each "benign", "malignant" or a kind of ``LESION_KINDS``.
        rng: a numpy Generator or a seed; the phantom is a deterministic function of it.
        lesion_scale, contrast_scale: lesion size and contrast relative to the defaults (1: sizes and contrasts
            of screening mammograms at the paper's 2944-row frame; a small demo frame needs larger, brighter
            lesions to keep them visible to the global module's 16-pixel cells). ``lesion_scale`` may be a
            mapping by lesion kind or class name ("benign", "malignant"); missing kinds keep 1.
        calcification_mask: "specks" (default: each speck plus one pixel) or "cluster" (the disk holding the
            specks). On speck masks even a perfect map on the global module's 16-px grid reaches a soft Dice of
            only ~0.35, at any image size; outlines of the cluster are what many datasets (CBIS-DDSM) draw.
        max_lesion_fraction: largest mask area of one lesion as a fraction of the breast's area (e.g. 0.01); a
            lesion drawn larger is drawn again, smaller by the square root of the excess (its kind and class stay).
            None: no limit (sizes follow ``lesion_scale`` only).

    Returns:
        :class:`Phantom` (image (H, W) uint16 12-bit, masks per class (H, W) uint8 0/1, labels per class, the
        kinds of the lesions placed).

    Raises:
        ValueError: unknown view/laterality/lesion, or no room left in the breast for a lesion.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be CC or MLO, got {view!r}")
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be L or R, got {laterality!r}")
    if calcification_mask not in ("specks", "cluster"):
        raise ValueError(f"calcification_mask must be 'specks' or 'cluster', got {calcification_mask!r}")
    if max_lesion_fraction is not None and not 0.0 < max_lesion_fraction <= 1.0:
        raise ValueError(f"max_lesion_fraction must be in (0, 1], got {max_lesion_fraction!r}")
    rng = np.random.default_rng(rng)
    rows, cols = np.ogrid[:height, :width]

    # Geometry, drawn for a left breast (chest wall at column 0); mirrored at the end for R.
    breast = cols < _breast_extent(height, width, view, rng)[:, None]
    skin_distance = ndimage.distance_transform_edt(breast)
    pectoral_side = np.full((height, width), -np.inf)
    if view == "MLO":
        # Signed distance (pixels) into the pectoral triangle bounded by the chest wall, the top edge and
        # the line c / base + r / depth = 1.
        base, depth = width * rng.uniform(0.26, 0.36), height * rng.uniform(0.3, 0.45)
        pectoral_side = (1.0 - cols / base - rows / depth) / math.hypot(1 / base, 1 / depth)

    # Parenchyma: density regions (beta 3) with finer strands (beta 2); glandular tissue gathers in the
    # central breast and fat at the periphery, which is also thinner (darker) under compression.
    central = np.clip(skin_distance / (0.3 * width), 0.0, 1.0)
    glandular = 1.6 * power_law_noise((height, width), 3.0, rng) + rng.uniform(-1.0, 0.5)
    density = (0.3 + 0.7 * central) / (1.0 + np.exp(-glandular))
    strands = power_law_noise((height, width), 2.0, rng)
    thickness = 0.35 + 0.65 * (1.0 - np.exp(-skin_distance / (0.05 * width)))
    tissue = (1100.0 + 1200.0 * density + 90.0 * strands) * thickness
    skin_width = max(1.0, 0.0025 * height)
    tissue += np.where(skin_distance <= skin_width, 250.0, 0.0)
    if view == "MLO":
        muscle = (2650.0 + 120.0 * strands) * np.clip(pectoral_side / max(2.0, 0.004 * height), 0.0, 1.0)
        tissue = np.maximum(tissue, muscle)
    image = np.where(breast, tissue, 0.0)

    # Lesions, each fully inside the breast, clear of the skin, the muscle and each other.
    masks = {cls: np.zeros((height, width), dtype=bool) for cls in CLASS_NAMES}
    placed: list[_Lesion] = []
    margin = 0.01 * height
    max_area = None if max_lesion_fraction is None else max_lesion_fraction * float(breast.sum())
    for kind in _resolve_kinds(lesions, rng):
        lesion = _drawn_lesion(
            kind, height, rng, _kind_scale(lesion_scale, kind), contrast_scale, calcification_mask, max_area
        )
        extent, reach = lesion.extent, lesion.reach
        allowed = breast & (skin_distance > extent + margin) & (pectoral_side < -(extent + margin))
        # The chest wall is not background for the distance transform, so keep the window inside the image.
        allowed &= (rows >= reach) & (rows < height - reach) & (cols >= reach) & (cols < width - reach)
        for other in placed:
            allowed &= np.hypot(rows - other.centre[0], cols - other.centre[1]) > extent + other.extent + margin
        candidates = np.flatnonzero(allowed)
        if candidates.size == 0:
            raise ValueError(f"no room for a {kind} in a {height}x{width} {view} phantom")
        centre_r, centre_c = np.unravel_index(rng.choice(candidates), (height, width))
        window = (slice(centre_r - reach, centre_r + reach + 1), slice(centre_c - reach, centre_c + reach + 1))
        image[window] += lesion.intensity
        masks[LESION_KINDS[kind]][window] |= lesion.mask
        placed.append(_Lesion((float(centre_r), float(centre_c)), extent, kind))

    image = np.where(breast, image + rng.normal(0.0, 20.0, image.shape), 0.0)  # quantum noise
    image = np.clip(np.rint(image), 0, MAX_VALUE).astype(np.uint16)
    if laterality == "R":
        image = image[:, ::-1]
        masks = {cls: mask[:, ::-1] for cls, mask in masks.items()}
    return Phantom(
        image=np.ascontiguousarray(image),
        masks={cls: np.ascontiguousarray(mask, dtype=np.uint8) for cls, mask in masks.items()},
        labels={cls: int(bool(mask.any())) for cls, mask in masks.items()},
        kinds=tuple(lesion.kind for lesion in placed),
    )


def as_scanned_film(image: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """A phantom as a scanned film would look: what a digitiser makes of a screen-film mammogram.

    The zero background becomes a noisy dark film background (film base + fog, scanner noise: never one
    constant value), the breast keeps its values above it, a bright burned-in label block with dark "text"
    sits in the film background at the top of the breast's bounding box, on the side away from the chest
    wall (it may touch the breast's outline), and a bright film-edge strip runs along the
    bottom border (touching the breast where it reaches the bottom). Same size and geometry as ``image``, so
    the phantom's lesion masks still apply.

    Args:
        image: (H, W) uint16 phantom (background 0). rng: Generator or seed.

    Returns:
        (H, W) uint16 in 0..4095.
    """
    rng = np.random.default_rng(rng)
    height, width = image.shape
    breast = image > 0
    background = rng.normal(180.0, 25.0, image.shape).clip(40, None)
    film = np.where(breast, image.astype(np.float64) + 180.0, background)
    # label: in the top corner of the breast's bounding box away from the chest wall, where the breast's
    # rounded outline leaves film background -- inside the crop, so the window would show it if kept
    rows, cols = np.flatnonzero(breast.any(axis=1)), np.flatnonzero(breast.any(axis=0))
    if rows.size == 0:
        rows, cols = np.array([0, height - 1]), np.array([0, width - 1])
    left_heavy = breast[:, : width // 2].sum() >= breast[:, width // 2 :].sum()
    lh, lw = max(4, (rows[-1] - rows[0]) // 14), max(6, (cols[-1] - cols[0]) // 6)
    top = rows[0] + lh // 3
    left = cols[-1] - lw - lw // 4 if left_heavy else cols[0] + lw // 4
    film[top : top + lh, left : left + lw] = 3900.0
    film[top + lh // 4 : top + 3 * lh // 4, left + lw // 6 : left + lw // 3] = 600.0  # the "text"
    film[top + lh // 4 : top + 3 * lh // 4, left + lw // 2 : left + 2 * lw // 3] = 600.0
    # film edge: a bright strip along the bottom border, a few pixels tall
    film[height - max(2, height // 100) :, :] = 3500.0
    return np.clip(np.round(film), 0, MAX_VALUE).astype(np.uint16)


def save_dicom_atomic(
    image: np.ndarray, path: str | os.PathLike, laterality: str | None, view: str | None, patient_id: str,
    pixel_spacing_mm: float | None = 0.1,
    film: bool = False,
) -> Path:
    """Write a phantom as a digital mammography DICOM (MG, MONOCHROME2, 16 bits allocated, 12 stored),
    atomically, with ImageLaterality, ViewPosition and PixelSpacing set as a FFDM system would; with ``film``
    as a scanned film archive stores it: Secondary Capture, ConversionType "DF" (digitized film), the scanner's
    NominalScannedPixelSpacing instead of PixelSpacing, Laterality instead of ImageLaterality.

    Args:
        image: (H, W) uint16 phantom.
        path: destination ``.dcm`` file.
        laterality: "L", "R" or None (tag left out); view: "CC", "MLO" or None (tag left out); patient_id.
        pixel_spacing_mm: spacing written for both axes, None for none.
        film: write as digitized film.
    """
    import pydicom  # deferred: only this writer needs it
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    # Digital Mammography X-Ray Image Storage - For Presentation; Secondary Capture for scanned film
    sop_class = "1.2.840.10008.5.1.4.1.1.7" if film else "1.2.840.10008.5.1.4.1.1.1.2"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "MG", patient_id
    if film:
        ds.ConversionType = "DF"
    if laterality:
        setattr(ds, "Laterality" if film else "ImageLaterality", laterality)
    if view:
        ds.ViewPosition = view
    if pixel_spacing_mm:
        setattr(ds, "NominalScannedPixelSpacing" if film else "PixelSpacing", [pixel_spacing_mm, pixel_spacing_mm])
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint16).tobytes()
    with atomic_output(path) as tmp:
        try:
            ds.save_as(tmp, enforce_file_format=True)
        except TypeError:  # pydicom 2.x (MONAI Label's stack) spells it write_like_original=False
            ds.save_as(tmp, write_like_original=False)
    return Path(path)


def generate_dataset(
    out_dir: str | os.PathLike,
    n_images: int = 8,
    height: int = 2944,
    width: int = 1920,
    prevalence: Mapping[str, float] | None = None,
    seed: int = 0,
    two_views: bool = False,
    fractions: Mapping[str, float] | None = None,
    image_format: str = "png",
    lesion_scale: float | Mapping[str, float] = 1.0,
    contrast_scale: float = 1.0,
    calcification_mask: str = "specks",
    max_attempts: int = 1,
    max_lesion_fraction: float | None = None,
) -> Path:
    """Write a phantom dataset: 16-bit PNG images, 0/255 mask PNGs and a split datalist JSON.

    Each breast is one patient (``phantom_NNNN``) imaged in one view (random CC/MLO) or, with
    ``two_views``, in CC and MLO (lesions of the same classes, placed independently in each view).
    In each split, ``round(prevalence[c] * breasts in the split)`` breasts, chosen at random, have a lesion
    of class c (the classes are drawn independently, so a breast can have both). Labels are noise-free. Mask files
    are written only for classes present in the image.

    ``lesion_scale``, ``contrast_scale``, ``calcification_mask`` and ``max_lesion_fraction`` are passed to
    :func:`make_phantom`. With ``max_attempts`` > 1 a view whose lesions find no room is drawn again (a new breast
    from ``[seed, breast, view, attempt]``) instead of failing, which large lesion scales need. ``image_format``
    "dicom" writes the images as DICOM (``.dcm``, see :func:`save_dicom_atomic`) instead of 16-bit PNG; masks stay
    PNG.

    Every item records the kinds of its lesions in ``"lesion_kinds"``: the ``LESION_KINDS`` keys joined by single
    spaces in class order (benign, malignant), e.g. ``"benign_mass calcification_cluster"``, and ``""`` for a
    lesion-free view. A string rather than a list so that items of different lesion counts still collate into a
    training batch; readers that do not know the key ignore it (the preprocessing passes it through).

    Layout: ``out_dir/images/<id>.png``, ``out_dir/masks/<id>_<class>.png``, ``out_dir/datalist.json``
    (patient-level split by ``fractions``, default 0.7/0.1/0.2). Every file is written atomically.

    Returns:
        Path of the datalist JSON.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if image_format not in ("png", "dicom"):
        raise ValueError(f"image_format must be 'png' or 'dicom', got {image_format!r}")
    prevalence = {"benign": 0.3, "malignant": 0.3} if prevalence is None else dict(prevalence)
    out_dir = Path(out_dir)
    views = VIEWS if two_views else (None,)
    n_breasts = math.ceil(n_images / len(views))

    fractions = DEFAULT_FRACTIONS if fractions is None else fractions
    # Lesions are assigned within each split (stratified), so validation and test sets get lesions too;
    # the split depends only on the patient ids and the seed, so it is computed before the images exist.
    patient_ids = [f"phantom_{index:04d}" for index in range(n_breasts)]
    patient_splits = patient_level_split([{"patient_id": pid} for pid in patient_ids], fractions, seed)
    lesion_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    positive: dict[str, set[int]] = {cls: set() for cls in CLASS_NAMES}
    for members in patient_splits.values():
        indices = [patient_ids.index(member["patient_id"]) for member in members]
        for cls in CLASS_NAMES:
            count = round(prevalence.get(cls, 0.0) * len(indices))
            positive[cls].update(lesion_rng.permutation(indices)[:count].tolist())
    items = []
    for breast_index in range(n_breasts):
        breast_rng = np.random.default_rng([seed, breast_index])
        laterality = "L" if breast_rng.uniform() < 0.5 else "R"
        breast_views = [v or ("CC" if breast_rng.uniform() < 0.5 else "MLO") for v in views]
        lesions = [cls for cls in CLASS_NAMES if breast_index in positive[cls]]
        for view_index, view in enumerate(breast_views):
            if len(items) == n_images:
                break
            for attempt in range(max(1, max_attempts)):
                view_rng = np.random.default_rng([seed, breast_index, view_index] + ([attempt] if attempt else []))
                try:
                    phantom = make_phantom(
                        height, width, view, laterality, lesions, view_rng, lesion_scale, contrast_scale,
                        calcification_mask, max_lesion_fraction,
                    )
                    break
                except ValueError:
                    if attempt + 1 >= max(1, max_attempts):
                        raise
            name = f"phantom_{breast_index:04d}_{laterality}-{view}"
            item = {
                "image": str(
                    save_dicom_atomic(phantom.image, out_dir / "images" / f"{name}.dcm", laterality, view, patient_ids[breast_index])
                    if image_format == "dicom"
                    else save_png_atomic(phantom.image, out_dir / "images" / f"{name}.png")
                ),
                "view": view,
                "laterality": laterality,
                "patient_id": patient_ids[breast_index],
                **phantom.labels,
                "lesion_kinds": " ".join(phantom.kinds),
            }
            for cls in CLASS_NAMES:
                if phantom.labels[cls]:
                    mask_path = out_dir / "masks" / f"{name}_{cls}.png"
                    item[f"mask_{cls}"] = str(save_png_atomic(phantom.masks[cls] * np.uint8(255), mask_path))
            items.append(item)
    splits = patient_level_split(items, fractions, seed)
    return write_datalist(splits, out_dir / "datalist.json")
