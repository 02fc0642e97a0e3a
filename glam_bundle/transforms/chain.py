"""The GLAM preprocessing chain assembled from the transform families (for scripts and tests).

The chain reproduces the original GLAM/NYU pipeline (``glam_reference.md`` §5): breast mask (§5.1 steps 2-5),
left-right orientation so that every breast faces right, crop to the breast bounding box with 50-px buffers
(§5.1), best-centre window of 2944x1920 with the original zero padding rules (§5.2, §5.3) and per-image
standardisation. Scanned film (CBIS-DDSM, MIAS) gets a robust breast mask (Otsu threshold + the largest
component at the chest-wall side), optional background suppression and an optional resampling step to
the NYU pixel scale. Training adds the original crop-position / crop-size noise of the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged, NormalizeIntensityd

from glam_bundle.constants import CLASS_NAMES, MASK_FILE_KEYS, MODEL_FRAME_SIZE
from glam_bundle.data.readers import MammogramReader
from glam_bundle.transforms.breast.dictionary import BreastMaskd
from glam_bundle.transforms.label.dictionary import MakeLabeld, StackMasksd
from glam_bundle.transforms.spatial.dictionary import (
    BestCenterWindowd,
    CropBreastd,
    OrientBreastd,
    RandWindowNoised,
    ResampleToSpacingd,
)

__all__ = ["default_preprocessing"]


def default_preprocessing(
    image_size: Sequence[int] = MODEL_FRAME_SIZE,
    film: bool = False,
    augment: bool = False,
    spacing: float | Sequence[float] | None = None,
    max_crop_noise: Sequence[int] = (100, 100),
    max_crop_size_noise: int = 100,
) -> Compose:
    """The whole GLAM preprocessing chain as a MONAI ``Compose`` (for scripts and tests).

    LoadImaged (MammogramReader) -> MakeLabeld -> StackMasksd -> [ResampleToSpacingd] -> BreastMaskd ->
    OrientBreastd -> CropBreastd -> BestCenterWindowd -> [RandWindowNoised] -> NormalizeIntensityd ->
    EnsureTyped. Output item: ``image`` MetaTensor (1, h, w) float32 standardised, ``label`` (2,),
    ``mask`` (2, h, w), ``has_mask`` (2,) (all float32), ``breast_mask`` (1, h, w) bool, with (h, w) =
    ``image_size``, plus ``view``, ``laterality``, ``mask_frame`` strings and the other item keys. Lesion
    masks stay bool until the final EnsureTyped (cheaper geometry, 4x smaller cache entries).

    Args:
        image_size: model window (H, W).
        film: scanned film: robust breast mask and background suppression (else the original rule).
        augment: add the original crop-position/-size noise (training).
        spacing: source pixel spacing in mm; when given, images are first resampled to the NYU scale.
        max_crop_noise, max_crop_size_noise: noise amplitudes used when ``augment``.
    """
    geometry_keys = ("image", "mask", "breast_mask")
    noise = {"max_crop_noise": tuple(max_crop_noise), "max_crop_size_noise": int(max_crop_size_noise)}
    transforms: list = [
        LoadImaged(keys="image", reader=MammogramReader(), image_only=True, ensure_channel_first=True),
        LoadImaged(
            keys=MASK_FILE_KEYS,
            reader=MammogramReader(allow_constant=True),
            image_only=True,
            ensure_channel_first=True,
            allow_missing_keys=True,
        ),
        MakeLabeld(keys=CLASS_NAMES, label_key="label"),
        StackMasksd(keys=MASK_FILE_KEYS, model_frame_size=image_size, dtype=torch.bool),
    ]
    if spacing is not None:
        transforms.append(ResampleToSpacingd(keys=("image", "mask"), pixel_spacing=spacing))
    transforms += [
        BreastMaskd(keys="image", method="film" if film else "original", suppress_background=film),
        OrientBreastd(keys=geometry_keys),
        CropBreastd(keys=geometry_keys),
        BestCenterWindowd(keys=geometry_keys, window_size=image_size, **(noise if augment else {})),
    ]
    if augment:
        transforms.append(RandWindowNoised(keys=geometry_keys, window_size=image_size, **noise))
    transforms += [
        # MONAI's NormalizeIntensity is the original (x - mean) / std with the population std (ddof 0);
        # it differs only for std == 0 (divides by 1; the original by 1e-5), where both give 0.
        NormalizeIntensityd(keys="image"),
        EnsureTyped(keys=("image", "label", "mask", "has_mask"), dtype=torch.float32),
    ]
    return Compose(transforms)
