"""Training losses of GLAM (paper section 3.3 and appendix B)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GlobalModuleLoss(nn.Module):
    """L_g = Σ_n [BCE(y, ỹ_n) + λ Σ_(i,j) |S_n(i, j)|] over the three scales n of the global module.

    The BCE is averaged over the batch and classes; the ℓ1 sparsity term sums over classes and positions of
    each saliency map (at the h0 grid, 184×120 for 2944×1920 inputs, where the released model pools) and is
    averaged over the batch.

    Args:
        sparsity_weight: λ (the paper searches 10^[-5.5, -3.5]).

    Forward: pred, the GLAM/GlobalNetwork output dict with ``y_scales`` (N, 3, 2) and ``saliency_scales``
    (N, 3, 2, h, w); target (N, 2) image-level labels in {0, 1} -> scalar.
    """

    def __init__(self, sparsity_weight: float = 3e-5) -> None:
        super().__init__()
        if sparsity_weight < 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {sparsity_weight}")
        self.sparsity_weight = sparsity_weight

    def forward(self, pred: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if (target < 0).any():
            raise ValueError("training needs known image-level labels; the batch holds -1 (unknown)")
        y_scales = pred["y_scales"].clamp(1e-7, 1 - 1e-7)  # probabilities from sigmoid maps
        targets = target.to(y_scales.dtype).unsqueeze(1).expand_as(y_scales)
        bce = F.binary_cross_entropy(y_scales, targets, reduction="none").mean(dim=(0, 2)).sum()
        sparsity = pred["saliency_scales"].abs().sum(dim=(2, 3, 4)).mean(dim=0).sum()
        return bce + self.sparsity_weight * sparsity
