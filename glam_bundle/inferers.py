"""Inferers of the bundle."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn


class GLAMInferer(Inferer):
    """Run GLAM on a batch, optionally only its global module (global training stage, global-only evaluation).

    MONAI's ``SimpleInferer`` cannot fix a keyword of the network's forward, hence this class.

    Args:
        global_only: compute only the global module's outputs (no patch selection, no local module).
    """

    def __init__(self, global_only: bool = False) -> None:
        super().__init__()
        self.global_only = global_only

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.global_only:
            kwargs["global_only"] = True
        return network(inputs, *args, **kwargs)
