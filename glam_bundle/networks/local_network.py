"""The local module f_l of GLAM: ResNet-34 with all stage strides reduced to 1, a 1×1 convolution and a
sigmoid (paper section 3.2 and appendix C; reference spec section 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.resnet import ResNetBlock
from torch import nn


class HighResResNet(nn.Module):
    """ResNet body (post-activation basic blocks) keeping the stem max-pool but with stride 1 in every stage.

    MONAI's ``ResNet`` hard-codes stride 2 in stages 2-4, so the stages are assembled here from its
    ``ResNetBlock``; attribute names follow torchvision's ResNet so the original weights map one to one.

    Args:
        in_channels: input channels (3: the grey patch is repeated, as in the original).
        layers: blocks per stage (ResNet-34: 3, 4, 6, 3).
        channels: stage widths (64, 128, 256, 512).

    Shapes: (N, 3, P, P) -> (N, 512, P/4, P/4); a 512×512 patch gives 512×128×128.
    """

    def __init__(
        self, in_channels: int = 3, layers: Sequence[int] = (3, 4, 6, 3), channels: Sequence[int] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stage_in = channels[0]
        for index, (num_blocks, width) in enumerate(zip(layers, channels), start=1):
            downsample = None
            if stage_in != width:
                downsample = nn.Sequential(nn.Conv2d(stage_in, width, 1, bias=False), nn.BatchNorm2d(width))
            blocks = [ResNetBlock(stage_in, width, spatial_dims=2, downsample=downsample)]
            blocks += [ResNetBlock(width, width, spatial_dims=2) for _ in range(num_blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            stage_in = width
        self.out_channels = stage_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class LocalNetwork(nn.Module):
    """Local module: patch saliency maps A_k and patch representations z_k.

    Args:
        num_classes: saliency channels (2: benign, malignant).
        in_channels: channels the backbone expects; a 1-channel patch is repeated to match (no ImageNet
            normalisation, as in the original).
        layers, channels: backbone size (defaults: ResNet-34).

    Forward: patches (B, 1, P, P) -> dict with ``saliency_patch`` (B, 2, P/4, P/4) = sigmoid(1×1 conv(h_k))
    and ``z_patch`` (B, 512) = spatial max-pool of h_k.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        layers: Sequence[int] = (3, 4, 6, 3),
        channels: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.backbone = HighResResNet(in_channels, layers, channels)
        self.saliency_head = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        self.representation_size = self.backbone.out_channels

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(patches.expand(-1, self.in_channels, -1, -1))
        return {"saliency_patch": torch.sigmoid(self.saliency_head(features)), "z_patch": features.amax(dim=(2, 3))}
