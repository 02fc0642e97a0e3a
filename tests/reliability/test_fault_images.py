"""Hostile images through the real inference path, and hostile checkpoints, datalists and exam lists.

One ``python -m monai.bundle run --config_file configs/inference.json`` over a datalist of every case of
``cases.IMAGE_CASES`` (random bytes behind PNG/DICOM/NIfTI headers, truncated files, decompression bombs of each
format, DICOM without pixel data or with inconsistent Rows/Columns, colour, 1-pixel and constant images, NaN/inf
in NIfTI, empty files, names with spaces and non-ASCII characters, a symlink loop, an unreadable file, a path
outside the data root) and two good phantoms: the run goes on past every bad case, failures.csv names each file
and its problem in one line, and the good images' outputs are all there.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
from monai.bundle import ConfigWorkflow

from glam_bundle.data.builders.nyu import restricted_load_pickle
from glam_bundle.data.datalist import load_inference_data
from glam_bundle.data.errors import BadInputError
from glam_bundle.errors import user_error_message
from tests.conftest import REPO_ROOT
from tests.reliability import cases as C


def test_hostile_images_through_inference(tmp_path):
    datalist = C.make_phantoms(tmp_path / "ph", n_images=2, fractions={"test": 1.0})
    good = [tmp_path / "ph" / item["image"] for item in json.loads(datalist.read_text())["test"]]
    built = C.build_image_cases(tmp_path / "data" / "cases", good[0])
    items = [{"image": str(path)} for _, path in built]
    items.insert(len(items) // 2, {"image": str(good[0])})
    items.append({"image": str(good[1])})
    listing = tmp_path / "data" / "all.json"
    listing.write_text(json.dumps({"test": items}))

    result = C.run_bundle(C.inference_args(tmp_path / "out", datalist=listing),
                          env={"GLAM_FAULT_DENY_READ": C.UNREADABLE_MARK})
    assert result.returncode == 0, result.stderr[-3000:]
    report = C.check_inference(tmp_path / "out", built, good)
    unhandled = [c for c in report["cases"] if not c.handled]
    assert not unhandled, unhandled
    assert report["good_lost"] == [] and report["duplicates"] == []
    n_failed = sum(c.outcome.startswith("failed") for c in report["cases"])
    assert f"inference: {n_failed} of {len(items)} images FAILED" in result.stdout + result.stderr
    assert not C.temporary_leftovers(tmp_path / "out")


def _infer_in_process(tmp_path, **override):
    C.make_phantoms(tmp_path / "ph", n_images=1, fractions={"test": 1.0})
    settings = dict(C.TINY)
    workflow = ConfigWorkflow(config_file=str(REPO_ROOT / C.INFERENCE_CONFIG), meta_file=str(REPO_ROOT / "metadata.json"),
                              workflow_type="infer", logging_file=False, dataset_dir=str(tmp_path / "ph" / "images"),
                              output_dir=str(tmp_path / "out"), **settings, **override)
    workflow.initialize()
    workflow.run()


@pytest.mark.parametrize("kind", ["zip", "pickle2", "pickle4"])
def test_hostile_checkpoint_through_checkpoint_loader(tmp_path, kind):
    """Inference's MONAI CheckpointLoader (weights_only) refuses it; the error hook's line names --ckpt_path."""
    files, marker = C.write_hostile(tmp_path)
    with pytest.raises(Exception) as info:
        _infer_in_process(tmp_path, ckpt_path=str(files[kind]))
    line = user_error_message(info.value)
    assert line and line.startswith("--ckpt_path: refused to load the checkpoint: ") and "weights_only" in line
    assert ("posix.system" in line) == (kind != "pickle4")
    assert not marker.exists(), "code in the checkpoint ran"


def test_truncated_and_empty_checkpoints_through_checkpoint_loader(tmp_path):
    import torch

    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(64)}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:200])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, phrase in (("truncated.pt", "truncated or corrupt"), ("empty.pt", "empty or truncated")):
        with pytest.raises(Exception) as info:
            _infer_in_process(tmp_path, ckpt_path=str(tmp_path / name))
        line = user_error_message(info.value)
        assert line and line.startswith("--ckpt_path: ") and phrase in line, line


def test_out_of_memory_names_the_settings(tmp_path, monkeypatch):
    """An allocation failing in the network (PyTorch's CPU allocator message) ends in a line naming the settings to
    lower."""
    from glam_bundle.networks import GLAM

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 5787025408 bytes.")

    monkeypatch.setattr(GLAM, "forward", out_of_memory)
    with pytest.raises(Exception) as info:
        _infer_in_process(tmp_path, allow_random_weights=True)
    line = user_error_message(info.value)
    assert line and line.startswith("out of memory (an allocation of 5.8 GB failed)"), line
    assert all(setting in line for setting in ("--batch_size", "--image_size", "--crop_size", "--num_workers"))
    assert user_error_message(MemoryError("Unable to allocate 5.39 GiB for an array")).startswith("out of memory")


def test_hostile_exam_list_is_refused_and_runs_nothing(tmp_path):
    path, marker = C.hostile_exam_list(tmp_path)
    with pytest.raises(BadInputError, match=r"refused to load (posix|nt)\.system"):
        restricted_load_pickle(path)
    assert not marker.exists()


def test_hostile_datalists_are_one_line_errors(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    for name, (content, phrase) in C.DATALIST_CASES(tmp_path, str(image)).items():
        path = C.write_datalist_case(tmp_path, name, content)
        with pytest.raises(BadInputError) as info:
            load_inference_data(tmp_path, path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and phrase in message and "\n" not in message, (name, message)


def test_symlink_loop_and_unreadable_files_in_a_folder(tmp_path, caplog):
    """Listing a folder: a symlink loop and a mode-000 file are listed, then fail by name when read."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "loop")  # a folder loop: os.walk does not follow it
    C.make_phantoms(tmp_path / "ph", n_images=1, fractions={"test": 1.0})
    good = next((tmp_path / "ph" / "images").iterdir())
    os.symlink(good, folder / "good.png")
    C.build_image_cases(folder, good, [c for c in C.IMAGE_CASES if c.name in ("loop_a.png", "unreadable.png")])
    with caplog.at_level(logging.INFO):
        items = load_inference_data(folder)
    names = sorted(os.path.relpath(item["image"], folder) for item in items)
    assert "good.png" in names and "unreadable.png" in names
