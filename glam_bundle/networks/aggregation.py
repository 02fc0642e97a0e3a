"""Patch aggregation functions f_p of the local module (paper section 3.2): from K patch saliency maps and
patch representations to an image-level prediction ŷ_l and representation z_l."""

from __future__ import annotations

import torch
from torch import nn

from glam_bundle.networks.pooling import top_t_pool


class ConcatAggregation(nn.Module):
    """Concatenation-based aggregation: top-t% pooling over the K maps of each class put side by side.

    Args:
        percent_t: t of the top-t% pooling (paper: 0.2).

    Forward: patch_maps (N, K, C, a, b), patch_features (N, K, F) ->
        ``y_local`` (N, C) and ``z_local`` (N, F), the element-wise max over patches (the paper does not use
        z_l with this aggregation; the max keeps the fusion module usable with it).
    """

    def __init__(self, percent_t: float = 0.2) -> None:
        super().__init__()
        self.percent_t = percent_t

    def forward(self, patch_maps: torch.Tensor, patch_features: torch.Tensor) -> dict[str, torch.Tensor]:
        per_class = patch_maps.transpose(1, 2).flatten(2)  # (N, C, K·a·b)
        return {"y_local": top_t_pool(per_class, self.percent_t), "z_local": patch_features.amax(dim=1)}


class GatedAttentionAggregation(nn.Module):
    """Attention-based aggregation with the gated attention of Ilse et al. (2018).

    Patch predictions ŷ_k are top-t% pools of each A_k; weights α_k = softmax_k(wᵀ(tanh(V z_k) ⊙ σ(U z_k)));
    ŷ_l = Σ α_k ŷ_k and z_l = Σ α_k z_k.

    Args:
        feature_size: size F of z_k (512 for ResNet-34).
        hidden_size: size of the attention projections V and U (Ilse et al.: 128).
        percent_t: t of the per-patch top-t% pooling (paper: 0.2).

    Forward: patch_maps (N, K, C, a, b), patch_features (N, K, F) -> ``y_local`` (N, C),
        ``z_local`` (N, F), ``attention`` (N, K).
    """

    def __init__(self, feature_size: int = 512, hidden_size: int = 128, percent_t: float = 0.2) -> None:
        super().__init__()
        self.percent_t = percent_t
        self.attention_v = nn.Linear(feature_size, hidden_size)
        self.attention_u = nn.Linear(feature_size, hidden_size)
        self.attention_w = nn.Linear(hidden_size, 1)

    def forward(self, patch_maps: torch.Tensor, patch_features: torch.Tensor) -> dict[str, torch.Tensor]:
        y_patches = top_t_pool(patch_maps.flatten(3), self.percent_t)  # (N, K, C)
        gate = torch.tanh(self.attention_v(patch_features)) * torch.sigmoid(self.attention_u(patch_features))
        attention = torch.softmax(self.attention_w(gate).squeeze(-1), dim=1)  # (N, K)
        return {
            "y_local": (attention.unsqueeze(-1) * y_patches).sum(dim=1),
            "z_local": (attention.unsqueeze(-1) * patch_features).sum(dim=1),
            "attention": attention,
        }
