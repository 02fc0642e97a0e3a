"""Shared test fixtures: locations of the read-only data in ../shared (never copied into the repo)."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
NYU_SAMPLE = SHARED / "data" / "nyu_sample"
CBIS_DDSM = SHARED / "data" / "cbis_ddsm"
MINI_MIAS = SHARED / "data" / "mini_mias"
ORIGINAL_CHECKPOINT = SHARED / "reference" / "original_checkpoint"


def require(path: Path) -> Path:
    """Skip the calling test when a shared data file is not present on this machine."""
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path
