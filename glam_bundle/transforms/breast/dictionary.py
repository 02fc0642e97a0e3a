"""Dictionary-based wrapper around the breast masks of :mod:`glam_bundle.transforms.breast.array`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from glam_bundle.data.errors import BadInputError
from glam_bundle.transforms.breast.array import (
    background_level,
    breast_region,
    film_breast_mask,
    film_from_pixels,
    negative_image,
    original_breast_mask,
)
from glam_bundle.transforms.utils import as_meta_tensor, chest_wall_side, image_plane, source_name

__all__ = ["BreastMaskd", "InvertNegatived", "parse_film"]


def parse_film(value, name: str = "film"):
    """The ``film`` setting, strictly: True, False or "auto"; the strings "true"/"false"/"auto" (any case, as a
    command line gives them) are accepted. Anything else is a ValueError naming the setting."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "auto"):
        return {"true": True, "false": False, "auto": "auto"}[value.strip().lower()]
    raise ValueError(f"{name} must be true, false or \"auto\", got {value!r} of type {type(value).__name__}.")


class InvertNegatived(MapTransform):
    """Turn a negative mammogram (dense tissue dark, background white: :func:`negative_image`) positive.

    The image (C, H, W) becomes ``max + min - image``, so its flat background lands at the minimum, where the
    breast mask and the window's padding expect it. Recorded in the image meta: ``"inverted"`` (bool) and
    ``"inverted_source"`` ("pixels:background-at-maximum" when inverted, else "none").
    """

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = as_meta_tensor(d[key])
            inverted = negative_image(image_plane(image))
            if inverted:
                image = image.max() + image.min() - image
            image.meta.update({"inverted": inverted,
                               "inverted_source": "pixels:background-at-maximum" if inverted else "none"})
            d[key] = image
        return d


class BreastMaskd(MapTransform):
    """Breast foreground mask of the raw image, stored under ``mask_key`` as a (1, H, W) bool MetaTensor.

    Methods:

    - ``"original"``: the GLAM/NYU rule for digital mammograms with a zero background
      (:func:`original_breast_mask`: pixel > 0, erosion ``iterations``, largest component, dilation).
    - ``"film"``: scanned film (:func:`film_breast_mask`): Otsu thresholds and the largest component at
      the chest-wall side, so film borders, markers and burned-in labels are not taken for breast. The
      chest-wall side comes from DICOM PatientOrientation, else laterality (item or reader meta) and
      ``horizontal_flip``, when known (:func:`~glam_bundle.transforms.utils.chest_wall_side`).
    - ``"auto"``: per image, film or digital as :meth:`decide_film` finds (the item's ``"film"``, the file's
      DICOM tags, else the pixels), then ``"film"`` or ``"original"``.

    Keys: ``keys`` holds the image key ((C, H, W), channel 0 is used). With ``suppress_background`` the
    image pixels outside the mask are set to 0 (film background and labels vanish; after standardisation
    they equal the padding, as in digital images); ``"film"`` does so for images decided to be film only.
    With ``suppress_artefacts`` the images decided to be *digital* lose what lies outside the breast: every
    pixel > 0 outside :func:`breast_region` (the foreground components that the breast mask touches) is set
    to 0, the background, so burned-in labels and markers apart from the breast leave the window; the breast,
    including the edge corners that the mask's erosion/dilation cuts, is untouched, and so is the mask (crop
    and window geometry stay the original's). A label touching the breast stays. Recorded as
    ``"artefact_pixels"`` (how many were set to 0; 0 when not asked for or film).
    A digital image's background is its minimum (for a lossily stored image without a flat minimum its most
    frequent low value, :func:`background_level`, with JPEG's ringing below it clipped to it): when that is not 0
    (a VOI window or sigmoid VOI LUT maps the drawn background above 0, signed data below), the image is shifted
    so that it is, as the ``"original"`` rule and the window's zero padding assume; the value is recorded as
    ``"background_value"`` (0 otherwise).
    Recorded in the image meta: ``"breast_mask_method"``, ``"film"`` (bool) and ``"film_source"``
    ("setting", "datalist", "dicom:<tag>", "pixels:..."). The item's ``"film"`` key is consumed.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "breast_mask",
        method: str = "original",
        iterations: int = 100,
        suppress_background: bool = False,
        suppress_artefacts: bool = False,
        flip_key: str = "horizontal_flip",
        film_key: str = "film",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if method not in ("original", "film", "auto"):
            raise ValueError(f"method must be 'original', 'film' or 'auto', got {method!r}.")
        if suppress_background not in (True, False, "film"):
            raise ValueError(f"suppress_background must be true, false or 'film', got {suppress_background!r}.")
        self.mask_key = mask_key
        self.method = method
        self.iterations = iterations
        self.suppress_background = suppress_background
        if not isinstance(suppress_artefacts, (bool, np.bool_)):
            raise ValueError(f"suppress_artefacts must be true or false, got {suppress_artefacts!r}.")
        self.suppress_artefacts = bool(suppress_artefacts)
        self.flip_key = flip_key
        self.film_key = film_key

    def decide_film(self, data: Mapping, image, plane: np.ndarray) -> tuple[bool, str]:
        """Film or digital for this image, and the rule that decided (recorded as ``film``/``film_source``).

        ``method`` "film"/"original" -> "setting". With "auto": the item's ``"film"`` (true/false,
        "datalist"), else what the reader found in the file (``film_hint`` meta: DICOM DetectorType,
        ConversionType, SOP class, PresentationIntentType, digitiser manufacturer; source e.g.
        "dicom:ConversionType"), else the pixels (:func:`film_from_pixels`, told whether the file was stored
        with lossy compression).
        """
        if self.method != "auto":
            return self.method == "film", "setting"
        value = data.get(self.film_key)
        if value is not None and str(value).lower() not in ("auto", "none"):
            return parse_film(value, f"item '{self.film_key}'") is True, "datalist"
        meta = getattr(image, "meta", {}) or {}
        hint = str(meta.get("film_hint", "none")).lower()
        if hint in ("film", "digital"):
            return hint == "film", str(meta.get("film_hint_source", "dicom"))
        return film_from_pixels(plane, lossy=bool(meta.get("lossy_compression", False)))

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = as_meta_tensor(d[key])
            plane = image_plane(image)
            film, film_source = self.decide_film(d, image, plane)
            method = "film" if film else "original"
            lossy = bool((getattr(image, "meta", {}) or {}).get("lossy_compression", False))
            background = 0.0 if film else background_level(plane, lossy)
            if not film and (background != 0.0 or plane.min() < 0):
                # The original rule (pixel > 0) and the window's zero padding take a digital background of 0; a VOI
                # window or a sigmoid VOI LUT (GE) puts the drawn background above 0, a signed image below; JPEG's
                # ringing below a background above 0 is background too.
                image, plane = (image - background).clamp_min(0), np.maximum(plane - background, 0)
            if film:
                mask = film_breast_mask(plane, chest_wall_side(d, image, self.flip_key))
            else:
                mask = original_breast_mask(plane, self.iterations)
            if not mask.any():
                raise BadInputError(source_name(image), "no breast found (empty foreground mask)")
            artefact_pixels = 0
            if self.suppress_background is True or (self.suppress_background == "film" and film):
                image = image.clone()
                image[:, ~torch.as_tensor(mask)] = 0
            elif self.suppress_artefacts and not film:
                artefacts = (plane > 0) & ~breast_region(plane, mask)
                artefact_pixels = int(artefacts.sum())
                if artefact_pixels:
                    image = image.clone()
                    image[:, torch.as_tensor(artefacts)] = 0
            image.meta.update(
                {
                    "breast_mask_method": method,
                    "film": film,
                    "film_source": film_source,
                    "artefact_pixels": artefact_pixels,
                    "background_value": background,
                }
            )
            d[key] = image
            d.pop(self.film_key, None)  # decided and recorded in the meta; items with and without it collate
            d[self.mask_key] = MetaTensor(torch.as_tensor(mask)[None], meta={"filename_or_obj": source_name(image)})
        return d
