"""Hostile checkpoints: a pickle that would run code is refused with one named line by every loader of
``glam_bundle.checkpoint`` and by ``scripts/import_original_checkpoint.py``, and no code in it runs (a marker file
its ``__reduce__`` would create never appears); missing or wrongly shaped keys are listed by name."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glam_bundle.checkpoint import (
    CheckpointError,
    CheckpointKeyError,
    convert_original_state_dict,
    load_global_module,
    load_original_checkpoint,
    load_weights,
)
from glam_bundle.constants import TINY_NETWORK
from glam_bundle.networks import GLAM
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "import_original_checkpoint.py"
SMALL = dict(TINY_NETWORK)


class CreatesMarker:
    """Unpickling this calls ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def write_hostile(folder: Path) -> tuple[dict[str, Path], Path]:
    """The same payload as a torch zip checkpoint and as a bare pickle (protocols 2 and 4); and its marker."""
    marker = folder / "marker_code_ran"
    payload = {"payload": CreatesMarker(marker), "global_module.x": torch.zeros(1)}
    files = {"zip": folder / "hostile.pt", "pickle2": folder / "hostile_p2.ckpt", "pickle4": folder / "hostile_p4.pth"}
    torch.save(payload, files["zip"])
    with open(files["pickle2"], "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    with open(files["pickle4"], "wb") as handle:
        pickle.dump(payload, handle, protocol=4)
    return files, marker


def test_crafted_file_would_run_code(tmp_path):
    """The fixture is hostile: an unrestricted unpickler creates the marker."""
    files, marker = write_hostile(tmp_path)
    with open(files["pickle2"], "rb") as handle:
        pickle.load(handle)  # noqa: S301 -- our own crafted file, to prove the marker works
    assert marker.exists()


LOADERS = {
    "load_original_checkpoint": lambda path: load_original_checkpoint(path),
    "load_weights": lambda path: load_weights(GLAM(**SMALL), path),
    "load_global_module": lambda path: load_global_module(GLAM(**SMALL), path),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", ["zip", "pickle2", "pickle4"])
def test_code_running_pickle_is_refused_with_one_named_line(tmp_path, loader, kind):
    files, marker = write_hostile(tmp_path)
    with pytest.raises(CheckpointError) as info:
        LOADERS[loader](files[kind])
    message = str(info.value)
    assert message.startswith(f"{files[kind]}: refused: the file's pickle asks for ")
    assert message.endswith("only plain tensors are loaded (weights_only)") and "\n" not in message
    if kind != "pickle4":  # protocol 4 stops earlier, at an opcode torch does not take
        assert "system" in message
    assert not marker.exists(), "code in the checkpoint ran"


def run_script(src: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(src), str(dst)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_import_script_refuses_with_one_line_and_exit_status(tmp_path):
    files, marker = write_hostile(tmp_path)
    result = run_script(files["zip"], tmp_path / "out.pt")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"CheckpointError: {files['zip']}: refused: the file's pickle asks for posix.system")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_import_script_lists_missing_keys_in_one_line(tmp_path):
    src = tmp_path / "partial.ckpt"
    torch.save({"global_network.unknown.weight": torch.zeros(1)}, src)
    result = run_script(src, tmp_path / "out.pt")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"CheckpointError: {src}: ") and "expected keys are missing" in lines[0]
    assert "global_module.backbone." in lines[0] and "... and " in lines[0]


def test_conversion_lists_missing_and_wrongly_shaped_keys():
    network = GLAM(**SMALL)
    bundle_key = next(k for k in network.state_dict() if k.startswith("global_module.backbone."))
    original_key = bundle_key.replace("global_module.backbone.", "global_network.downsampling_branch.")
    with pytest.raises(CheckpointError) as info:
        convert_original_state_dict({original_key: torch.zeros(3, 3)}, network, source="x.ckpt")
    assert str(info.value).startswith("x.ckpt: 1 keys have the wrong shape: ")
    assert original_key in str(info.value) and "(3, 3)" in str(info.value)
    with pytest.raises(KeyError) as info:  # CheckpointKeyError: still a KeyError, as before
        convert_original_state_dict({}, network, source="x.ckpt")
    assert isinstance(info.value, CheckpointKeyError) and bundle_key in str(info.value)


def test_bundle_checkpoint_with_missing_or_wrongly_shaped_keys(tmp_path):
    state = GLAM(**SMALL).state_dict()
    global_keys = [k for k in state if k.startswith("global_module.")]
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k not in global_keys[:2]}, missing)
    with pytest.raises(CheckpointKeyError) as info:
        load_global_module(GLAM(**SMALL), missing)
    assert all(k in str(info.value) for k in global_keys[:2]) and "2 of the" in str(info.value)

    wrong = tmp_path / "wrong.pt"
    conv = next(k for k in global_keys if state[k].ndim == 4)
    torch.save({**state, conv: torch.zeros(1, 1, 1, 1)}, wrong)
    for loader in (load_weights, load_global_module):
        with pytest.raises(CheckpointError) as info:
            loader(GLAM(**SMALL), wrong)
        assert str(info.value).startswith(f"{wrong}: shape mismatch") and conv in str(info.value)
        assert "\n" not in str(info.value)


def test_empty_truncated_and_non_tensor_checkpoints(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_original_checkpoint(empty)
    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(8)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_original_checkpoint(truncated)
    mixed = tmp_path / "mixed.pt"
    torch.save({"a": torch.zeros(1), "epoch": 3}, mixed)
    with pytest.raises(CheckpointError, match=r"not a state dict of tensors: 1 entries are not tensors \(epoch\)"):
        load_original_checkpoint(mixed)
    with pytest.raises(FileNotFoundError):
        load_weights(GLAM(**SMALL), tmp_path / "absent.pt")
