"""GLAM: the global module, patch selection, the local module, patch aggregation and fusion in one network
(paper section 3, figure 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glam_bundle.networks.aggregation import ConcatAggregation, GatedAttentionAggregation
from glam_bundle.networks.fusion import FusionModule
from glam_bundle.networks.global_network import GlobalNetwork, breast_mask_from_image
from glam_bundle.networks.local_network import LocalNetwork
from glam_bundle.networks.patch_selection import (
    crop_patches,
    paste_patch_maps,
    random_patch_locations,
    select_patch_locations,
)

AGGREGATIONS = {"concat": ConcatAggregation, "attention": GatedAttentionAggregation}


class GLAM(nn.Module):
    """Global-Local Activation Maps.

    Args:
        in_channels: image channels (1).
        num_classes: classes (2: channel 0 benign, 1 malignant).
        global_percent_t: t of the global top-t% pooling (released model: 0.03).
        local_percent_t: t of the local top-t% pooling (paper: 0.2; the released code computes its unused local
            prediction with 0.3).
        gammas: (γ0, γ1, γ2) of S_g = Σ γ_n S_n (0.2, 0.6, 0.2).
        num_patches: M, patches used in evaluation mode (paper and release: 1).
        num_patches_train: K, patches used in training mode (paper: 6).
        crop_size: patch size in image pixels (512, 512).
        aggregation: "attention" (gated attention, joint training) or "concat" (local-module training).
        use_fusion: add the fusion module and ``y_fusion``.
        gamma_c: weight of S_g in S_c = γ_c S_g + (1 − γ_c) S_l (paper: 0.5, appendix G.9).
        global_channels, global_blocks_per_stage: global backbone size (paper defaults).
        local_layers, local_channels: local backbone size (ResNet-34 defaults).
        freeze_global: keep the global module fixed (local-module training, paper section 3.3 step 3): its
            parameters get ``requires_grad=False`` and ``train()`` leaves it in evaluation mode, so BatchNorm
            uses and keeps its running statistics and patch selection sees the pretrained S_g. The attribute
            can be changed later; setting it to False makes the global parameters trainable again (except
            the unused ``heads.combine``).
        full_resolution_maps: build ``saliency_local`` and ``saliency`` (two N×2×H×W maps). None (default):
            only in evaluation mode, as training needs neither and they are large (45 MB per image at
            2944×1920 in float32).
        centre_aligned: upsample S1/S2 onto the h0 grid with each cell on its receptive-field centre instead of
            the release's floor-nearest (see :class:`MultiScaleSaliencyHeads`); False reproduces the release.
        saliency_levels: feature levels of the global module with a saliency head (default (0, 1, 2); ``(2,)``
            with ``gammas=(1.0,)``: GMIC's last-layer map, see :class:`GlobalNetwork` and ``networks.GMIC``).
        breast_mask_from_image: when ``forward`` gets no ``breast_mask``, derive it from the image
            (:func:`~glam_bundle.networks.global_network.breast_mask_from_image`), for weights trained with the
            saliency restricted to the breast (``mask_saliency_to_breast``) run by callers that pass only the image
            (MONAI Label, the exported files). False (default): no mask unless one is passed, as the paper.

    Forward: x (N, 1, H, W), e.g. H=2944, W=1920; ``global_only``; ``labels`` (N, C) image-level labels, used
    only in training mode: the K patches of images whose labels are all 0 are drawn at random
    (``random_patch_locations``, paper section 3.3 and appendix G.2), the others come from Algorithm 1 on S_g.
    Returns a dict with
        ``y_global`` (N, 2) ŷ_g; ``y_local`` (N, 2) ŷ_l; ``y_fusion`` (N, 2) ŷ_f when fusion is on;
        ``saliency_global`` (N, 2, h, w) S_g on the h0 grid (184×120);
        ``saliency_local`` (N, 2, H, W) S_l (zero outside the patches) and ``saliency`` (N, 2, H, W) S_c at
        the input resolution, when ``full_resolution_maps`` asks for them (by default in evaluation mode);
        ``patch_locations`` (N, K, 2) upper-left (row, col) of the patches;
        ``saliency_patches`` (N, K, 2, a, b) A_k (128×128 for 512 patches);
        ``saliency_scales`` (N, 3, 2, h, w) and ``y_scales`` (N, 3, 2) (S_n on the h0 grid and ỹ_n);
        ``saliency_native_0/1/2`` S_n at native resolution (184×120, 92×60, 46×30);
        ``z_global`` (N, 256), ``z_local`` (N, 512), and ``attention`` (N, K) with attention aggregation.
        With ``global_only=True`` only the global module's entries are computed. ``breast_mask`` (N, 1, H, W)
        restricts S_g (and so patch selection) to the breast (see :class:`GlobalNetwork`; not in the paper).
    ``forward_patches(patches)`` runs only the local part (local module and aggregation) on patches already cut
    out, (N, K, 1, P, P): local-module training on the stage-2 patch cache.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        global_percent_t: float = 0.03,
        local_percent_t: float = 0.2,
        gammas: Sequence[float] = (0.2, 0.6, 0.2),
        num_patches: int = 1,
        num_patches_train: int = 6,
        crop_size: Sequence[int] = (512, 512),
        aggregation: str = "attention",
        use_fusion: bool = True,
        gamma_c: float = 0.5,
        global_channels: Sequence[int] = (16, 32, 64, 128, 256),
        global_blocks_per_stage: int = 2,
        local_layers: Sequence[int] = (3, 4, 6, 3),
        local_channels: Sequence[int] = (64, 128, 256, 512),
        freeze_global: bool = False,
        full_resolution_maps: bool | None = None,
        centre_aligned: bool = False,
        saliency_levels: Sequence[int] = (0, 1, 2),
        breast_mask_from_image: bool = False,
    ) -> None:
        super().__init__()
        self.breast_mask_from_image = bool(breast_mask_from_image)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
        if not 0.0 <= gamma_c <= 1.0:
            raise ValueError(f"gamma_c must be in [0, 1], got {gamma_c}")
        self.num_patches = num_patches
        self.num_patches_train = num_patches_train
        self.crop_size = tuple(crop_size)
        self.gamma_c = gamma_c
        self.global_module = GlobalNetwork(
            in_channels,
            num_classes,
            global_percent_t,
            gammas,
            global_channels,
            global_blocks_per_stage,
            centre_aligned=centre_aligned,
            saliency_levels=saliency_levels,
        )
        self.local_module = LocalNetwork(num_classes, layers=local_layers, channels=local_channels)
        local_size = self.local_module.representation_size
        if aggregation == "attention":
            self.aggregation = GatedAttentionAggregation(local_size, percent_t=local_percent_t)
        else:
            self.aggregation = ConcatAggregation(local_percent_t)
        self.fusion = FusionModule(self.global_module.representation_size, local_size, num_classes) if use_fusion else None
        self.full_resolution_maps = full_resolution_maps
        self.freeze_global = freeze_global

    @property
    def freeze_global(self) -> bool:
        """Whether the global module is kept fixed (see the class arguments)."""
        return self._freeze_global

    @freeze_global.setter
    def freeze_global(self, value: bool) -> None:
        self._freeze_global = bool(value)
        unused = getattr(self.global_module.heads, "combine", None)
        for param in self.global_module.parameters():
            param.requires_grad_(not self._freeze_global and param is not unused)
        self.global_module.train(self.training and not self._freeze_global)

    def train(self, mode: bool = True) -> GLAM:
        # MONAI's trainers call network.train() every iteration: a frozen global module must stay in eval mode
        # (running BatchNorm statistics, unchanged patch selection), not only have requires_grad=False.
        super().train(mode)
        if self._freeze_global:
            self.global_module.eval()
        return self

    def forward(
        self,
        x: torch.Tensor,
        global_only: bool = False,
        labels: torch.Tensor | None = None,
        patches: bool = False,
        breast_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if patches:  # x holds cut-out patches (N, K, 1, P, P); through forward so that DDP synchronises gradients
            return self.forward_patches(x)
        image_size = tuple(x.shape[-2:])
        if image_size[0] < self.crop_size[0] or image_size[1] < self.crop_size[1]:
            raise ValueError(f"input {image_size} is smaller than the {self.crop_size} patch")
        if breast_mask is None and self.breast_mask_from_image:
            breast_mask = breast_mask_from_image(x)
        out = self.global_module(x, breast_mask=breast_mask)
        if global_only:
            return out
        num_patches = self.num_patches_train if self.training else self.num_patches
        locations = select_patch_locations(out["saliency_global"], image_size, self.crop_size, num_patches)
        if self.training and labels is not None:
            locations = self._random_locations_for_negatives(locations, labels, image_size)
        patches = crop_patches(x[:, :1], locations, self.crop_size)  # (N, K, 1, P, P)
        out.update(self.forward_patches(patches))
        patch_maps = out["saliency_patches"]
        if self.fusion is not None:
            out["y_fusion"] = self.fusion(out["z_global"], out["z_local"])
        out["patch_locations"] = locations
        full_resolution = not self.training if self.full_resolution_maps is None else self.full_resolution_maps
        if full_resolution:
            saliency_local = paste_patch_maps(patch_maps, locations, image_size, self.crop_size)
            # S_c = γ_c S_g + (1 − γ_c) S_l in place on the fresh upsampled S_g: one N×2×H×W allocation instead of
            # three (0.40 s -> 0.15 s per 2944×1920 image measured on 2 busy cores; bit-identical for γ_c = 0.5)
            saliency = F.interpolate(out["saliency_global"], size=image_size, mode="nearest")
            saliency = saliency.mul_(self.gamma_c).add_(saliency_local, alpha=1.0 - self.gamma_c)
            out.update(saliency_local=saliency_local, saliency=saliency)
        return out

    def forward_patches(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """The local module and the aggregation on patches already cut out (local-module training on the
        stage-2 patch cache, paper section 3.3 step 3); ``forward`` runs its local part through this method.

        Args:
            patches: (N, K, 1, P, P) with (P, P) = ``crop_size``, e.g. a batch of
                ``glam_bundle.data.patch_cache.PatchCacheDataset`` items.

        Returns:
            dict with ``y_local`` (N, 2) ŷ_l, ``z_local`` (N, 512), ``saliency_patches`` (N, K, 2, a, b) A_k and,
            with attention aggregation, ``attention`` (N, K). The global module is not run (no ``y_global``, no
            fusion).
        """
        if patches.ndim != 5:
            raise ValueError(f"patches must be (N, K, C, P, P), got shape {tuple(patches.shape)}")
        if tuple(patches.shape[-2:]) != self.crop_size:
            raise ValueError(
                f"patches are {tuple(patches.shape[-2:])} but the network's crop_size is {self.crop_size}: "
                "build the patch cache with the network's crop_size"
            )
        n, k = patches.shape[:2]
        local = self.local_module(patches.flatten(0, 1))
        patch_maps = local["saliency_patch"].unflatten(0, (n, k))
        out = dict(self.aggregation(patch_maps, local["z_patch"].unflatten(0, (n, k))))
        out["saliency_patches"] = patch_maps
        return out

    def _random_locations_for_negatives(
        self, locations: torch.Tensor, labels: torch.Tensor, image_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Replace the Algorithm 1 locations (N, K, 2) of images whose labels (N, C) are all 0 by random ones."""
        n, k = locations.shape[:2]
        if labels.ndim != 2 or labels.shape[0] != n:
            raise ValueError(f"labels must be (N, C) with N = {n} images, got shape {tuple(labels.shape)}")
        negative = (labels == 0).all(dim=1).to(locations.device)
        # Drawn for every image (no data-dependent branch or host sync); positives keep Algorithm 1's choice.
        random_locations = random_patch_locations(n, image_size, self.crop_size, k, device=locations.device)
        return torch.where(negative.view(n, 1, 1), random_locations, locations)


class GLAMSaliency(GLAM):
    """GLAM returning only the combined saliency map S_c (N, 2, H, W), for tools that need one tensor
    (``monai.bundle verify_net_in_out``, MONAI Label, TorchScript export). Same weights and arguments as GLAM;
    ``full_resolution_maps`` None means True here (S_c is the only output, in either mode)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.full_resolution_maps is None:
            self.full_resolution_maps = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)["saliency"]
