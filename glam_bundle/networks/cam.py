"""CAM baseline (Zhou et al. 2016) on GLAM's global backbone (paper section 4.2, appendix F).

The class activation map is a 1×1 convolution + sigmoid on the backbone's last feature map (h2, 46×30 for a
2944×1920 input) and the prediction its top-t% pool; t = 1.0 is the original's global average pooling, and the
paper tunes t in {1, 2, 3, 5, 10, 20, 100}%. It is :class:`GlobalNetwork` with one saliency level (``(2,)``);
this module only adds the full-resolution map and the GLAM-compatible forward, so that the bundle's configs,
engines, losses and evaluation run it unchanged (``configs/baselines/cam.json``, ``docs/baselines.md``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glam_bundle.networks.glam import GLAM
from glam_bundle.networks.global_network import GlobalNetwork

# GLAM's constructor arguments that CAM accepts and ignores (they concern the local module, the patches and
# fusion), so that a config or preset written for GLAM (crop_size, local_layers, ...) builds CAM too.
_GLAM_ARGUMENTS = frozenset(inspect.signature(GLAM.__init__).parameters) - {"self"}


class CAM(nn.Module):
    """Class activation maps on the global backbone, with top-t% pooling.

    Args:
        in_channels: image channels (1).
        num_classes: classes (2: channel 0 benign, 1 malignant).
        global_percent_t: t of the top-t% pooling; 1.0 (default) is global average pooling as in Zhou et al.
            (GLAM's name, so that ``network_def#global_percent_t`` and ``scripts/search.py`` apply).
        global_channels, global_blocks_per_stage: backbone size (defaults: the paper's, the same as GLAM's).
        centre_aligned: accepted for GLAM's presets; a single-level map is never resampled, so it changes nothing.
        full_resolution_maps: build ``saliency`` (and ``saliency_local``) at the input resolution; None (default):
            in evaluation mode only, as GLAM.
        **glam_arguments: any other argument of :class:`GLAM` (``crop_size``, ``local_layers``, ``gamma_c``, ...)
            is accepted and ignored; anything else is a TypeError.

    Forward: x (N, 1, H, W); ``global_only``, ``labels`` and ``breast_mask`` as GLAM's (``labels`` is unused;
    ``breast_mask`` zeroes the map outside the breast before the pooling, see :class:`GlobalNetwork`). Returns
    the global-module dict of GLAM with one scale: ``saliency_global`` (N, 2, h, w) the CAM on the h2 grid
    (46×30), ``y_global`` (N, 2) its top-t% pool, ``saliency_scales`` (N, 1, 2, h, w), ``y_scales`` (N, 1, 2),
    ``saliency_native_2`` (N, 2, h, w), ``z_global`` (N, 256); and, when full-resolution maps are built,
    ``saliency`` (N, 2, H, W) (the CAM nearest-upsampled, as GLAM upsamples S_g), ``saliency_local`` (the same
    tensor: CAM has one map and no local module, so the S_l and S_c rows of the evaluation report are the same
    map) and ``patch_locations`` (N, 0, 2) (no patches).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        global_percent_t: float = 1.0,
        global_channels: Sequence[int] = (16, 32, 64, 128, 256),
        global_blocks_per_stage: int = 2,
        centre_aligned: bool = False,
        full_resolution_maps: bool | None = None,
        **glam_arguments: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(glam_arguments) - _GLAM_ARGUMENTS)
        if unknown:
            raise TypeError(f"CAM got unexpected argument(s) {unknown}")
        self.global_module = GlobalNetwork(
            in_channels,
            num_classes,
            global_percent_t,
            gammas=(1.0,),
            channels=global_channels,
            blocks_per_stage=global_blocks_per_stage,
            centre_aligned=centre_aligned,
            saliency_levels=(2,),
        )
        self.full_resolution_maps = full_resolution_maps

    def forward(
        self,
        x: torch.Tensor,
        global_only: bool = False,
        labels: torch.Tensor | None = None,
        patches: bool = False,
        breast_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if patches:
            raise ValueError("CAM has no local module: it cannot run on patches (train it with train_global.json)")
        out = self.global_module(x, breast_mask=breast_mask)
        full_resolution = not self.training if self.full_resolution_maps is None else self.full_resolution_maps
        if global_only or not full_resolution:
            return out
        saliency = F.interpolate(out["saliency_global"], size=tuple(x.shape[-2:]), mode="nearest")
        locations = torch.zeros(x.shape[0], 0, 2, dtype=torch.long, device=x.device)
        out.update(saliency=saliency, saliency_local=saliency, patch_locations=locations)
        return out
