"""GMIC baseline (Shen et al. 2021) from GLAM's components (paper section 4.2, appendix F).

GMIC is GLAM with a global module that has only the last-layer saliency map, and whose saliency map is the global
one: a global module on the same backbone with one 1×1 convolution + sigmoid on h2 (46×30 for 2944×1920) and
top-t% pooling, greedy patch selection on that map (Algorithm 1, which GLAM took from GMIC), a local patch
classifier whose patch predictions are aggregated by gated-attention MIL (Ilse et al. 2018), and a fusion module
on [z_g, z_l]. Every piece is GLAM's own (``GlobalNetwork(saliency_levels=(2,))``, ``patch_selection``,
``LocalNetwork``, ``GatedAttentionAggregation``, ``FusionModule``); only the defaults differ. See
``docs/baselines.md`` for how it maps to the GMIC paper and what differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glam_bundle.networks.glam import GLAM


class GMIC(GLAM):
    """GMIC: :class:`GLAM` with GMIC's defaults.

    Args (those whose default differs from GLAM; every other argument is GLAM's, so the stage configs'
    ``network_def#aggregation``, ``#use_fusion``, ``#freeze_global``, ``#num_patches_train`` apply unchanged):
        saliency_levels: (2,): one saliency map, from the last feature map.
        gammas: (1.0,): S_g is that map.
        gamma_c: 1.0: the evaluated map ``saliency`` is S_g upsampled to the input (GMIC's saliency map is the
            global one); ``saliency_local`` (the patch maps pasted) is still returned for the report's S_l row.
        num_patches: 6: GMIC uses the same K = 6 patches in training and inference (GLAM: M = 1 in inference).
        local_layers: (2, 2, 2, 2): ResNet-18 stages, GMIC's local module (GLAM: ResNet-34).

    Forward and outputs: as :class:`GLAM` (``saliency_scales`` (N, 1, 2, h, w), ``y_scales`` (N, 1, 2) and
    ``saliency_native_2`` only, ``saliency_global`` on the h2 grid).
    """

    def __init__(
        self,
        *,
        saliency_levels: Sequence[int] = (2,),
        gammas: Sequence[float] = (1.0,),
        gamma_c: float = 1.0,
        num_patches: int = 6,
        local_layers: Sequence[int] = (2, 2, 2, 2),
        **glam_arguments: Any,
    ) -> None:
        super().__init__(
            saliency_levels=saliency_levels,
            gammas=gammas,
            gamma_c=gamma_c,
            num_patches=num_patches,
            local_layers=local_layers,
            **glam_arguments,
        )
