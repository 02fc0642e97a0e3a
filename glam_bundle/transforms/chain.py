"""The GLAM preprocessing chain, defined once as four named pieces that configs and scripts join.

The chain reproduces the original GLAM/NYU pipeline (``glam_reference.md`` §5): breast mask (§5.1 steps 2-5),
left-right orientation so that every breast faces right, crop to the breast bounding box with 50-px buffers
(§5.1), best-centre window of 2944x1920 with the original zero padding rules (§5.2, §5.3) and per-image
standardisation. Scanned film (CBIS-DDSM, MIAS) gets a robust breast mask (Otsu threshold + the largest
component at the chest-wall side), optional background suppression and an optional resampling step to
the NYU pixel scale. Training adds the original crop-position / crop-size noise of the window.

Order (``[...]`` only when asked for)::

    load_transforms:   LoadImaged(image) -> LoadImaged(mask_benign, mask_malignant, label_map) -> SplitLabelMapd
                       -> MakeLabeld -> StackMasksd
    frame_transforms:  ResampleToSpacingd (unless spacing=None) -> InvertNegatived -> BreastMaskd -> OrientBreastd
                       -> CropBreastd
    window_transforms: BestCenterWindowd -> [RandWindowNoised]
    finish_transforms: NormalizeIntensityd -> EnsureTyped -> DeleteItemsd(breast_mask)

:func:`default_preprocessing` is their concatenation in a ``Compose``; a config joins the same pieces, e.g.
``"$@load_transforms + @frame_transforms + @window_transforms + @finish_transforms"``. Every call returns new
transform objects. Lesion masks stay bool until the final ``EnsureTyped`` (cheaper geometry, 4x smaller cache
entries, see :func:`glam_bundle.data.cache.make_cached_dataset`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Compose, DeleteItemsd, EnsureTyped, LoadImaged, NormalizeIntensityd

from glam_bundle.constants import (
    BREAST_CROP_BUFFER,
    BREAST_MASK_EROSION,
    CLASS_NAMES,
    IMAGE_KEY,
    LABEL_MAP_KEY,
    MASK_FILE_KEYS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MODEL_FRAME_SIZE,
    PATCH_SIZE,
)
from glam_bundle.data.readers import MammogramReader
from glam_bundle.transforms.breast.dictionary import BreastMaskd, InvertNegatived, parse_film
from glam_bundle.transforms.label.dictionary import MakeLabeld, SplitLabelMapd, StackMasksd
from glam_bundle.transforms.spatial.dictionary import (
    BestCenterWindowd,
    CropBreastd,
    OrientBreastd,
    RandWindowNoised,
    ResampleToSpacingd,
)

__all__ = ["load_transforms", "frame_transforms", "window_transforms", "finish_transforms", "default_preprocessing"]

# The image and every mask that follows its geometry.
_GEOMETRY_KEYS = (IMAGE_KEY, "mask", "breast_mask")


def _require_bool(name: str, value) -> bool:
    """``value`` as a bool; anything else (e.g. the string "false", which is truthy) is a ValueError."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool (true/false), got {value!r} of type {type(value).__name__}.")
    return bool(value)


def _parse_bool(name: str, value) -> bool:
    """``value`` as a bool; the strings "true"/"false" (any case, as a command line gives them) are accepted,
    anything else is a ValueError naming the setting."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return _require_bool(name, value)


def load_transforms(
    min_size: int | Sequence[int] = PATCH_SIZE,
    model_frame_size: Sequence[int] = MODEL_FRAME_SIZE,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_bytes: int | None = MAX_IMAGE_BYTES,
    load_masks: bool | str = True,
) -> list:
    """Read the files of a datalist item and build its targets.

    In: a datalist item, ``"image"`` (path), optional ``"mask_benign"``/``"mask_malignant"`` (paths) or
    ``"label_map"`` (path of one label image: 0 background, 1 benign, 2 malignant, split by :class:`SplitLabelMapd`), optional
    ``"benign"``/``"malignant"`` (0/1, unknown when missing/None/negative), optional ``"mask_frame"``
    ("raw"/"model"), ``"view"``, ``"laterality"``, ``"horizontal_flip"``.

    Out: ``"image"`` MetaTensor (1, H, W) float32 raw intensities; ``"label"`` (2,) float32 (-1 unknown);
    ``"mask"`` (2, H, W) bool lesion masks ((2, *model_frame_size) when ``"mask_frame"`` is "model");
    ``"has_mask"`` (2,) float32; ``"mask_frame"`` "raw"/"model". The class and mask-file keys are removed.
    With ``load_masks`` false only the image is read (one ``LoadImaged``, as MONAI Label expects of
    ``configs/inference.json``): no ``"mask"``/``"has_mask"``, and mask-file keys in the item are ignored.

    Args:
        min_size: smallest accepted image (H, W) (the reader rejects smaller ones); lesion masks have none.
        model_frame_size: size (H, W) of masks drawn in the model frame.
        max_pixels, max_bytes: size limits of every image and mask file, checked from the file's header before
            decoding (see :class:`MammogramReader`; defaults 8000x8000 pixels, 128 MB decoded, from
            ``glam_bundle.constants``); None: no limit. A config raises them with e.g.
            ``"load_transforms": {"_target_": "glam_bundle.transforms.load_transforms", ..., "max_pixels": 100000000,
            "max_bytes": 200000000}``. They do not change what is decoded, so cache entries stay valid.
        load_masks: read the lesion masks (training, evaluation); false for inference (true/false or their strings).
    """
    limits = {"max_pixels": max_pixels, "max_bytes": max_bytes}
    load_image = LoadImaged(
        keys=IMAGE_KEY, reader=MammogramReader(min_size=min_size, **limits), image_only=True, ensure_channel_first=True
    )
    if not _parse_bool("load_masks", load_masks):
        return [load_image, MakeLabeld(keys=CLASS_NAMES, label_key="label"),
                DeleteItemsd(keys=(*MASK_FILE_KEYS, LABEL_MAP_KEY))]
    return [
        load_image,
        LoadImaged(
            keys=(*MASK_FILE_KEYS, LABEL_MAP_KEY),
            reader=MammogramReader(allow_constant=True, min_size=0, **limits),
            image_only=True,
            ensure_channel_first=True,
            allow_missing_keys=True,
        ),
        SplitLabelMapd(keys=LABEL_MAP_KEY, classes=CLASS_NAMES),
        MakeLabeld(keys=CLASS_NAMES, label_key="label"),
        StackMasksd(keys=MASK_FILE_KEYS, model_frame_size=model_frame_size, dtype=torch.bool),
    ]


def frame_transforms(
    film: bool | str = "auto",
    spacing: float | Sequence[float] | str | None = "auto",
    keep_artefacts: bool | str = False,
    geometry_scale: float = 1.0,
) -> list:
    """Find the breast, face it right and crop the image to it.

    In: the output of :func:`load_transforms`. Out: ``"image"`` (1, h, w) and ``"mask"`` (2, h, w) cropped to
    the breast bounding box with buffers (raw-frame masks only), ``"breast_mask"`` (1, h, w) bool, ``"view"`` and
    ``"laterality"`` strings, and the geometry meta data (``"flipped"``, ``"crop_box"``, anchor points) in the
    image meta.

    Args:
        film: "auto" (default): decided per image from the item's ``"film"``, the DICOM tags, else the pixels
            (:meth:`BreastMaskd.decide_film`); true: every image is scanned film (robust breast mask and
            background suppression); false: every image is digital (the original rule). The strings
            "true"/"false"/"auto" are accepted; anything else is a ValueError naming ``film``.
        spacing: "auto" (default): each image is resampled to the model frame's spacing from its item's
            ``"spacing_mm"`` or its DICOM (Imager)PixelSpacing, and left as it is when neither is known; a
            number or (row, col) pair in mm: used for every image; None (or "none"): no resampling step.
            Anything else is a ValueError naming ``spacing``.
        keep_artefacts: false (default): on digital images the pixels outside the breast -- burned-in labels,
            markers, edges not touching the breast's foreground component (:func:`breast_region`) -- are set
            to 0 before the window, as film windows are cleared; the breast mask, crop and window stay the
            original's. True: digital images are left as the original GLAM pipeline leaves them (its golden
            outputs; NYU 0_L-CC keeps its "L"). Film is cleared either way. The strings "true"/"false" are
            accepted (command line); anything else is a ValueError naming ``keep_artefacts``.
        geometry_scale: factor on the original's pixel constants, the breast-mask erosion (100 px) and the crop
            buffer (50 px), which were set for raw images of about the paper's frame. 1 (default) is the
            original; small synthetic images need their own size over 2944 (at 368x240 the 100-px erosion
            leaves no breast).
    """
    if not geometry_scale > 0:
        raise ValueError(f"geometry_scale must be a positive number, got {geometry_scale!r}")
    film = parse_film(film, "film")
    keep_artefacts = _parse_bool("keep_artefacts", keep_artefacts)
    if isinstance(spacing, str) and spacing.strip().lower() in ("none", "null"):
        spacing = None  # as a command line gives it
    transforms: list = []
    if spacing is not None:
        transforms.append(ResampleToSpacingd(keys=(IMAGE_KEY, "mask"), pixel_spacing=spacing))
    method = {True: "film", False: "original", "auto": "auto"}[film]
    return transforms + [
        InvertNegatived(keys=IMAGE_KEY),
        BreastMaskd(
            keys=IMAGE_KEY,
            method=method,
            suppress_background=True if film is True else "film" if film else False,
            suppress_artefacts=not keep_artefacts,
            iterations=max(1, round(BREAST_MASK_EROSION * geometry_scale)),
        ),
        OrientBreastd(keys=_GEOMETRY_KEYS),
        CropBreastd(keys=_GEOMETRY_KEYS, buffer=max(1, round(BREAST_CROP_BUFFER * geometry_scale))),
    ]


def window_transforms(
    image_size: Sequence[int] = MODEL_FRAME_SIZE,
    augment: bool = False,
    max_crop_noise: Sequence[int] = (100, 100),
    max_crop_size_noise: int = 100,
) -> list:
    """Cut the best-centre window of ``image_size`` out of the cropped breast, with the training noise.

    In: the output of :func:`frame_transforms`. Out: ``"image"`` (1, H, W), ``"mask"`` (2, H, W) and
    ``"breast_mask"`` (1, H, W) with (H, W) = ``image_size`` (model-frame masks are left as they are), and the
    window meta data (``"best_center"``, ``"window_pad"``, ``"window_box"``, with noise ``"noise_box"``).

    Args:
        image_size: model window (H, W).
        augment: add the original crop-position/-size noise (training). A bool.
        max_crop_noise, max_crop_size_noise: noise amplitudes used when ``augment``.
    """
    augment = _require_bool("augment", augment)
    noise = {"max_crop_noise": tuple(max_crop_noise), "max_crop_size_noise": int(max_crop_size_noise)}
    transforms: list = [BestCenterWindowd(keys=_GEOMETRY_KEYS, window_size=image_size, **(noise if augment else {}))]
    if augment:
        transforms.append(RandWindowNoised(keys=_GEOMETRY_KEYS, window_size=image_size, **noise))
    return transforms


def finish_transforms(keep_breast_mask: bool | str = False) -> list:
    """Standardise the image, cast the model inputs to float32 and drop the breast mask.

    In: the output of :func:`window_transforms`. Out: ``"image"`` MetaTensor (1, H, W) float32 standardised,
    ``"label"`` (2,), ``"mask"`` (2, H, W), ``"has_mask"`` (2,) (all float32; masks only if loaded), without
    ``"breast_mask"``; the
    other item keys (``"view"``, ``"laterality"``, ``"mask_frame"``, ...) pass through.

    Args:
        keep_breast_mask: keep ``"breast_mask"`` (1, H, W) as float32 for networks that restrict their saliency to
            the breast (``GLAM.forward(..., breast_mask=...)``, ``mask_saliency_to_breast`` in the configs).
    """
    keep_breast_mask = _parse_bool("keep_breast_mask", keep_breast_mask)
    return [
        # MONAI's NormalizeIntensity is the original (x - mean) / std with the population std (ddof 0);
        # it differs only for std == 0 (divides by 1; the original by 1e-5), where both give 0.
        NormalizeIntensityd(keys=IMAGE_KEY),
        EnsureTyped(keys=(IMAGE_KEY, "label", "mask", "has_mask"), dtype=torch.float32, allow_missing_keys=True),
        EnsureTyped(keys="breast_mask", dtype=torch.float32, track_meta=False, allow_missing_keys=True)
        if keep_breast_mask
        else DeleteItemsd(keys="breast_mask"),
    ]


def default_preprocessing(
    image_size: Sequence[int] = MODEL_FRAME_SIZE,
    film: bool | str = "auto",
    augment: bool = False,
    spacing: float | Sequence[float] | str | None = "auto",
    max_crop_noise: Sequence[int] = (100, 100),
    max_crop_size_noise: int = 100,
    min_size: int | Sequence[int] = PATCH_SIZE,
    keep_artefacts: bool | str = False,
    geometry_scale: float = 1.0,
    load_masks: bool = True,
) -> Compose:
    """The whole GLAM preprocessing chain as a MONAI ``Compose``: the four pieces joined (see the module).

    In: a datalist item (see :func:`load_transforms`). Out: see :func:`finish_transforms`, with (H, W) =
    ``image_size``.

    Args:
        image_size: model window (H, W); also the size of masks drawn in the model frame.
        film: "auto" (default), true or false: see :func:`frame_transforms`.
        augment: add the original crop-position/-size noise (training). A bool.
        spacing: "auto" (default), a spacing in mm or None: see :func:`frame_transforms`.
        max_crop_noise, max_crop_size_noise: noise amplitudes used when ``augment``.
        min_size: smallest accepted image (H, W).
        keep_artefacts: false (default) clears digital windows outside the breast; true keeps them as the
            original pipeline (see :func:`frame_transforms`).
        geometry_scale: factor on the breast-mask erosion and crop buffer (see :func:`frame_transforms`).
        load_masks: read the lesion masks (false: the image only, as ``configs/inference.json``).
    """
    return Compose(
        load_transforms(min_size, image_size, load_masks=load_masks)
        + frame_transforms(film, spacing, keep_artefacts, geometry_scale)
        + window_transforms(image_size, augment, max_crop_noise, max_crop_size_noise)
        + finish_transforms()
    )
