"""Resource faults: a full disk, corrupt cache entries, memory while refusing decompression bombs.

- Disk full (``open`` for writing raises ``OSError(ENOSPC)`` from some point on; a small tmpfs needs ``mount``,
  which a container rarely allows): inference and training end with the one-line "disk full" error, every file
  written before stays intact (no half file, no temporary file), and inference run again finishes the rest.
- A cache entry that ``torch.load`` cannot read (truncated, garbage, empty, refused by ``weights_only``) is rebuilt.
- Peak memory (max RSS of a subprocess) while refusing every kind of decompression bomb stays within 100 MB of a run
  that refuses nothing.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import subprocess
import sys

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from glam_bundle.errors import user_error_message
from tests.conftest import REPO_ROOT
from tests.reliability import cases as C


def _fill_disk_after(monkeypatch, n_writes: int, match: str = "") -> None:
    """From the ``n_writes``-th file opened for writing on (whose name holds ``match``), ``open`` raises ENOSPC."""
    original = builtins.open
    count = [0]

    def full_disk(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and match in os.path.basename(file):
            count[0] += 1
            if count[0] > n_writes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
        return original(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk)
    monkeypatch.setattr(io, "open", full_disk)


def _open_files_under(folder) -> list[str]:
    """Files below ``folder`` this process holds open (read from /proc; [] where there is none)."""
    held = []
    fd_dir = "/proc/self/fd"
    for fd in os.listdir(fd_dir) if os.path.isdir(fd_dir) else []:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


def _workflow(config: str, workflow_type: str, **override) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=str(REPO_ROOT / config), meta_file=str(REPO_ROOT / "metadata.json"),
                              workflow_type=workflow_type, logging_file=False, **override)
    workflow.initialize()
    return workflow


def test_disk_full_during_inference_keeps_what_was_written(tmp_path, monkeypatch):
    C.make_phantoms(tmp_path / "ph", n_images=4, fractions={"test": 1.0})
    out = tmp_path / "out"
    settings = dict(dataset_dir=str(tmp_path / "ph" / "images"), output_dir=str(out), allow_random_weights=True,
                    **C.TINY)
    workflow = _workflow(C.INFERENCE_CONFIG, "infer", **settings)
    _fill_disk_after(monkeypatch, 6)  # predictions.csv.partial, then a few images' saliency maps and figures
    with pytest.raises(Exception) as info:  # noqa: PT011 -- MONAI wraps it; the hook's line is what counts
        workflow.run()
    monkeypatch.undo()
    line = user_error_message(info.value)
    assert line and line.startswith("disk full (writing ") and "free some space" in line, line
    assert _open_files_under(out) == []  # the stopped run holds no file (a server process would leak them)
    rows = C.read_csv(out / "predictions.csv.partial")
    assert 1 <= len(rows) < 4 and not (out / "predictions.csv").exists()
    for row in rows:  # what was written is whole
        assert nib.load(out / row["saliency_file"]).get_fdata().shape == (2, C.H, C.W)
        with Image.open(out / row["figure_file"]) as figure:
            figure.load()
    assert not C.temporary_leftovers(out)
    for path in out.glob("*.nii.gz"):  # also a map whose image's figure then failed: whole, rewritten on the rerun
        assert nib.load(path).get_fdata().shape == (2, C.H, C.W)

    _workflow(C.INFERENCE_CONFIG, "infer", **settings).run()  # space freed: the same command finishes the rest
    rows = C.read_csv(out / "predictions.csv")
    assert len(rows) == 4 and len({r["image"] for r in rows}) == 4 and C.read_csv(out / "failures.csv") == []


def test_disk_full_while_writing_the_resume_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    C.make_phantoms(tmp_path / "ph", n_images=4, fractions={"training": 0.5, "validation": 0.5})
    out = tmp_path / "out"
    settings = dict(dataset_dir=str(tmp_path / "ph"), output_dir=str(out), ckpt_dir=str(tmp_path / "models"),
                    **C.TINY_TRAINING)
    _workflow(C.TRAIN_CONFIG, "train", max_epochs=1, **settings).run()
    before = (out / "last.pt").read_bytes()
    workflow = _workflow(C.TRAIN_CONFIG, "train", max_epochs=2, **settings)
    _fill_disk_after(monkeypatch, 0, match=".last.")
    with pytest.raises(Exception) as info:  # noqa: PT011
        workflow.run()
    monkeypatch.undo()
    assert (user_error_message(info.value) or "").startswith("disk full (writing "), user_error_message(info.value)
    assert (out / "last.pt").read_bytes() == before  # the last complete checkpoint, untouched
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not C.temporary_leftovers(out)


@pytest.mark.parametrize("kind", C.CACHE_CORRUPTIONS)
def test_corrupt_cache_entry_is_rebuilt(tmp_path, kind, caplog):
    dataset, entry, good, expected = C.cached_one_image(tmp_path)
    marker = tmp_path / "marker_cache_code_ran"
    C.corrupt_cache_entry(entry, good, kind, marker)
    assert torch.equal(torch.as_tensor(dataset[0]["image"]), expected)
    assert "unreadable entry, rebuilt" in caplog.text and str(entry) in caplog.text
    assert entry.read_bytes() == good and not marker.exists()


_PEAK_SCRIPT = """
import json, resource, sys
from glam_bundle.data.errors import BadInputError
from glam_bundle.transforms import load_transforms
import nibabel, pydicom  # imported by the refusals: part of the empty run
load = load_transforms(min_size=(64, 64))[0]
empty_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
messages = []
for path in sys.argv[1:]:
    try:
        load({"image": path})
        messages.append(None)
    except Exception as error:
        messages.append(str(error.__cause__ or error) if not isinstance(error, BadInputError) else str(error))
print(json.dumps({"empty_run_kb": empty_run, "refused_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "messages": messages}))
"""


def test_peak_memory_while_refusing_any_bomb_stays_near_an_empty_run(tmp_path):
    """Every bomb of ``cases.IMAGE_CASES`` (a huge header in each format, and a .nii.gz that really inflates to
    338 MB) refused by the bundle's image loader (``load_transforms``' first transform) in one process: its peak
    RSS after refusing them all against its peak before refusing any (the empty run: the same imports, nothing
    read)."""
    bombs = [case for case in C.IMAGE_CASES if case.name.startswith("bomb")]
    paths = [str(path) for _, path in C.build_image_cases(tmp_path, tmp_path / "unused.png", bombs)]
    assert len(paths) >= 7
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *paths], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    peak = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(m and "declares 13000x13000" in m for m in peak["messages"]), peak["messages"]
    extra_mb = (peak["refused_kb"] - peak["empty_run_kb"]) / 1024
    assert extra_mb < 100, f"refusing the bombs took {extra_mb:.0f} MB more than an empty run"


def _mount_tmpfs(folder, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_real_full_disk_small_tmpfs(tmp_path):
    """A real full disk where ``mount`` is allowed (root in this container): inference writes into a 1 MB tmpfs
    (room for about two images' outputs). The run stops with the one-line "disk full" error, every finished row and
    file stays whole and no temporary file is left. The disk made larger, the same command finishes the rest."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount in this container); the patched-write tests "
                    "above cover the full disk")
    try:
        C.make_phantoms(tmp_path / "ph", n_images=4, fractions={"test": 1.0})
        out = disk / "out"
        settings = dict(dataset_dir=str(tmp_path / "ph" / "images"), output_dir=str(out), allow_random_weights=True,
                        **C.TINY)
        try:
            _workflow(C.INFERENCE_CONFIG, "infer", **settings).run()
            stopped = None
        except Exception as error:  # noqa: BLE001 -- MONAI wraps it; the hook's line is what counts
            stopped = error
        # the disk filled: the run stops with the one-line "disk full" error (also when it filled on an image's
        # outputs: every later image would fail the same way), the finished rows kept for the rerun
        assert stopped is not None, "a full disk must stop the run"
        line = user_error_message(stopped)
        assert line and line.startswith("disk full ("), line
        assert _open_files_under(disk) == []  # else the disk could not be unmounted below
        rows = C.read_csv(out / "predictions.csv.partial")
        assert 1 <= len(rows) < 4
        for row in rows:
            assert nib.load(out / row["saliency_file"]).get_fdata().shape == (2, C.H, C.W)
            with Image.open(out / row["figure_file"]) as figure:
                figure.load()
        assert not C.temporary_leftovers(out)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True, timeout=30)
        _workflow(C.INFERENCE_CONFIG, "infer", **settings).run()
        final = C.read_csv(out / "predictions.csv")
        assert len(final) == 4 and len({r["image"] for r in final}) == 4
        if stopped is not None:  # resumed: the rows done before are kept as they were
            assert [r for r in final if r["image"] in {p["image"] for p in rows}] == rows
    finally:
        unmounted = subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)
    assert unmounted.returncode == 0, unmounted.stderr
