"""Fusion module of GLAM (paper section 3.2): ŷ_f = sigmoid(w_f [z_g, z_l])."""

from __future__ import annotations

import torch
from torch import nn


class FusionModule(nn.Module):
    """One fully connected layer on the concatenated global and local representations.

    Args:
        global_size: size of z_g (256).
        local_size: size of z_l (512).
        num_classes: outputs (2: benign, malignant).

    Forward: z_global (N, 256), z_local (N, 512) -> (N, 2) probabilities.
    """

    def __init__(self, global_size: int = 256, local_size: int = 512, num_classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(global_size + local_size, num_classes)

    def forward(self, z_global: torch.Tensor, z_local: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(torch.cat([z_global, z_local], dim=1)))
