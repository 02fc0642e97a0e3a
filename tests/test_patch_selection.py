"""Patch selection (Algorithm 1) against hand-built saliency maps, and random patches for negative images."""

import pytest
import torch

from glam_bundle.networks import crop_patches, paste_patch_maps, random_patch_locations, select_patch_locations

IMAGE = (2944, 1920)


def blob_map(corners, value=1.0, size=(184, 120), window=32, channels=2, channel=0):
    """A saliency map that is 0 except for 32×32 windows of `value` at the given grid corners."""
    saliency = torch.zeros(1, channels, *size)
    for (r, c), v in zip(corners, value if isinstance(value, list) else [value] * len(corners)):
        saliency[0, channel, r : r + window, c : c + window] = v
    return saliency


def test_known_argmax_window_maps_to_image_pixels():
    saliency = blob_map([(84, 46)])
    locations = select_patch_locations(saliency, IMAGE, (512, 512), 1)
    assert locations.tolist() == [[[84 * 16, 46 * 16]]]  # (1344, 736) as in the reference


def test_greedy_order_and_non_overlap():
    saliency = blob_map([(10, 10), (100, 60), (150, 0)], value=[0.5, 1.0, 0.8])
    locations = select_patch_locations(saliency, IMAGE, (512, 512), 3)[0]
    assert locations.tolist() == [[1600, 960], [2400, 0], [160, 160]]
    boxes = [(r, c, r + 512, c + 512) for r, c in locations.tolist()]
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_masking_prevents_reselecting_the_same_window():
    saliency = blob_map([(40, 40)], window=40)  # one blob larger than a window
    locations = select_patch_locations(saliency, IMAGE, (512, 512), 2)[0].tolist()
    assert locations[0] != locations[1]


def test_borders_and_ties():
    # blob in the bottom-right corner: window stays inside the image
    saliency = blob_map([(184 - 32, 120 - 32)])
    assert select_patch_locations(saliency, IMAGE)[0, 0].tolist() == [2432, 1408]
    # a constant map: every window ties, the first (row-major) wins, no NaN from min-max normalisation
    flat = torch.ones(1, 2, 184, 120)
    assert select_patch_locations(flat, IMAGE)[0, 0].tolist() == [0, 0]


def test_classes_are_normalised_separately_and_summed():
    saliency = torch.zeros(2, 2, 184, 120)
    saliency[0, 0, 0:32, 0:32] = 0.9  # benign blob, strong
    saliency[0, 1, 100:132, 80:112] = 0.01  # malignant blob, weak but normalised to 1 as well
    saliency[0, 1, 0:32, 0:32] = 0.005  # overlaps the benign blob: sum 1.5 there beats 1.0
    saliency[1, 1, 50:82, 20:52] = 0.3
    locations = select_patch_locations(saliency, IMAGE, num_patches=1)
    assert locations[:, 0].tolist() == [[0, 0], [800, 320]]


def test_crop_and_paste_round_trip():
    image = torch.arange(2 * 64 * 48, dtype=torch.float32).view(2, 1, 64, 48)
    locations = torch.tensor([[[0, 0], [32, 16]], [[10, 20], [48, 32]]])
    patches = crop_patches(image, locations, (16, 16))
    assert patches.shape == (2, 2, 1, 16, 16)
    assert torch.equal(patches[1, 0, 0], image[1, 0, 10:26, 20:36])
    maps = torch.rand(2, 2, 2, 4, 4)
    pasted = paste_patch_maps(maps, locations, (64, 48), (16, 16))
    assert pasted.shape == (2, 2, 64, 48)
    expected = maps[1, 1].repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert torch.equal(pasted[1, :, 48:64, 32:48], expected)
    assert pasted[0, :, 20:32, 0:16].abs().sum() == 0  # background stays zero


def test_random_patch_locations_are_uniform_valid_and_seeded():
    torch.manual_seed(0)
    locations = random_patch_locations(500, (256, 128), (64, 64), num_patches=6)
    assert locations.shape == (500, 6, 2) and locations.dtype == torch.long
    rows, cols = locations[..., 0], locations[..., 1]
    # every patch inside the image, and the whole valid range [0, 192] × [0, 64] is reached
    assert rows.min() == 0 and rows.max() == 256 - 64
    assert cols.min() == 0 and cols.max() == 128 - 64
    assert abs(rows.float().mean().item() - 96) < 3 and abs(cols.float().mean().item() - 32) < 1.5
    torch.manual_seed(0)
    assert torch.equal(random_patch_locations(500, (256, 128), (64, 64), num_patches=6), locations)
    first, second = (
        random_patch_locations(2, IMAGE, num_patches=3, generator=torch.Generator().manual_seed(1)) for _ in range(2)
    )
    assert torch.equal(first, second)
    assert (first <= torch.tensor([2944 - 512, 1920 - 512])).all()
    # a crop as large as the image has one location
    assert random_patch_locations(2, (64, 64), (64, 64), 2).abs().sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        random_patch_locations(1, (64, 48), (64, 64))
