"""The global module f_g of GLAM: a memory-efficient pre-activation ResNet (GMIC's "ResNetV2") with
multi-scale saliency heads (paper section 3.2 and appendix B; reference spec section 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from glam_bundle.networks.pooling import TopTPooling

# Output keys of S0, S1, S2 at their native resolutions (separate tensors keep the output a dict of tensors).
NATIVE_SALIENCY_KEYS: tuple[str, str, str] = ("saliency_native_0", "saliency_native_1", "saliency_native_2")


class BasicBlockV2(nn.Module):
    """Pre-activation residual block of the global module.

    ``a = relu(bn1(x))``; ``out = conv2(relu(bn2(conv1(a)))) + shortcut`` where the shortcut is a 1×1
    projection of the *pre-activated* ``a`` when the block has one, else ``x``; no activation after the sum.
    MONAI's ``ResNetBlock`` is post-activation and its projection sees the raw input, so this block is
    written out to match the original weights.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: stride of ``conv1`` and of the projection.
        project: add the 1×1 projection shortcut (block 0 of every stage in the original, even 16→16).

    Shapes: (N, C_in, H, W) -> (N, C_out, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, project: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        # Sequential keeps the original key name "downsample.0.weight".
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)) if project else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(activated)
        out = self.conv2(self.relu(self.bn2(self.conv1(activated))))
        return out + shortcut


class GlobalBackbone(nn.Module):
    """Pre-activation ResNet encoder of the global module, returning the feature pyramid (h0, h1, h2).

    For a (N, 1, 2944, 1920) input: first_conv 7×7/2 → 16×1472×960, 3×3/2 max-pool (no padding) →
    16×735×479, stages of ``blocks_per_stage`` BasicBlockV2 with channels 16, 32, 64, 128, 256 (strides 1, 2,
    2, 2, 2) → h0 = stage 2 output 64×184×120, h1 = stage 3 output 128×92×60, h2 = relu(final_bn(stage 4))
    256×46×30.

    Args:
        in_channels: image channels (1 for mammograms).
        channels: output channels of the stages (the first entry is also the stem width).
        strides: first-block stride of each stage.
        blocks_per_stage: BasicBlockV2 per stage.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (1, 2, 2, 2, 2),
        blocks_per_stage: int = 2,
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(strides) != 5:
            raise ValueError("the global backbone has five stages; h0, h1, h2 come from stages 2, 3, 4")
        self.first_conv = nn.Conv2d(in_channels, channels[0], 7, stride=2, padding=3, bias=False)
        self.first_pool = nn.MaxPool2d(3, stride=2, padding=0)
        stages = []
        stage_in = channels[0]
        for out_ch, stride in zip(channels, strides):
            blocks = [BasicBlockV2(stage_in, out_ch, stride, project=True)]
            blocks += [BasicBlockV2(out_ch, out_ch) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            stage_in = out_ch
        self.layer_list = nn.ModuleList(stages)
        self.final_bn = nn.BatchNorm2d(channels[-1])
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = tuple(channels[2:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 1, H, W) -> (h0, h1, h2); h0 and h1 are raw residual sums, h2 is post-activated."""
        x = self.first_pool(self.first_conv(x))
        x = self.layer_list[1](self.layer_list[0](x))
        h0 = self.layer_list[2](x)
        h1 = self.layer_list[3](h0)
        h2 = self.relu(self.final_bn(self.layer_list[4](h1)))
        return h0, h1, h2


class MultiScaleSaliencyHeads(nn.Module):
    """1×1 convolution + sigmoid heads producing S0, S1, S2 from (h0, h1, h2).

    As in the released code, S1 and S2 are nearest-upsampled to h0's size (184×120 for a 2944×1920 input),
    so S_g and the top-t pooling live on that grid. The released code upsamples the logits and then applies
    the sigmoid; nearest upsampling only copies values, so the sigmoid is applied at native resolution here
    and the result is identical, with the native maps (for the paper's ℓ1 term) at no extra cost.

    Args:
        in_channels: channels of (h0, h1, h2).
        num_classes: saliency channels (2: benign, malignant).
        keep_combine: keep the original's unused 1×1 ``combine`` weight (2×6) so that the authors'
            checkpoints load strictly; it takes no part in the forward pass and has ``requires_grad=False``
            (a trainable parameter without gradient breaks DistributedDataParallel).
        centre_aligned: resample S1/S2 to the h0 grid bilinearly with coarse cell p on h0 cell factor·p, where
            its receptive field is centred. False (default) is the release's floor-nearest upsampling, which
            paints S1 and S2 0.9 and 1.9 h0 cells (14 / 30 px at stride 16) down-right of the evidence they
            respond to (measured from input gradients; docs/stage1_learning.md, C4).

        levels: the feature levels with a head, a sorted subset of (0, 1, 2) (default: all three, GLAM);
            ``(2,)`` is the single last-layer map of CAM and GMIC (``conv2`` only, no ``combine``). The maps
            are stacked on the grid of the finest level chosen.

    Shapes: (h0, h1, h2) -> (stacked, native): ``stacked`` (N, 3, num_classes, h0_h, h0_w), scales along
    dim 1 in the order S0, S1, S2; ``native`` the list [S0, S1, S2] at the resolutions of h0, h1, h2
    (184×120, 92×60, 46×30 for 2944×1920). With other ``levels``: one entry per level, in that order.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 128, 256),
        num_classes: int = 2,
        keep_combine: bool = True,
        centre_aligned: bool = False,
        levels: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        self.centre_aligned = centre_aligned
        self.levels = check_levels(levels)
        for level in self.levels:
            setattr(self, f"conv{level}", nn.Conv2d(in_channels[level], num_classes, 1, bias=False))
        if keep_combine and self.levels == (0, 1, 2):
            self.combine = nn.Parameter(torch.empty(num_classes, num_classes * 3, 1, 1), requires_grad=False)
            nn.init.xavier_normal_(self.combine)

    def forward(
        self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        base = self.levels[0]
        size = features[base].shape[-2:]
        native = [torch.sigmoid(getattr(self, f"conv{level}")(features[level])) for level in self.levels]
        upsampled = [native[0]]
        for level, s in zip(self.levels[1:], native[1:]):
            if self.centre_aligned:
                upsampled.append(centred_upsample(s, size, 2 ** (level - base)))
            else:
                upsampled.append(F.interpolate(s, size=size, mode="nearest"))
        return torch.stack(upsampled, dim=1), native


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """Saliency levels as a tuple: a non-empty, strictly increasing subset of (0, 1, 2) (h0, h1, h2)."""
    levels = tuple(int(level) for level in levels)
    if not levels or list(levels) != sorted(set(levels)) or not set(levels) <= {0, 1, 2}:
        raise ValueError(f"saliency levels must be a non-empty increasing subset of (0, 1, 2), got {levels}")
    return levels


def breast_mask_from_image(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) preprocessed images -> (N, 1, H, W) float breast mask: the pixels above each image's minimum.

    The preprocessing sets everything outside the breast (background, cleared artefacts, the window's zero
    padding) to one value, the image's minimum after standardisation, so the breast is what lies above it (by
    more than 0.1 % of the image's range). For callers that can pass only the image (MONAI Label, the exported
    files); the chain's own ``breast_mask`` is the same region up to the breast mask's border rule."""
    plane = x[:, :1].to(torch.float32)
    low = plane.amin(dim=(-2, -1), keepdim=True)
    high = plane.amax(dim=(-2, -1), keepdim=True)
    return (plane > low + 1e-3 * (high - low).clamp_min(1e-12)).to(torch.float32)


def breast_cells(breast_mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, 1, H, W) breast mask -> (N, 1, *size) float: 1 on the cells of a ``size`` grid over the image that hold
    at least one breast pixel (the cells of the saliency maps), else 0."""
    cells = F.adaptive_max_pool2d(breast_mask.to(torch.float32), tuple(int(s) for s in size))
    return (cells > 0).to(breast_mask.dtype if breast_mask.is_floating_point() else torch.float32)


def centred_upsample(maps: torch.Tensor, size: Sequence[int], factor: int) -> torch.Tensor:
    """Linear upsampling of (N, C, h, w) maps to (N, C, *size) with coarse cell p on fine cell factor·p
    (``factor``: the stride ratio of the two grids, also when odd sizes make h·factor differ from size).

    ``F.interpolate`` has no such mode: ``align_corners=False`` puts cell p at factor·p + (factor - 1)/2 and
    ``align_corners=True`` stretches the grid to the last cell; here both grids start at the same pixel, as
    the receptive fields of every level do (feature cell p of stride s sits on image pixel ≈ s·p + 2).
    Beyond the last coarse cell the value is held.
    """

    def axis(n_out: int, n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = (torch.arange(n_out, device=maps.device, dtype=maps.dtype) / factor).clamp(max=n_in - 1)
        low = position.floor().long()
        return low, (low + 1).clamp(max=n_in - 1), position - low

    r0, r1, rw = axis(int(size[0]), maps.shape[-2])
    c0, c1, cw = axis(int(size[1]), maps.shape[-1])
    maps = maps[..., r0, :] * (1 - rw)[:, None] + maps[..., r1, :] * rw[:, None]
    return maps[..., c0] * (1 - cw) + maps[..., c1] * cw


class GlobalNetwork(nn.Module):
    """Global module f_g: backbone, multi-scale saliency, S_g, ŷ_g and the representation z_g.

    Args:
        in_channels: image channels.
        num_classes: classes (2: benign, malignant).
        percent_t: t of the top-t% pooling (released: 0.03).
        gammas: (γ0, γ1, γ2) weights of S0, S1, S2 in S_g (paper and release: 0.2, 0.6, 0.2).
        channels, blocks_per_stage: backbone size (defaults: the paper's network).
        centre_aligned: see :class:`MultiScaleSaliencyHeads` (False: the release).
        saliency_levels: feature levels with a saliency head (default (0, 1, 2): GLAM). ``(2,)`` with
            ``gammas=(1.0,)`` is the single last-layer map of CAM and GMIC (``networks.CAM``, ``networks.GMIC``):
            then ``saliency_scales`` is (N, 1, 2, 46, 30), ``y_scales`` (N, 1, 2) and only ``saliency_native_2``
            is returned; ``gammas`` has one weight per level.

    Forward: x (N, 1, H, W) -> dict with
        ``saliency_scales`` (N, 3, 2, h, w): S0, S1, S2 on the h0 grid (184×120 for 2944×1920);
        ``saliency_native_0``, ``saliency_native_1``, ``saliency_native_2``: S0, S1, S2 at their own
        resolutions (N, 2, 184, 120), (N, 2, 92, 60), (N, 2, 46, 30), for the ℓ1 term of the loss (appendix B);
        ``y_scales`` (N, 3, 2): top-t pooled ỹ0, ỹ1, ỹ2;
        ``saliency_global`` (N, 2, h, w): S_g = Σ γ_n S_n;
        ``y_global`` (N, 2): ŷ_g = mean of ỹ_n (probabilities);
        ``z_global`` (N, 256): spatial max-pool of h2.
    With ``breast_mask`` (N, 1, H, W) (1 on the breast), every S_n is set to 0 on the cells that hold no breast
    pixel, before the top-t pooling and in every returned map, so that neither the classification nor the ℓ1 term
    nor patch selection sees the image border and the padding (not in the paper: an option for small synthetic
    frames, where zero-padded convolutions light the border; docs/stage1_learning.md, C3).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        percent_t: float = 0.03,
        gammas: Sequence[float] = (0.2, 0.6, 0.2),
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        blocks_per_stage: int = 2,
        centre_aligned: bool = False,
        saliency_levels: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        levels = check_levels(saliency_levels)
        if len(gammas) != len(levels) or min(gammas) < 0 or abs(sum(gammas) - 1.0) > 1e-6:
            raise ValueError(f"gammas must be {len(levels)} non-negative weights summing to 1 (one per saliency "
                             f"level {levels}), got {gammas}")
        self.backbone = GlobalBackbone(in_channels, channels, blocks_per_stage=blocks_per_stage)
        self.heads = MultiScaleSaliencyHeads(self.backbone.out_channels, num_classes, centre_aligned=centre_aligned,
                                             levels=levels)
        self.native_keys = tuple(NATIVE_SALIENCY_KEYS[level] for level in levels)
        self.pool = TopTPooling(percent_t)
        self.register_buffer("gammas", torch.tensor(gammas, dtype=torch.float32).view(1, len(levels), 1, 1, 1),
                             persistent=False)
        self.representation_size = self.backbone.out_channels[-1]

    def forward(self, x: torch.Tensor, breast_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h0, h1, h2 = self.backbone(x)
        scales, native = self.heads((h0, h1, h2))
        if breast_mask is not None:
            h0_cells = breast_cells(breast_mask, scales.shape[-2:])  # the grid of S0 and of the stacked maps
            native = [
                s * (h0_cells if s.shape[-2:] == h0_cells.shape[-2:] else breast_cells(breast_mask, s.shape[-2:]))
                for s in native
            ]
            scales = scales * h0_cells.unsqueeze(1)
        y_scales = self.pool(scales.flatten(1, 2)).view(scales.shape[:3])
        return {
            "saliency_scales": scales,
            **dict(zip(self.native_keys, native)),
            "y_scales": y_scales,
            "saliency_global": (scales * self.gammas.to(scales.dtype)).sum(dim=1),
            "y_global": y_scales.mean(dim=1),
            "z_global": h2.amax(dim=(2, 3)),
        }
