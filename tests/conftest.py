"""Shared test fixtures: locations of the read-only data in ../shared (never copied into the repo), and the check
that the suite writes only to temporary folders (never to the repository's outputs/, models/ or cache/)."""

import os
from pathlib import Path

import pytest

from glam_bundle.constants import TINY_NETWORK

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
    **{f"network_def#{k}": v for k, v in TINY_NETWORK.items()},
}


def require(path: Path) -> Path:
    """Skip the calling test when a shared data file is not present on this machine."""
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


# Folders of the repository that the bundle's commands write by default (relative bundle_root "."); a test must
# pass tmp_path locations (output_dir, ckpt_dir, cache_dir, ...) instead.
WATCHED_FOLDERS = ("outputs", "models", "cache")


def snapshot_folders(root: Path = REPO_ROOT, folders=WATCHED_FOLDERS) -> dict[str, tuple]:
    """{path relative to ``root``: (size, mtime_ns)} of every file and ("dir",) of every folder under ``folders``."""
    state: dict[str, tuple] = {}
    for name in folders:
        top = root / name
        if not top.exists():
            continue
        for folder, dirs, files in os.walk(top):
            state[os.path.relpath(folder, root)] = ("dir",)
            for file in files:
                path = os.path.join(folder, file)
                try:
                    status = os.stat(path)
                except OSError:  # removed while walking
                    continue
                state[os.path.relpath(path, root)] = (status.st_size, status.st_mtime_ns)
    return state


def changed_paths(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """The paths created, changed or removed between two :func:`snapshot_folders` results."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@pytest.fixture(scope="session", autouse=True)
def repository_folders_untouched():
    """Fail the suite when it created, changed or removed anything under the repository's outputs/, models/ or cache/
    (tests write only to temporary folders). Running the demo at the same time trips it too."""
    before = snapshot_folders()
    yield
    changed = changed_paths(before, snapshot_folders())
    if changed:
        shown = ", ".join(changed[:10]) + (f", ... and {len(changed) - 10} more" if len(changed) > 10 else "")
        pytest.fail(f"the tests wrote into the repository ({len(changed)} paths): {shown}; pass tmp_path folders "
                    "(output_dir, ckpt_dir, cache_dir) instead", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """The disk caches' end-of-run size report (an atexit hook, glam_bundle.data.cache) is for a user's run: in the
    test process it would log after pytest has closed the streams its log handlers write to."""
    from glam_bundle.data import cache

    cache._OPENED.clear()
