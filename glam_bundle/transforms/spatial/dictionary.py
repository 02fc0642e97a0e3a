"""Dictionary-based geometry transforms: orientation, breast crop, best-centre window, window noise, resampling.

The image key (``image_key``) drives the geometry; ``keys`` lists the image and every mask key that must follow it
(masks move with nearest-neighbour/threshold semantics). Items whose ``"mask_frame"`` is ``"model"`` carry lesion
masks already drawn in the preprocessed model frame (the NYU sample segmentation): these transforms then leave the
``model_frame_keys`` alone (the original never flips or windows masks).

Geometry bookkeeping is written into the image's ``MetaTensor.meta`` so that a model-frame pixel can be mapped
back to the raw image (:func:`glam_bundle.transforms.spatial.array.map_to_model_frame`): ``"flipped"`` (bool,
left-right flip applied), ``"flipped_vertically"`` (bool, top-bottom flip of an image stored upside down),
``"crop_box"`` (rows/cols ``[y0, y1, x0, x1]`` of the crop in the oriented raw frame),
``"best_center"`` ([row, col] in the crop), ``"window_pad"`` ([top, bottom, right] zero padding) and
``"window_box"`` ([top, bottom, left, right] of the window in the padded crop), ``"resample_factor"``
([row, col]) and, after noise, ``"noise_box"``.

Every transform here is a MONAI ``InvertibleTransform``: it pushes one entry of its own onto the
``applied_operations`` of each MetaTensor it moves (the inner MONAI crops, pads, flips and resizes run untraced),
holding what its ``inverse`` needs. So ``Compose.inverse`` or MONAI's ``Invertd(keys="pred", transform=<chain>,
orig_keys="image")`` puts a model-frame map (C, H, W) back on the raw image's (C, H_raw, W_raw) grid: regions cut
away come back as 0. Entries are matched by class name, not instance id, so a chain rebuilt in another process
(a dataset cache, a server) inverts them too.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import BorderPad, Flip, InvertibleTransform, MapTransform, RandomizableTransform, Resize, SpatialCrop
from monai.utils import TraceKeys, ensure_tuple

from glam_bundle.constants import (
    CHEST_WALL_CLEAR_RATIO,
    MODEL_FRAME_SIZE,
    NYU_PIXEL_SPACING_MM,
    SMALL_BREAST_WINDOW_SHARE,
)
from glam_bundle.data.errors import BadInputError
from glam_bundle.transforms.breast.array import chest_wall_evidence, view_from_image
from glam_bundle.transforms.spatial.array import best_center, crop_geometry, spacing_pair, window_geometry
from glam_bundle.transforms.utils import (
    as_meta_tensor,
    chest_wall_side_with_rule,
    image_plane,
    is_model_frame,
    laterality_with_source,
    resolve_view,
    source_name,
    stored_upside_down,
    view_with_source,
)

logger = logging.getLogger(__name__)

__all__ = ["OrientBreastd", "CropBreastd", "BestCenterWindowd", "RandWindowNoised", "ResampleToSpacingd"]


class _GeometryMapTransform(MapTransform, InvertibleTransform):
    """Base of the geometry transforms: the image drives the geometry, mask keys follow it.

    Keys listed in ``model_frame_keys`` are skipped for items whose ``frame_key`` is ``"model"``. The
    breast mask (``"breast_mask"``) always follows when the item has one, even if ``keys`` omits it: later
    steps read it and must see it in the image's geometry.
    """

    breast_mask_key = "breast_mask"

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.model_frame_keys = ensure_tuple(model_frame_keys)
        self.frame_key = frame_key

    def follow_keys(self, data: Mapping) -> list[Hashable]:
        """Keys (other than the image) that take the image's geometry for this item."""
        skip = self.model_frame_keys if is_model_frame(data, self.frame_key) else ()
        keys = [key for key in self.key_iterator(data) if key != self.image_key and key not in skip]
        if self.breast_mask_key in data and self.breast_mask_key not in keys:
            keys.append(self.breast_mask_key)
        return keys

    # --- invertibility: one traced entry per transform and tensor ---------------------------------------------

    def record(self, tensor, orig_size: Sequence[int], **extra_info):
        """Push this transform's entry (``orig_size`` = spatial size before it, ``extra_info`` = what the inverse
        needs) onto ``tensor``'s ``applied_operations``; plain tensors are returned as they are."""
        if isinstance(tensor, MetaTensor) and get_track_meta():
            self.push_transform(tensor, orig_size=[int(v) for v in orig_size], extra_info=extra_info)
        return tensor

    def inverse(self, data: Mapping) -> dict:
        """Undo this transform on every key whose MetaTensor carries its entry on top of ``applied_operations``.

        Keys this transform never moved (missing, plain tensors, model-frame masks) are left as they are; a
        tensor whose most recent entry is another transform's while one of this transform's lies below is a
        RuntimeError (the chain is being inverted out of order).
        """
        d = dict(data)
        name = type(self).__name__
        for key in self.key_iterator(d):
            tensor = d[key]
            operations = getattr(tensor, "applied_operations", None) or []
            if not any(op.get(TraceKeys.CLASS_NAME) == name for op in operations):
                continue
            if operations[-1].get(TraceKeys.CLASS_NAME) != name:
                raise RuntimeError(
                    f"{name}.inverse: the most recent transform of '{key}' is "
                    f"{operations[-1].get(TraceKeys.CLASS_NAME)}, not {name}; invert the chain in reverse order."
                )
            entry = operations.pop()
            d[key] = self.inverse_tensor(tensor, entry[TraceKeys.ORIG_SIZE], entry[TraceKeys.EXTRA_INFO])
        return d

    def inverse_tensor(self, tensor: torch.Tensor, orig_size: Sequence[int], extra_info: Mapping) -> torch.Tensor:
        """``tensor`` (C, h, w) back to the spatial size ``orig_size`` it had before this transform."""
        raise NotImplementedError


class _Untraced:
    """Calls a MONAI transform with its tracing off: the geometry transforms record one entry of their own instead.

    Setting ``transform.tracing = False`` once is not enough: MONAI keeps ``tracing`` per thread (and a pickled
    transform, e.g. in a DataLoader worker, starts traced again), so the inverse run in the inference writer's thread
    would push the inner flip onto the image. ``trace_transform(False)`` turns it off in the calling thread, per call.
    """

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, *args, **kwargs):
        with self.transform.trace_transform(False):
            return self.transform(*args, **kwargs)


def _resize(tensor: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """``tensor`` (C, h, w) resized to ``size`` with ``mode`` for floating point data; "nearest" (what ``Invertd``'s
    ``nearest_interp`` writes), masks and labels use nearest-exact, and bool/integer tensors keep their dtype."""
    size = tuple(int(v) for v in size)
    if tuple(tensor.shape[1:]) == size:
        return tensor
    floating = torch.is_floating_point(tensor)
    mode = mode if floating and mode != "nearest" else "nearest-exact"
    out = _Untraced(Resize(size, mode=mode))(tensor if floating else tensor.float())
    if tensor.dtype == torch.bool:
        return out > 0.5
    return out if floating else out.round().to(tensor.dtype)


class OrientBreastd(_GeometryMapTransform):
    """Flip image and masks left-right so that the breast faces right (chest wall on the left).

    ``mode="laterality"``: left breasts stay, right breasts are flipped (the original with
    horizontal_flip 'NO'; 'YES' in the item's ``flip_key`` reverses this). Laterality comes from the item
    key ``"laterality"``, else from the image meta (the reader copies DICOM ImageLaterality/Laterality).
    Without ``flip_key`` in the item, a DICOM PatientOrientation whose rows run anterior or posterior says
    directly where the chest wall is and comes first (``"orientation_rule"`` "patient orientation"). An image
    whose PatientOrientation says it is stored upside down (:func:`stored_upside_down`) is also flipped top to
    bottom (meta ``"flipped_vertically"``; in either mode).
    When laterality is unknown, or with ``mode="auto"``, the image content decides
    (:func:`chest_wall_evidence` on ``breast_mask_key``, or on pixel > 0 when there is no breast mask); it also
    decides against the laterality when it is clear (``CHEST_WALL_CLEAR_RATIO``) and says the opposite (a view
    stored mirrored, a wrong tag: ``"orientation_rule"`` "content (laterality disagrees)", logged).

    Laterality and view come from the item ("datalist"), the reader's DICOM tags ("dicom") or the file name
    of the common datasets ("filename": ``LEFT_CC``, ``_L_MLO``, ``L-CC``, ``RMLO``); an unknown laterality
    is the side of the chest wall found by the content rule ("image"; not in ``mode="auto"``, which ignores
    laterality and keeps what the sources say, "none" when nothing does); an unknown view is
    read from the image (:func:`view_from_image`: pectoral muscle in the chest-wall top corner => MLO,
    "image") when there is a breast mask and ``view_from_image``, else ``default_view`` ("default").

    Keys: ``keys`` = the image (C, H, W) and the masks that follow it ((C, H, W), any dtype). Writes the
    image meta ``"flipped"``, ``"flipped_vertically"``, ``"orientation_rule"`` ("laterality"/"patient orientation"/
    "content"/"content (laterality disagrees)"/"content (patient orientation disagrees)"),
    ``"laterality"``, ``"laterality_source"``, ``"view"``, ``"view_source"`` and sets the item's
    ``"laterality"``/``"view"`` to the resolved values (laterality "none" when unknown) so batches collate.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        image_key: str = "image",
        mode: str = "laterality",
        breast_mask_key: str = "breast_mask",
        flip_key: str = "horizontal_flip",
        default_view: str = "CC",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
        view_from_image: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        self.view_from_image = view_from_image
        if mode not in ("laterality", "auto"):
            raise ValueError(f"mode must be 'laterality' or 'auto', got {mode!r}.")
        self.mode = mode
        self.breast_mask_key = breast_mask_key
        self.flip_key = flip_key
        self.default_view = default_view
        self.flipper = _Untraced(Flip(spatial_axis=1))
        self.vertical_flipper = _Untraced(Flip(spatial_axis=0))

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = as_meta_tensor(d[self.image_key])
        side, rule = chest_wall_side_with_rule(d, image, self.flip_key) if self.mode == "laterality" else (None, "")
        breast = d.get(self.breast_mask_key)
        on_right, clearness = chest_wall_evidence(image_plane(breast) if breast is not None else image_plane(image) > 0)
        content_side = "right" if on_right else "left"
        if side is None:
            rule, side = "content", content_side
        elif side != content_side and clearness >= CHEST_WALL_CLEAR_RATIO:
            # the laterality (and horizontal_flip) or PatientOrientation put the chest wall where the image clearly
            # has none: a view stored mirrored or a wrong tag; the image is what must face right
            logger.warning("%s: its %s puts the chest wall on the %s, the image clearly has it on the %s "
                           "(%.1f times the breast pixels): oriented by the image", source_name(image), rule, side,
                           content_side, clearness)
            rule, side = f"content ({rule} disagrees)", content_side
        flipped = side == "right"
        laterality, laterality_source = laterality_with_source(d, image)
        upside_down = stored_upside_down(image, laterality)
        side_found = rule.startswith("content") or rule == "patient orientation"
        if laterality is None and side_found and self.mode == "laterality":
            # nothing names the breast: the side of its chest wall does (horizontal_flip 'YES' mirrors it)
            mirrored = str(d.get(self.flip_key, "NO")).upper() == "YES"
            laterality, laterality_source = ("R" if (side == "right") != mirrored else "L"), "image"
        laterality, laterality_source = laterality or "none", laterality_source or "none"
        view, view_source = view_with_source(d, image)
        if view is None:
            # no tag, item or file name: the image says (pectoral muscle in the chest-wall top corner => MLO)
            if breast is not None and self.view_from_image:
                plane = image_plane(breast).astype(bool)
                plane = plane[::-1] if upside_down else plane
                view, view_source = view_from_image(plane[:, ::-1] if flipped else plane), "image"
            else:
                view, view_source = self.default_view, "default"
        shape = image.shape[1:]
        for key in self.follow_keys(d):
            d[key] = self.record(self._flip(d[key], flipped, upside_down), shape, flipped=flipped,
                                 flipped_vertically=upside_down)
        image = self.record(self._flip(image, flipped, upside_down), shape, flipped=flipped,
                            flipped_vertically=upside_down)
        image.meta.update(
            {
                "flipped": flipped,
                "flipped_vertically": upside_down,
                "orientation_rule": rule,
                "oriented_shape": [int(v) for v in image.shape[1:]],
                "laterality": laterality,
                "laterality_source": laterality_source,
                "view": view,
                "view_source": view_source,
            }
        )
        d[self.image_key] = image
        d["laterality"], d["view"] = laterality, view
        return d

    def _flip(self, tensor: torch.Tensor, horizontally: bool, vertically: bool) -> torch.Tensor:
        tensor = self.flipper(tensor) if horizontally else tensor
        return self.vertical_flipper(tensor) if vertically else tensor

    def inverse_tensor(self, tensor: torch.Tensor, orig_size: Sequence[int], extra_info: Mapping) -> torch.Tensor:
        return self._flip(tensor, extra_info["flipped"], extra_info.get("flipped_vertically", False))


class CropBreastd(_GeometryMapTransform):
    """crop_mammogram (§5.1): crop image and masks to the breast bounding box with 50-px buffers.

    Works on right-facing images (after :class:`OrientBreastd`); the box comes from ``breast_mask_key``
    ((1, H, W) bool). Buffers: ``buffer`` rows above and below, ``buffer`` columns on the nipple (right)
    side, each limited by the image. Records in the image meta ``"crop_box"`` [y0, y1, x0, x1] and the
    anchor points the best-centre step needs, ``"rightmost_points"`` and ``"bottommost_points"`` (see
    :func:`crop_geometry`). With ``legacy_flip_offset`` the anchor columns of flipped images carry the
    original's +1 (it measured them on the unflipped image), which reproduces its best centres exactly.

    Keys: ``keys`` = image (C, H, W) and the masks that follow it; output spatial size (y1-y0, x1-x0).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        image_key: str = "image",
        breast_mask_key: str = "breast_mask",
        buffer: int = 50,
        rightmost_from_ratio: float = 1 / 3,
        legacy_flip_offset: bool = True,
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        self.breast_mask_key = breast_mask_key
        self.buffer = buffer
        self.rightmost_from_ratio = rightmost_from_ratio
        self.legacy_flip_offset = legacy_flip_offset

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = as_meta_tensor(d[self.image_key])
        if self.breast_mask_key not in d:
            raise KeyError(f"CropBreastd needs the breast mask '{self.breast_mask_key}' (run BreastMaskd first).")
        mask = image_plane(d[self.breast_mask_key]).astype(bool)
        if not mask.any():
            raise BadInputError(source_name(image), "no breast found (empty foreground mask)")
        offset = int(self.legacy_flip_offset and bool(image.meta.get("flipped", False)))
        geometry = crop_geometry(mask, self.buffer, self.rightmost_from_ratio, offset)
        y0, y1, x0, x1 = geometry["crop_box"]
        cropper = _Untraced(SpatialCrop(roi_start=(y0, x0), roi_end=(y1, x1)))
        shape = image.shape[1:]
        image = self.record(cropper(image), shape, crop_box=[y0, y1, x0, x1])
        for key in self.follow_keys(d):
            d[key] = self.record(cropper(d[key]), shape, crop_box=[y0, y1, x0, x1])
        image.meta.update(geometry)
        d[self.image_key] = image
        return d

    def inverse_tensor(self, tensor: torch.Tensor, orig_size: Sequence[int], extra_info: Mapping) -> torch.Tensor:
        y0, y1, x0, x1 = (int(v) for v in extra_info["crop_box"])
        border = [y0, int(orig_size[0]) - y1, x0, int(orig_size[1]) - x1]
        return _Untraced(BorderPad(spatial_border=border, mode="constant", value=0))(tensor)


class BestCenterWindowd(_GeometryMapTransform):
    """The original's best-centre window (§5.2 + §5.3) of size ``window_size`` (default 2944x1920).

    On the cropped, right-facing image: foreground = image > 0 (channel 0); the best centre from
    :func:`best_center` with the view's rule (CC: right edge anchored at the breast's rightmost point,
    rows optimised; MLO: anchored at the bottom-most and rightmost points); zero padding when the image
    is smaller than the window (CC rows split top/bottom, MLO rows at the bottom, columns on the right);
    a window sticking out is shifted inside. Needs the meta written by :class:`CropBreastd`.

    With crop noise to come (:class:`RandWindowNoised`), pass the same ``max_crop_noise`` and
    ``max_crop_size_noise``: the padding then keeps the original's noise margin and the output is the
    window extended by up to that margin on each side (what the noise may reach); meta ``"window_box"``
    is then given relative to the output. With zero noise (inference) the output is exactly the window.

    Keys: ``keys`` = image (C, H, W) and the masks that follow it (zero/False padded). View from the
    item's ``"view"`` or the image meta, else ``default_view``. Meta written: ``"best_center"``,
    ``"window_pad"`` [top, bottom, right], ``"window_box"``.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        window_size: Sequence[int] = MODEL_FRAME_SIZE,
        image_key: str = "image",
        default_view: str = "CC",
        max_crop_noise: Sequence[int] = (0, 0),
        max_crop_size_noise: int = 0,
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        self.window_size = tuple(int(v) for v in window_size)
        self.default_view = default_view
        self.max_crop_noise = tuple(int(v) for v in max_crop_noise)
        self.max_crop_size_noise = int(max_crop_size_noise)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = as_meta_tensor(d[self.image_key])
        if "rightmost_points" not in image.meta:
            raise KeyError("BestCenterWindowd needs the crop meta data of CropBreastd (rightmost/bottommost points).")
        view = resolve_view(d, image, self.default_view)
        plane = image_plane(image)
        self._hint_downscaled(image, plane.shape)
        center = best_center(
            plane > 0, view, int(image.meta["rightmost_points"][1]), int(image.meta["bottommost_points"][0]), self.window_size
        )
        margin = [noise + self.max_crop_size_noise for noise in self.max_crop_noise]
        (pad_top, pad_bottom, pad_right), box = window_geometry(plane.shape, center, view, self.window_size, margin)
        padded_h, padded_w = plane.shape[0] + pad_top + pad_bottom, plane.shape[1] + pad_right
        top, bottom = max(box[0] - margin[0], 0), min(box[1] + margin[0], padded_h)
        left, right = max(box[2] - margin[1], 0), min(box[3] + margin[1], padded_w)
        pad = _Untraced(BorderPad(spatial_border=[pad_top, pad_bottom, 0, pad_right], mode="constant", value=0))
        cut = _Untraced(SpatialCrop(roi_start=(top, left), roi_end=(bottom, right)))
        record = {"pad": [pad_top, pad_bottom, pad_right], "cut": [top, bottom, left, right]}
        image = self.record(cut(pad(image)), plane.shape, **record)
        for key in self.follow_keys(d):
            d[key] = self.record(cut(pad(d[key])), plane.shape, **record)
        image.meta.update(
            {
                "view": view,
                "best_center": [int(center[0]), int(center[1])],
                "window_pad": [pad_top, pad_bottom, pad_right],
                "window_box": [box[0] - top, box[1] - top, box[2] - left, box[3] - left],
                "window_origin": [top, left],
            }
        )
        d[self.image_key] = image
        d["view"] = view
        return d

    _hinted_downscaled = False

    def _hint_downscaled(self, image, crop_shape: Sequence[int]) -> None:
        """Say once per run when a breast of unknown pixel spacing covers little of the window: a downscaled copy
        (a dataset shipped at reduced size) is shown to the network far smaller than it was trained on."""
        share = crop_shape[0] * crop_shape[1] / (self.window_size[0] * self.window_size[1])
        if image.meta.get("spacing_source") != "none" or share >= SMALL_BREAST_WINDOW_SHARE:
            return
        if not BestCenterWindowd._hinted_downscaled:
            BestCenterWindowd._hinted_downscaled = True
            logger.warning(
                "%s: its breast covers %.0f %% of the model window at its stored scale, and its pixel spacing is "
                "unknown: if the images are downscaled copies, give their pixel spacing ('spacing_mm' in the "
                "datalist items, or --frame_transforms#spacing MM for every image of the run) so that they are "
                "resampled to %.2f mm (said once).",
                source_name(image), 100 * share, NYU_PIXEL_SPACING_MM,
            )

    def inverse_tensor(self, tensor: torch.Tensor, orig_size: Sequence[int], extra_info: Mapping) -> torch.Tensor:
        height, width = (int(v) for v in orig_size)
        pad_top, pad_bottom, pad_right = (int(v) for v in extra_info["pad"])
        top, bottom, left, right = (int(v) for v in extra_info["cut"])
        padded_h, padded_w = height + pad_top + pad_bottom, width + pad_right
        uncut = _Untraced(BorderPad(spatial_border=[top, padded_h - bottom, left, padded_w - right], mode="constant"))
        unpad = _Untraced(SpatialCrop(roi_start=(pad_top, 0), roi_end=(pad_top + height, width)))
        return unpad(uncut(tensor))


class RandWindowNoised(RandomizableTransform, _GeometryMapTransform):
    """The original training augmentation of the window: crop-position noise and crop-size noise.

    Input: the output of :class:`BestCenterWindowd` built with the same noise settings (the window with
    its noise margin, meta ``"window_box"``). As the original ``sample_crop_best_center`` +
    ``sample_crop``: a position multiplier per axis ~ U(-1, 1) (forced away from an image border the
    window touches) moves the window by ``round(m * min(max_crop_noise, room))``; then each of the four
    borders moves by ``round(u * n)``, u ~ U(-1, 1), where n = min(max_crop_size_noise, room left on
    every side) for the longer axis and ``round(n * short/long)`` for the shorter; the cut is resized
    back to ``window_size`` (bicubic for the image as the original's cv2 INTER_CUBIC, nearest for masks; both
    with half-pixel centres, PyTorch's ``nearest-exact``, so masks stay aligned). Defaults are the original's
    ``max_crop_noise=(100, 100)``, ``max_crop_size_noise=100``.

    Keys: image (C, H, W) and masks; masks in the model frame (``frame_key`` "model") are window-sized:
    they are placed in the margin frame (zero outside) and cut the same way. Meta ``"noise_box"`` records
    the window [top, bottom, left, right] that was cut, relative to the input.
    """

    backend = [*Resize.backend]

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask", "breast_mask"),
        window_size: Sequence[int] = MODEL_FRAME_SIZE,
        max_crop_noise: Sequence[int] = (100, 100),
        max_crop_size_noise: int = 100,
        prob: float = 1.0,
        image_key: str = "image",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        RandomizableTransform.__init__(self, prob)
        _GeometryMapTransform.__init__(self, keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        self.window_size = tuple(int(v) for v in window_size)
        self.max_crop_noise = np.asarray(max_crop_noise, dtype=np.int64)
        self.max_crop_size_noise = int(max_crop_size_noise)
        self._position = np.zeros(2)
        self._size = np.zeros(4)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        # Same draws as the original: the position multiplier only when there is position noise.
        self._position = self.R.uniform(-1.0, 1.0, size=2) if self.max_crop_noise.any() else np.zeros(2)
        self._size = self.R.uniform(-1.0, 1.0, size=4)

    def noise_box(self, shape: Sequence[int], box: Sequence[int]) -> list[int]:
        """The noisy window [top, bottom, left, right] for an input of spatial ``shape`` holding ``box``."""
        height, width = int(shape[0]), int(shape[1])
        top, bottom, left, right = (int(v) for v in box)
        position = self._position.copy()
        for axis, (start, end, size) in enumerate(((top, bottom, height), (left, right, width))):
            if start == 0:
                position[axis] = abs(position[axis])
            elif end == size:
                position[axis] = -abs(position[axis])
        room = np.array(
            [height - bottom if position[0] >= 0 else top, width - right if position[1] >= 0 else left]
        )
        shift = np.round(position * np.minimum(self.max_crop_noise, room)).astype(np.int64)
        top, bottom, left, right = top + shift[0], bottom + shift[0], left + shift[1], right + shift[1]

        size_noise = min(self.max_crop_size_noise, top, height - bottom, left, width - right)
        win_h, win_w = self.window_size
        if win_h >= win_w:
            vertical, horizontal = size_noise, round(size_noise * win_w / win_h)
        else:
            vertical, horizontal = round(size_noise * win_h / win_w), size_noise
        borders = np.round(np.array([vertical, vertical, horizontal, horizontal]) * self._size).astype(np.int64)
        return [int(top + borders[0]), int(bottom + borders[1]), int(left + borders[2]), int(right + borders[3])]

    def __call__(self, data: Mapping, randomize: bool = True) -> dict:
        d = dict(data)
        if randomize:
            self.randomize()
        image = as_meta_tensor(d[self.image_key])
        shape = tuple(image.shape[1:])
        box = image.meta.get("window_box", [0, shape[0], 0, shape[1]])
        if not self._do_transform:
            noisy = [int(v) for v in box]
        else:
            noisy = self.noise_box(shape, box)
        cut = _Untraced(SpatialCrop(roi_start=(noisy[0], noisy[2]), roi_end=(noisy[1], noisy[3])))
        resize_image = _Untraced(Resize(self.window_size, mode="bicubic"))
        resize_mask = _Untraced(Resize(self.window_size, mode="nearest-exact"))

        def place(mask):
            # a model-frame mask covers exactly the noise-free window: put it into the margin frame
            border = [box[0], shape[0] - box[1], box[2], shape[1] - box[3]]
            return _Untraced(BorderPad(spatial_border=border, mode="constant", value=0))(mask)

        out = cut(image)
        if tuple(out.shape[1:]) != self.window_size:
            out = resize_image(out)
        self.record(out, shape, noise_box=noisy, mode="bilinear")
        model_keys = self.model_frame_keys if is_model_frame(d, self.frame_key) else ()
        keys = [key for key in self.key_iterator(d) if key != self.image_key]
        if self.breast_mask_key in d and self.breast_mask_key not in keys:
            keys.append(self.breast_mask_key)
        for key in keys:
            mask = place(d[key]) if key in model_keys else d[key]
            mask = cut(mask)
            if tuple(mask.shape[1:]) != self.window_size:
                dtype = mask.dtype
                mask = resize_mask(mask.float())
                mask = mask > 0.5 if dtype == torch.bool else mask.to(dtype)
            d[key] = self.record(mask, shape, noise_box=noisy, mode="nearest")
        out.meta["noise_box"] = noisy
        d[self.image_key] = out
        return d

    def inverse_tensor(self, tensor: torch.Tensor, orig_size: Sequence[int], extra_info: Mapping) -> torch.Tensor:
        top, bottom, left, right = (int(v) for v in extra_info["noise_box"])
        tensor = _resize(tensor, (bottom - top, right - left), extra_info.get("mode", "bilinear"))
        border = [top, int(orig_size[0]) - bottom, left, int(orig_size[1]) - right]
        return _Untraced(BorderPad(spatial_border=border, mode="constant", value=0))(tensor)


class ResampleToSpacingd(_GeometryMapTransform):
    """Rescale an image to the model frame's pixel spacing (bilinear image, nearest-exact masks).

    The NYU model frame is assumed to have ``target_spacing`` =
    :data:`~glam_bundle.constants.NYU_PIXEL_SPACING_MM` = 0.1 mm per pixel (an assumption, see the constant's
    comment; the GLAM paper does not state it). The output size is ``round(size * pixel_spacing /
    target_spacing)`` per axis, e.g. mini-MIAS (0.2 mm, 1024x1024) -> 2048x2048. Run it before
    :class:`BreastMaskd` (the original's 100-pixel erosion is in NYU pixels).

    ``pixel_spacing="auto"`` takes the spacing per image: the item's ``spacing_mm`` (a float or [row, col];
    source "datalist", written by the dataset builders where the dataset documents it), else the spacing the
    reader found in the file (``file_spacing_mm``: DICOM ImagerPixelSpacing / PixelSpacing, source e.g.
    "dicom:ImagerPixelSpacing"). Without either the image is left as it is (today's behaviour, said once in
    the log) and ``spacing_source`` is "none". A number or pair is used for every image (source "setting").

    Keys: image (C, H, W) and masks (model-frame masks are skipped). Meta ``"resample_factor"`` [row, col]
    (output/input size, [1, 1] when not resampled), ``"pixel_spacing_mm"`` (after resampling; 0 when unknown),
    ``"source_spacing_mm"`` [row, col] (0 when unknown) and ``"spacing_source"``. The item's ``spacing_mm``
    is consumed.

    Args:
        pixel_spacing: source spacing in mm, a float or (row, col), or "auto".
        target_spacing: spacing of the model frame in mm.
    """

    _warned_no_spacing = False

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        pixel_spacing: float | Sequence[float] | str = 0.2,
        target_spacing: float = NYU_PIXEL_SPACING_MM,
        image_key: str = "image",
        spacing_key: str = "spacing_mm",
        model_frame_keys: KeysCollection = ("mask",),
        frame_key: str = "mask_frame",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, image_key, model_frame_keys, frame_key, allow_missing_keys)
        if isinstance(pixel_spacing, str):
            if pixel_spacing.lower() != "auto":
                raise ValueError(f"spacing must be a number, a (row, col) pair, \"auto\" or None, got {pixel_spacing!r}.")
            self.pixel_spacing = "auto"
        else:
            self.pixel_spacing = spacing_pair(pixel_spacing, "spacing")
        self.target_spacing = float(target_spacing)
        self.spacing_key = spacing_key

    def spacing_for(self, data: Mapping, image) -> tuple[tuple[float, float] | None, str]:
        """(row, col) spacing in mm of this image and its source, ``(None, "none")`` when unknown."""
        if self.pixel_spacing != "auto":
            return self.pixel_spacing, "setting"
        value = data.get(self.spacing_key)
        if value is not None and not (isinstance(value, str) and value.lower() in ("none", "")):
            return spacing_pair(value, f"item '{self.spacing_key}'"), "datalist"
        meta = getattr(image, "meta", {}) or {}
        file_spacing = [float(v) for v in np.asarray(meta.get("file_spacing_mm", [0.0, 0.0])).ravel()[:2]]
        if len(file_spacing) == 2 and all(v > 0 for v in file_spacing):
            return (file_spacing[0], file_spacing[1]), str(meta.get("file_spacing_source", "dicom"))
        return None, "none"

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = as_meta_tensor(d[self.image_key])
        spacing, source = self.spacing_for(d, image)
        d.pop(self.spacing_key, None)  # recorded in the meta; items with and without it collate
        if spacing is None:
            if not ResampleToSpacingd._warned_no_spacing:
                ResampleToSpacingd._warned_no_spacing = True
                logger.warning(
                    "No pixel spacing for %s (no DICOM (Imager)PixelSpacing, no 'spacing_mm' in the item): such "
                    "images are used at their stored scale, not resampled to %.2f mm (spacing_source 'none'; "
                    "said once).",
                    source_name(image),
                    self.target_spacing,
                )
            image.meta.update(
                {"resample_factor": [1.0, 1.0], "pixel_spacing_mm": 0.0, "source_spacing_mm": [0.0, 0.0],
                 "spacing_source": "none"}
            )
            d[self.image_key] = self.record(image, image.shape[1:], mode="bilinear")
            for key in self.follow_keys(d):
                self.record(d[key], image.shape[1:], mode="nearest")
            return d
        shape = image.shape[1:]
        size = tuple(max(1, round(n * s / self.target_spacing)) for n, s in zip(shape, spacing))
        factor = [size[0] / image.shape[1], size[1] / image.shape[2]]
        image = self.record(_resize(image, size, "bilinear"), shape, mode="bilinear")
        for key in self.follow_keys(d):
            d[key] = self.record(_resize(d[key], size, "nearest"), shape, mode="nearest")
        image.meta.update(
            {
                "resample_factor": factor,
                "pixel_spacing_mm": self.target_spacing,
                "source_spacing_mm": [float(spacing[0]), float(spacing[1])],
                "spacing_source": source,
            }
        )
        d[self.image_key] = image
        return d


    def inverse_tensor(self, tensor: torch.Tensor, orig_size: Sequence[int], extra_info: Mapping) -> torch.Tensor:
        return _resize(tensor, orig_size, extra_info.get("mode", "bilinear"))
