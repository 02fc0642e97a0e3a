"""Patch selection (paper Algorithm 1, appendix A; reference spec section 2): greedy, batched choice of the
windows of the global saliency map with the largest mean, random locations for negative images in training,
their crops from the image, and the pasting of patch maps back into the image frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _round_half_even(values: torch.Tensor) -> torch.Tensor:
    # torch.round rounds half to even, like numpy's around used by the original.
    return torch.round(values)


def saliency_window_size(
    saliency_size: Sequence[int], image_size: Sequence[int], crop_size: Sequence[int]
) -> tuple[int, int]:
    """Size on the saliency grid of a crop_size window of the image: ``round(crop · h / H)`` per axis
    (half to even, as numpy's round in the original); 32×32 for a 512 crop, 184×120 map, 2944×1920 image."""
    return tuple(
        int(_round_half_even(torch.tensor(c * s / i, dtype=torch.float64)))
        for c, s, i in zip(crop_size, saliency_size, image_size)
    )


def select_patch_locations(
    saliency: torch.Tensor, image_size: Sequence[int], crop_size: Sequence[int] = (512, 512), num_patches: int = 1
) -> torch.Tensor:
    """Greedy patch selection on the global saliency map (Algorithm 1).

    Each class channel is min-max normalised, the channels are summed, and ``num_patches`` times the window
    with the largest sum is taken (first index in row-major order on ties) and zeroed out, so windows
    chosen later do not reuse those positions.

    Args:
        saliency: S_g, (N, C, h, w).
        image_size: (H, W) of the image the map belongs to.
        crop_size: (h_c, w_c) of a patch in image pixels.
        num_patches: K (training) or M (inference).

    Returns:
        (N, num_patches, 2) long tensor of upper-left (row, col) corners in image pixels,
        ``round(r / h · H)``, clamped so that each patch lies inside the image.
    """
    n, _, h, w = saliency.shape
    win_h, win_w = saliency_window_size((h, w), image_size, crop_size)
    if not (0 < win_h <= h and 0 < win_w <= w):
        raise ValueError(f"crop {tuple(crop_size)} does not fit a {tuple(image_size)} image / {h}×{w} map")
    with torch.no_grad():
        flat = saliency.detach().float().flatten(2)
        low, high = flat.amin(dim=2, keepdim=True), flat.amax(dim=2, keepdim=True)
        # No epsilon, as the original: a constant channel gives NaN, replaced by 0 so selection goes on.
        normalised = torch.nan_to_num((flat - low) / (high - low), nan=0.0)
        summed = normalised.sum(dim=1).view(n, 1, h, w)
        pooled_w = w - win_w + 1
        rows_idx = torch.arange(h, device=saliency.device).view(1, h, 1)
        cols_idx = torch.arange(w, device=saliency.device).view(1, 1, w)
        corners = []
        for _ in range(num_patches):
            window_mean = F.avg_pool2d(summed, (win_h, win_w), stride=1).flatten(1)
            index = window_mean.argmax(dim=1)
            r, c = index // pooled_w, index % pooled_w
            corners.append(torch.stack([r, c], dim=1))
            inside = (
                (rows_idx >= r.view(n, 1, 1))
                & (rows_idx < (r + win_h).view(n, 1, 1))
                & (cols_idx >= c.view(n, 1, 1))
                & (cols_idx < (c + win_w).view(n, 1, 1))
            )
            summed = summed.masked_fill(inside.unsqueeze(1), 0.0)
        grid_corners = torch.stack(corners, dim=1).double()
    scale = torch.tensor([image_size[0] / h, image_size[1] / w], dtype=torch.float64, device=saliency.device)
    image_corners = _round_half_even(grid_corners * scale).long()
    upper = torch.tensor(
        [image_size[0] - crop_size[0], image_size[1] - crop_size[1]], device=saliency.device
    ).clamp(min=0)
    return torch.minimum(image_corners, upper)


def random_patch_locations(
    batch_size: int,
    image_size: Sequence[int],
    crop_size: Sequence[int] = (512, 512),
    num_patches: int = 1,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniformly random patch locations, for negative images while the local module trains (paper section 3.3
    and appendix G.2: negative examples are patches sampled at random from images without lesions).

    Each corner is drawn uniformly from the valid integer range [0, H − h_c] × [0, W − w_c], independently
    for every image and patch (patches of one image may overlap). Draws come from torch's RNG for ``device``
    (or ``generator``), so ``monai.utils.set_determinism`` makes them reproducible.

    Args:
        batch_size: N.
        image_size: (H, W).
        crop_size: (h_c, w_c), at most the image size.
        num_patches: K.
        device: device of the result.
        generator: optional generator on ``device``.

    Returns:
        (N, num_patches, 2) long tensor of upper-left (row, col) corners; every patch lies inside the image.
    """
    rows, cols = (int(i) - int(c) + 1 for i, c in zip(image_size, crop_size))
    if rows <= 0 or cols <= 0:
        raise ValueError(f"crop {tuple(crop_size)} does not fit a {tuple(image_size)} image")
    shape = (batch_size, num_patches)
    row = torch.randint(rows, shape, device=device, generator=generator)
    col = torch.randint(cols, shape, device=device, generator=generator)
    return torch.stack([row, col], dim=-1)


def crop_patches(image: torch.Tensor, locations: torch.Tensor, crop_size: Sequence[int] = (512, 512)) -> torch.Tensor:
    """Cut patches at the given upper-left corners, differentiably (gather by index).

    Args:
        image: (N, C, H, W).
        locations: (N, K, 2) upper-left (row, col), patches lying inside the image.
        crop_size: (h_c, w_c).

    Returns:
        (N, K, C, h_c, w_c).
    """
    n, k = locations.shape[:2]
    rows = locations[..., 0, None] + torch.arange(crop_size[0], device=image.device)  # (N, K, h_c)
    cols = locations[..., 1, None] + torch.arange(crop_size[1], device=image.device)  # (N, K, w_c)
    if torch.onnx.is_in_onnx_export():
        return _crop_patches_gather(image, rows, cols)
    batch = torch.arange(n, device=image.device).view(n, 1, 1, 1)
    # Advanced indices split by the channel slice come first: (N, K, h_c, w_c, C).
    patches = image[batch, :, rows[..., :, None], cols[..., None, :]]
    return patches.permute(0, 1, 4, 2, 3)


def paste_patch_maps(
    patch_maps: torch.Tensor, locations: torch.Tensor, image_size: Sequence[int], crop_size: Sequence[int] = (512, 512)
) -> torch.Tensor:
    """Put patch saliency maps back into the image frame (S_l), on a zero background.

    Each map is nearest-upsampled to the crop size and assigned (not added) at its location; later patches
    overwrite earlier ones where they overlap, as in the released code.

    Args:
        patch_maps: (N, K, C, a, b), e.g. 128×128 maps of 512×512 patches.
        locations: (N, K, 2) upper-left corners.
        image_size: (H, W).
        crop_size: (h_c, w_c).

    Returns:
        (N, C, H, W).
    """
    n, k, c = patch_maps.shape[:3]
    upsampled = F.interpolate(patch_maps.flatten(0, 1), size=tuple(crop_size), mode="nearest")
    upsampled = upsampled.view(n, k, c, *crop_size)
    rows = locations[..., 0, None] + torch.arange(crop_size[0], device=patch_maps.device)
    cols = locations[..., 1, None] + torch.arange(crop_size[1], device=patch_maps.device)
    if torch.onnx.is_in_onnx_export():
        return _paste_patch_maps_where(upsampled, rows, cols, image_size)
    canvas = patch_maps.new_zeros((n, c, *image_size))
    batch = torch.arange(n, device=patch_maps.device).view(n, 1, 1)
    for j in range(k):
        canvas[batch, :, rows[:, j, :, None], cols[:, j, None, :]] = upsampled[:, j].permute(0, 2, 3, 1)
    return canvas


# ONNX export (scripts/export_onnx.py) has no multi-dimensional index assignment and no index with a slice
# between tensor indices; these equivalents copy the same values with gather and where (tests/test_export.py).


def _crop_patches_gather(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """crop_patches by gather: image (N, C, H, W), rows (N, K, h_c), cols (N, K, w_c) -> (N, K, C, h_c, w_c)."""
    n, c, _, width = image.shape
    patches = []
    for j in range(rows.shape[1]):
        row_index = rows[:, j].view(n, 1, -1, 1).expand(n, c, rows.shape[2], width)
        band = torch.gather(image, 2, row_index)  # (N, C, h_c, W)
        col_index = cols[:, j].view(n, 1, 1, -1).expand(n, c, rows.shape[2], cols.shape[2])
        patches.append(torch.gather(band, 3, col_index))
    return torch.stack(patches, dim=1)


def _paste_patch_maps_where(
    upsampled: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, image_size: Sequence[int]
) -> torch.Tensor:
    """paste_patch_maps by gather and where: upsampled (N, K, C, h_c, w_c) maps at the crop size, rows (N, K, h_c)
    and cols (N, K, w_c) their image rows and columns (consecutive, inside the image) -> (N, C, H, W), zero
    outside the patches; later patches overwrite earlier ones, as the indexed assignment. The zero background is
    a scalar (an N×C×H×W zero tensor would be stored in the ONNX file as a constant)."""
    n, _, c = upsampled.shape[:3]
    height, width = int(image_size[0]), int(image_size[1])
    canvas = torch.zeros((), dtype=upsampled.dtype, device=upsampled.device)
    image_rows = torch.arange(height, device=canvas.device).view(1, height)
    image_cols = torch.arange(width, device=canvas.device).view(1, width)
    for j in range(upsampled.shape[1]):
        row0, col0 = rows[:, j, :1], cols[:, j, :1]  # (N, 1) upper-left corners
        row_offset, col_offset = image_rows - row0, image_cols - col0  # (N, H), (N, W)
        inside_rows = (row_offset >= 0) & (row_offset < rows.shape[2])
        inside_cols = (col_offset >= 0) & (col_offset < cols.shape[2])
        row_index = row_offset.clamp(0, rows.shape[2] - 1).view(n, 1, height, 1).expand(n, c, height, cols.shape[2])
        band = torch.gather(upsampled[:, j], 2, row_index)  # (N, C, H, w_c)
        col_index = col_offset.clamp(0, cols.shape[2] - 1).view(n, 1, 1, width).expand(n, c, height, width)
        values = torch.gather(band, 3, col_index)  # (N, C, H, W)
        inside = (inside_rows.view(n, 1, height, 1) & inside_cols.view(n, 1, 1, width))
        canvas = torch.where(inside, values, canvas)
    return canvas


def breast_patch_locations(
    image: torch.Tensor,
    crop_size: Sequence[int] = (512, 512),
    num_patches: int = 1,
    generator: torch.Generator | None = None,
    min_breast_fraction: float = 0.5,
) -> tuple[torch.Tensor, str]:
    """Random patch locations of one negative image, preferring patches that show the breast (stage 2 of the
    staged training, paper section 3.3 and appendix G.2: negative examples are random patches of images without
    lesions; a patch of pure background teaches the local module nothing).

    The breast is ``image > image.min()`` (after the bundle's chain the background and the window padding hold
    the minimum). Each of the ``num_patches`` corners is drawn uniformly, with replacement, from the first
    non-empty tier of valid corners (patches inside the image):

    1. ``"breast"``: patches whose breast fraction is at least ``min_breast_fraction``;
    2. ``"overlap"``: patches holding at least one breast pixel;
    3. ``"uniform"``: every valid corner (an image without a breast, e.g. constant), as
       :func:`random_patch_locations`.

    Args:
        image: (H, W) or (1, H, W), one image.
        crop_size: (h_c, w_c), at most the image size.
        num_patches: K.
        generator: CPU generator (seed it for reproducible draws); torch's global RNG when None.
        min_breast_fraction: in [0, 1], the breast fraction a patch of the first tier needs.

    Returns:
        ((num_patches, 2) long tensor of upper-left (row, col) corners on ``image``'s device, the tier used).
    """
    if not 0.0 <= min_breast_fraction <= 1.0:
        raise ValueError(f"min_breast_fraction must be in [0, 1], got {min_breast_fraction}")
    plane = image.detach()
    while plane.ndim > 2:
        if plane.shape[0] != 1:
            raise ValueError(f"expected one (H, W) or (1, H, W) image, got shape {tuple(image.shape)}")
        plane = plane[0]
    height, width = plane.shape
    rows, cols = height - int(crop_size[0]) + 1, width - int(crop_size[1]) + 1
    if rows <= 0 or cols <= 0:
        raise ValueError(f"crop {tuple(crop_size)} does not fit a {(height, width)} image")
    breast = (plane > plane.min()).cpu().to(torch.int64)
    # Breast pixels of every crop window from the integral image (a box filter would cost h_c·w_c per pixel).
    integral = F.pad(breast.cumsum(0).cumsum(1), (1, 0, 1, 0))
    h_c, w_c = int(crop_size[0]), int(crop_size[1])
    counts = (
        integral[h_c:, w_c:] - integral[:rows, w_c:] - integral[h_c:, :cols] + integral[:rows, :cols]
    )  # (rows, cols)
    tiers = (("breast", counts >= min_breast_fraction * h_c * w_c), ("overlap", counts > 0))
    rule, candidates = "uniform", None
    for name, allowed in tiers:
        flat = allowed.flatten().nonzero().squeeze(1)
        if flat.numel():
            rule, candidates = name, flat
            break
    if candidates is None:
        index = torch.randint(rows * cols, (num_patches,), generator=generator)
    else:
        index = candidates[torch.randint(candidates.numel(), (num_patches,), generator=generator)]
    corners = torch.stack([index // cols, index % cols], dim=1)
    return corners.to(image.device), rule
