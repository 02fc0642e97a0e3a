"""Shared test fixtures: locations of the read-only data in ../shared (never copied into the repo)."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
NYU_SAMPLE = SHARED / "data" / "nyu_sample"
CBIS_DDSM = SHARED / "data" / "cbis_ddsm"
MINI_MIAS = SHARED / "data" / "mini_mias"
ORIGINAL_CHECKPOINT = SHARED / "reference" / "original_checkpoint"

# A small GLAM (736×480 input, 128×128 patches, narrow layers) for fast workflow tests: config overrides.
SMALL_NETWORK_OVERRIDES = {
    "image_size": [736, 480],
    "crop_size": [128, 128],
    "num_workers": 0,
    "network_def#global_channels": [4, 8, 8, 8, 8],
    "network_def#global_blocks_per_stage": 1,
    "network_def#local_layers": [1, 1, 1, 1],
    "network_def#local_channels": [8, 8, 8, 16],
}


def require(path: Path) -> Path:
    """Skip the calling test when a shared data file is not present on this machine."""
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path
