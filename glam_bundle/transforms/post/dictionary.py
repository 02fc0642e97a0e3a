"""Dictionary transforms on the network's output (MONAI's ``postprocessing`` of a workflow).

Two uses:

- the bundle's own evaluator keeps the output dict (:class:`SelectOutputsd`) for its writers and metrics;
- MONAI Label (``configs/inference.json`` ``postprocessing``, one unbatched item) turns the output into a label
  map on the input image: :class:`SaliencyMapd` (S_c, (2, H, W)) -> MONAI's ``Invertd`` with the preprocessing
  chain (the raw image's geometry) -> :class:`SaliencyToLabeld` ((1, H_raw, W_raw) uint8: 0 background,
  1 benign, 2 malignant) -> :class:`ToWriterAxesd` ((W_raw, H_raw), the (x, y) order MONAI Label's ``Restored``
  and image writers use).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["SelectOutputsd", "SaliencyMapd", "SaliencyToLabeld", "ToWriterAxesd"]


class SelectOutputsd(MapTransform):
    """Keep the listed entries of the network's output dict, detached and moved to the CPU (frees the
    device memory of the intermediate maps before the writers run).

    Args:
        keys: key of the network output dict (usually "pred").
        outputs: names of the entries to keep; missing ones are skipped (e.g. ``y_fusion`` without fusion).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        outputs: Sequence[str] = ("y_global", "y_local", "y_fusion", "saliency", "patch_locations"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.outputs = tuple(outputs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = {name: d[key][name].detach().cpu() for name in self.outputs if name in d[key]}
        return d


class SaliencyMapd(MapTransform):
    """Replace the network output under ``keys`` by its saliency map: a float32 MetaTensor (2, H, W) on the CPU.

    Accepts the GLAM output dict (entry ``saliency_key``, S_c), or a tensor that already is the map (the
    TorchScript ``saliency`` export, which MONAI Label runs when the bundle has ``models/model.ts`` only).
    """

    def __init__(self, keys: KeysCollection = "pred", saliency_key: str = "saliency", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.saliency_key = saliency_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, Mapping):
                if self.saliency_key not in value:
                    raise KeyError(f"'{key}' has no '{self.saliency_key}' entry (has: {sorted(value)})")
                value = value[self.saliency_key]
            if not isinstance(value, torch.Tensor) or value.ndim != 3:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"'{key}' must hold a (C, H, W) saliency map for one image, got {shape}")
            d[key] = MetaTensor(value.detach().float().cpu().as_subclass(torch.Tensor))
        return d


class SaliencyToLabeld(MapTransform):
    """Per-class maps (C, H, W) in [0, 1] -> one label map (1, H, W) uint8: 0 where every class is below
    ``threshold`` (background), else 1 + the class with the highest value (1 benign, 2 malignant).

    Args:
        threshold: a pixel is a lesion where its highest class value is at least this (0.5 by default; exposed
            to MONAI Label users through ``displayable_configs``). Given as a number or a string (MONAI Label
            sends option values as text).
    """

    def __init__(self, keys: KeysCollection = "pred", threshold: float | str = 0.5, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        try:
            self.threshold = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            maps = d[key]
            top, cls = torch.as_tensor(maps).max(dim=0, keepdim=True)
            label = torch.where(top >= self.threshold, cls + 1, torch.zeros_like(cls)).to(torch.uint8)
            d[key] = MetaTensor(label, meta=dict(maps.meta)) if isinstance(maps, MetaTensor) else label
        return d


class ToWriterAxesd(MapTransform):
    """A (1, H, W) label -> (W, H), the (x, y) order in which MONAI Label's ``Restored`` and its ITK writer read
    2D results (the bundle's reader loads (H, W), row first).

    MONAI Label's ``Restored`` compares the result's trailing size with the reference image's
    ``meta["spatial_shape"]`` and resizes on a mismatch; that entry is set to the same (W, H) order here so that
    ``Restored`` leaves the label as it is. Nothing else reads it after post-processing.

    Args:
        ref_image: key of the input image whose meta ``Restored`` reads.
    """

    def __init__(self, keys: KeysCollection = "pred", ref_image: str = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.ref_image = ref_image

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if label.ndim != 3 or label.shape[0] != 1:
                raise ValueError(f"'{key}' must be a (1, H, W) label map, got {tuple(label.shape)}")
            d[key] = torch.as_tensor(label)[0].T.contiguous().as_subclass(torch.Tensor)
            reference = d.get(self.ref_image)
            if isinstance(reference, MetaTensor):
                reference.meta["spatial_shape"] = [int(v) for v in d[key].shape]
        return d
