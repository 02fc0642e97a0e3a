"""GLAM networks as MONAI-style components."""

from glam_bundle.networks.aggregation import ConcatAggregation, GatedAttentionAggregation
from glam_bundle.networks.cam import CAM
from glam_bundle.networks.export import EXPORT_OUTPUTS, GLAMExport, export_view
from glam_bundle.networks.fusion import FusionModule
from glam_bundle.networks.glam import GLAM, GLAMSaliency
from glam_bundle.networks.gmic import GMIC
from glam_bundle.networks.global_network import (
    NATIVE_SALIENCY_KEYS,
    BasicBlockV2,
    GlobalBackbone,
    GlobalNetwork,
    MultiScaleSaliencyHeads,
)
from glam_bundle.networks.local_network import HighResResNet, LocalNetwork
from glam_bundle.networks.patch_selection import (
    crop_patches,
    paste_patch_maps,
    random_patch_locations,
    select_patch_locations,
)
from glam_bundle.networks.pooling import TopTPooling, top_t_pool
from glam_bundle.networks.utils import freeze_all_but, load_partial_state_dict, trainable_parameters

__all__ = [
    "CAM",
    "EXPORT_OUTPUTS",
    "GLAM",
    "GLAMExport",
    "GLAMSaliency",
    "GMIC",
    "NATIVE_SALIENCY_KEYS",
    "BasicBlockV2",
    "ConcatAggregation",
    "FusionModule",
    "GatedAttentionAggregation",
    "GlobalBackbone",
    "GlobalNetwork",
    "HighResResNet",
    "LocalNetwork",
    "MultiScaleSaliencyHeads",
    "TopTPooling",
    "crop_patches",
    "export_view",
    "freeze_all_but",
    "load_partial_state_dict",
    "paste_patch_maps",
    "random_patch_locations",
    "select_patch_locations",
    "top_t_pool",
    "trainable_parameters",
]
