"""Dictionary transforms for the targets of an item: the image-level label and the stacked lesion masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.ndimage as ndi
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from glam_bundle.constants import CLASS_NAMES, LABEL_MAP_KEY, MASK_FILE_KEYS, MODEL_FRAME_SIZE
from glam_bundle.data.errors import BadInputError
from glam_bundle.transforms.utils import is_model_frame, source_name

__all__ = ["StackMasksd", "MakeLabeld", "SplitLabelMapd", "fill_outline"]


class SplitLabelMapd(MapTransform):
    """Split a loaded label image (0 background, 1 benign, 2 malignant; MONAI Label's datastore labels) into the
    per-class lesion masks and image-level labels that the rest of the chain reads.

    In: ``keys`` (default ``"label_map"``) a loaded (C, H, W) label image (channel 0 is used). Out:
    ``mask_benign``/``mask_malignant`` (1, H, W) bool and ``benign``/``malignant`` = 1 when the class has a pixel,
    else 0 (a lesion of class c present => y_c = 1); values given in the item already win. The key is removed.
    Items without it pass unchanged.
    """

    def __init__(self, keys: KeysCollection = LABEL_MAP_KEY, classes: Sequence[str] = CLASS_NAMES):
        super().__init__(keys, allow_missing_keys=True)
        self.classes = tuple(classes)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label_map = d.pop(key)
            plane = torch.as_tensor(label_map)[:1]
            values = sorted(int(v) if float(v).is_integer() else float(v) for v in torch.unique(plane).tolist())
            if not set(values) <= set(range(len(self.classes) + 1)):
                raise BadInputError(
                    source_name(label_map),
                    f"label map values {values[:8]} are not 0 (background) .. {len(self.classes)} "
                    f"({', '.join(f'{i} {name}' for i, name in enumerate(self.classes, 1))})",
                )
            for value, name in enumerate(self.classes, 1):
                mask = plane == value
                d[f"mask_{name}"] = MetaTensor(mask, meta=dict(getattr(label_map, "meta", {})))
                if d.get(name) is None:
                    d[name] = int(bool(mask.any()))
        return d


class StackMasksd(MapTransform):
    """Build the (2, H, W) lesion mask (benign, malignant) and its (2,) float32 ``has_mask`` flags.

    The mask is ``dtype`` (float32 by default, values 0/1); the preprocessing chain
    (:mod:`glam_bundle.transforms.chain`) keeps it bool through the geometry steps and the cache (4x smaller)
    and casts it to float32 at the end.

    ``keys`` = the per-class mask keys in channel order (default
    :data:`~glam_bundle.constants.MASK_FILE_KEYS`), each a loaded (C, H, W) image (any value > 0 counts as
    lesion) or absent (zeros, flag 0). The mask must have its image's spatial size, or ``model_frame_size``
    when the item's ``frame_key`` is ``"model"``; otherwise :class:`BadInputError` names the mask file. The
    per-class keys are removed (their content is in ``mask_key``) and ``frame_key`` is set to the resolved
    "raw"/"model", so batches collate. Items with ``"mask_outline": true`` (``outline_key``; DDSM-style closed
    lesion outlines, set by the folder listing) get their masks filled (:func:`fill_outline`); the key is
    consumed.
    """

    def __init__(
        self,
        keys: KeysCollection = MASK_FILE_KEYS,
        image_key: str = "image",
        mask_key: str = "mask",
        has_mask_key: str = "has_mask",
        frame_key: str = "mask_frame",
        model_frame_size: Sequence[int] = MODEL_FRAME_SIZE,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = True,
        outline_key: str = "mask_outline",
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.mask_key = mask_key
        self.has_mask_key = has_mask_key
        self.frame_key = frame_key
        self.model_frame_size = tuple(int(v) for v in model_frame_size)
        self.dtype = dtype
        self.outline_key = outline_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.image_key]
        model_frame = is_model_frame(d, self.frame_key)
        expected = self.model_frame_size if model_frame else tuple(image.shape[1:])
        channels, flags = [], []
        outline = bool(d.pop(self.outline_key, False))  # consumed: items with and without it collate
        for key in self.keys:
            mask = d.pop(key, None)
            if mask is None:
                channels.append(torch.zeros(expected, dtype=self.dtype))
                flags.append(0.0)
                continue
            if tuple(mask.shape[1:]) != expected:
                frame = "the model frame (mask_frame 'model')" if model_frame else "its image"
                raise BadInputError(
                    source_name(mask),
                    f"mask is {mask.shape[1]}x{mask.shape[2]} (HxW) but {frame} is {expected[0]}x{expected[1]}",
                )
            if outline:
                channels.append(torch.as_tensor(fill_outline(mask)).to(self.dtype))
            else:
                channels.append((torch.as_tensor(mask) > 0).any(dim=0).to(self.dtype))
            flags.append(1.0)
        d[self.mask_key] = MetaTensor(torch.stack(channels).as_subclass(torch.Tensor))
        d[self.has_mask_key] = torch.tensor(flags, dtype=torch.float32)
        d[self.frame_key] = "model" if model_frame else "raw"
        return d


def fill_outline(mask) -> np.ndarray:
    """Lesion region of an *outline* mask (DDSM / mini-DDSM ``*_Mask.jpg``: a thin closed contour with JPEG
    noise): channel-wise maximum above half its range, closed over small gaps (radius 2), holes filled.

    Args:
        mask: (C, H, W) mask values. Returns: (H, W) bool.
    """
    values = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32)
    plane = values.max(axis=0)
    low, high = float(plane.min()), float(plane.max())
    if high <= low:
        return np.zeros(plane.shape, dtype=bool)
    ring = plane > (low + high) / 2
    ring = ndi.binary_closing(ring, structure=np.ones((5, 5), bool)) | ring
    return ndi.binary_fill_holes(ring)


class MakeLabeld(MapTransform):
    """Image-level label ``label_key``: float32 (2,) = [benign, malignant], -1 where unknown.

    ``keys`` = the class keys in channel order (default :data:`~glam_bundle.constants.CLASS_NAMES`); a missing key,
    ``None`` or a negative value means unknown. The class keys are removed (their content is in the label)
    so that items with and without them collate.
    """

    def __init__(self, keys: KeysCollection = CLASS_NAMES, label_key: str = "label"):
        super().__init__(keys, allow_missing_keys=True)
        self.label_key = label_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        values = []
        for key in self.keys:
            value = d.pop(key, None)
            value = -1.0 if value is None else float(value)
            values.append(-1.0 if value < 0 else value)
        d[self.label_key] = torch.tensor(values, dtype=torch.float32)
        return d
