"""GLAM with tensor outputs, for the tools that cannot take its dict: TorchScript and ONNX export, and
``monai.bundle verify_net_in_out`` (docs/export.md).

``GLAM.forward`` returns a dict of a dozen tensors, some only in one mode. The export network returns the tuple
``(saliency, prediction, patch_locations)`` and the saliency network the map alone; both run the same
``GLAM.forward`` (same weights, same numerics) and only select its outputs.
"""

from __future__ import annotations

import copy

import torch

from glam_bundle.networks.glam import GLAM, GLAMSaliency

# Names of GLAMExport's outputs, in order (also the ONNX output names).
EXPORT_OUTPUTS: tuple[str, str, str] = ("saliency", "prediction", "patch_locations")


class GLAMExport(GLAM):
    """GLAM returning ``(saliency, prediction, patch_locations)``: S_c (N, 2, H, W) float32 (benign, malignant),
    ŷ_g (N, 2) float32 probabilities (the bundle's image-level prediction, ``y_global``) and the upper-left
    (row, col) corners of the M selected patches (N, M, 2) int64.

    Same arguments and weights (state_dict keys) as :class:`GLAM`, so ``models/model.pt`` loads as it is.
    ``full_resolution_maps`` None means True (S_c is built in either mode). Export it in evaluation mode:
    ``torch.jit.trace`` records patch selection as tensor operations (it follows the input), with the input
    size and M fixed at the traced values.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.full_resolution_maps is None:
            self.full_resolution_maps = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        out = super().forward(x)
        return out["saliency"], out["y_global"], out["patch_locations"]


VIEWS = {"export": GLAMExport, "saliency": GLAMSaliency}


def export_view(network: GLAM, kind: str = "export") -> GLAM:
    """The same network with tensor outputs: a shallow copy of ``network`` that shares its parameters, buffers
    and sub-modules (loading weights into either loads both) but has the forward of :class:`GLAMExport`
    (``kind="export"``) or :class:`GLAMSaliency` (``kind="saliency"``: S_c only).

    Used by ``configs/inference.json`` (``export_network_def``, ``saliency_network_def``), so that the
    exported or verified network is always the configured ``network_def`` with every override applied.
    """
    if kind not in VIEWS:
        raise ValueError(f"kind must be one of {sorted(VIEWS)}, got {kind!r}")
    if not isinstance(network, GLAM):
        raise TypeError(f"export_view needs a glam_bundle.networks.GLAM, got {type(network).__name__}")
    view = copy.copy(network)  # new instance whose attributes are the original's (the same module dicts)
    view.__class__ = VIEWS[kind]
    view.full_resolution_maps = True if network.full_resolution_maps is None else network.full_resolution_maps
    return view
