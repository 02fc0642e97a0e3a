"""Mammogram preprocessing of the GLAM bundle as MONAI transforms, one family per sub-package (as MONAI's own
``monai.transforms``): array-level functions in ``<family>/array.py``, dictionary transforms in
``<family>/dictionary.py``.

- ``breast``: negative images turned positive (:class:`InvertNegatived`), film or digital per image, breast
  foreground masks, the chest-wall side and the view read from the image (:class:`BreastMaskd`).
- ``spatial``: orientation, breast crop, best-centre window and its training noise, resampling to the NYU
  scale, and the map from raw-image points into the model frame.
- ``label``: image-level labels and stacked lesion masks (:class:`MakeLabeld`, :class:`StackMasksd`, a label image split
  by :class:`SplitLabelMapd`).
- ``post``: transforms of the network output (:class:`SelectOutputsd`; for MONAI Label :class:`SaliencyMapd`,
  :class:`SaliencyToLabeld`, :class:`ToWriterAxesd`).
- ``chain``: the preprocessing chain as four named pieces (:func:`load_transforms`, :func:`frame_transforms`,
  :func:`window_transforms`, :func:`finish_transforms`) and joined (:func:`default_preprocessing`).
- ``utils``: item-level helpers shared by the families.

Conventions: images are channel-first ``(C, H, W)`` with row = height index; the model window is
``(H, W) = glam_bundle.constants.MODEL_FRAME_SIZE = (2944, 1920)``; masks share the image geometry.

Every name is importable from ``glam_bundle.transforms`` (configs use ``_target_`` strings such as
``"glam_bundle.transforms.BreastMaskd"``), including the dataset caching of :mod:`glam_bundle.data.cache`
(``make_cached_dataset``, ``transform_fingerprint``, ``allow_cached_meta``).
"""

from glam_bundle.constants import NYU_PIXEL_SPACING_MM
from glam_bundle.data.cache import allow_cached_meta, make_cached_dataset, transform_fingerprint
from glam_bundle.transforms.breast.array import (
    chest_wall_on_right,
    film_breast_mask,
    film_from_pixels,
    negative_image,
    original_breast_mask,
    otsu_threshold,
    remove_thin_strips,
    view_from_image,
)
from glam_bundle.transforms.breast.dictionary import BreastMaskd, InvertNegatived, parse_film
from glam_bundle.transforms.chain import (
    default_preprocessing,
    finish_transforms,
    frame_transforms,
    load_transforms,
    window_transforms,
)
from glam_bundle.transforms.label.dictionary import MakeLabeld, SplitLabelMapd, StackMasksd, fill_outline
from glam_bundle.transforms.post.dictionary import SaliencyMapd, SaliencyToLabeld, SelectOutputsd, ToWriterAxesd
from glam_bundle.transforms.spatial.array import best_center, crop_geometry, map_to_model_frame, window_geometry
from glam_bundle.transforms.spatial.dictionary import (
    BestCenterWindowd,
    CropBreastd,
    OrientBreastd,
    RandWindowNoised,
    ResampleToSpacingd,
)

__all__ = [
    "NYU_PIXEL_SPACING_MM",
    "BreastMaskd",
    "InvertNegatived",
    "OrientBreastd",
    "CropBreastd",
    "BestCenterWindowd",
    "RandWindowNoised",
    "ResampleToSpacingd",
    "StackMasksd",
    "MakeLabeld",
    "SplitLabelMapd",
    "SelectOutputsd",
    "SaliencyMapd",
    "SaliencyToLabeld",
    "ToWriterAxesd",
    "original_breast_mask",
    "film_breast_mask",
    "otsu_threshold",
    "chest_wall_on_right",
    "film_from_pixels",
    "negative_image",
    "remove_thin_strips",
    "view_from_image",
    "parse_film",
    "fill_outline",
    "crop_geometry",
    "best_center",
    "window_geometry",
    "map_to_model_frame",
    "load_transforms",
    "frame_transforms",
    "window_transforms",
    "finish_transforms",
    "default_preprocessing",
    "transform_fingerprint",
    "allow_cached_meta",
    "make_cached_dataset",
]
