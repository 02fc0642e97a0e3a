"""Top-t% pooling, the aggregation function f_agg of GLAM (paper appendix B)."""

from __future__ import annotations

import torch
from torch import nn


def top_t_count(num_values: int, percent_t: float) -> int:
    """Number of values averaged by top-t% pooling: ``int(round(n * t))`` (Python's half-to-even rounding,
    as the released code), at least 1.

    ``num_values`` may be a 0-dim tensor: ``torch.jit.trace`` records tensor sizes as tensors, and ``int`` makes
    the count a constant of the traced graph (a traced network keeps the input size it was traced with).
    """
    return max(1, int(round(int(num_values) * percent_t)))


def top_t_pool(values: torch.Tensor, percent_t: float) -> torch.Tensor:
    """Mean of the largest ``t`` fraction of the values along the last dimension.

    Args:
        values: (..., n) tensor.
        percent_t: fraction t in (0, 1] (0.03 means top 3%).

    Returns:
        (...) tensor.
    """
    k = top_t_count(values.shape[-1], percent_t)
    return values.topk(k, dim=-1).values.mean(dim=-1)


class TopTPooling(nn.Module):
    """Top-t% pooling of saliency maps: (N, C, h, w) -> (N, C), the mean of the ``t·h·w`` largest values
    per sample and class.

    Args:
        percent_t: fraction t of the spatial positions that are averaged (released global module: 0.03).
    """

    def __init__(self, percent_t: float) -> None:
        super().__init__()
        if not 0.0 < percent_t <= 1.0:
            raise ValueError(f"percent_t must be in (0, 1], got {percent_t}")
        self.percent_t = percent_t

    def forward(self, saliency: torch.Tensor) -> torch.Tensor:
        return top_t_pool(saliency.flatten(2), self.percent_t)

    def extra_repr(self) -> str:
        return f"percent_t={self.percent_t}"
