"""The inference workflow (configs/inference.json): outputs, bad input, parity with the original pipeline."""

import csv
import gc
import json
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow, verify_net_in_out
from PIL import Image

from glam_bundle.data.phantom import generate_dataset
from tests.conftest import NYU_SAMPLE, ORIGINAL_CHECKPOINT, REPO_ROOT, SMALL_NETWORK_OVERRIDES, require

CONFIG = str(REPO_ROOT / "configs" / "inference.json")
META = str(REPO_ROOT / "metadata.json")


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_workflow(**override):
    override.setdefault("allow_random_weights", True)  # no trained weights in the tests
    workflow = ConfigWorkflow(config_file=CONFIG, meta_file=META, workflow_type="infer", logging_file=False, **override)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


@pytest.mark.parametrize("background", [False, True], ids=["engine_thread", "writer_thread"])
def test_synthetic_images_with_bad_cases(tmp_path, background):
    datalist_path = generate_dataset(tmp_path / "data", n_images=4, height=736, width=480, seed=1)
    datalist = json.loads(datalist_path.read_text())
    items = [item for split in datalist.values() for item in split]
    bad = tmp_path / "data" / "bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes((tmp_path / "data" / items[0]["image"]).read_bytes()[:300])
    Image.fromarray(np.full((736, 480, 3), (128, 0, 0), np.uint8)).save(bad / "rgb.png")  # colour
    items += [{"image": "bad/truncated.png"}, {"image": "bad/rgb.png"}, {"image": "bad/missing.png"}]
    (tmp_path / "data" / "all.json").write_text(json.dumps({"test": items}))
    out = tmp_path / "out"
    run_workflow(dataset_dir=str(tmp_path / "data"), datalist=str(tmp_path / "data" / "all.json"), output_dir=str(out),
                 write_in_background=background, **SMALL_NETWORK_OVERRIDES)

    rows = read_csv(out / "predictions.csv")
    assert [r["image"].split("/")[-1] for r in rows] == [i["image"].split("/")[-1] for i in items[:4]]
    for row, item in zip(rows, items):
        assert 0 <= float(row["benign_pred"]) <= 1 and 0 <= float(row["malignant_pred"]) <= 1
        assert row["benign_label"] == str(item["benign"]) and row["malignant_label"] == str(item["malignant"])
        stem = row["image"].split("/")[-1][: -len(".png")]
        saliency = nib.load(out / f"{stem}_saliency.nii.gz").get_fdata(dtype=np.float32)
        assert saliency.shape == (2, 736, 480) and saliency.dtype == np.float32
        assert 0 <= saliency.min() and saliency.max() <= 1
        r, c = map(int, row["patch_locations"].split())
        assert 0 <= r <= 736 - 128 and 0 <= c <= 480 - 128
        with Image.open(out / f"{stem}_figure.png") as figure:
            assert figure.format == "PNG" and figure.size[0] > figure.size[1]
    failures = {r["image"].split("/")[-1]: r["error"] for r in read_csv(out / "failures.csv")}
    assert set(failures) == {"truncated.png", "rgb.png", "missing.png"}
    assert "truncated" in failures["truncated.png"] and "RGB" in failures["rgb.png"]
    assert "not found" in failures["missing.png"]
    assert not list(out.glob(".*")) and not (out / "predictions.csv.partial").exists()  # no temporary files left


@pytest.mark.slow
def test_nyu_sample_reproduces_the_original_pipeline(tmp_path):
    """Original checkpoint + NYU sample folder through `python -m monai.bundle run`: the authors' outputs."""
    golden = np.load(require(ORIGINAL_CHECKPOINT / "golden_0_L-CC.npz"))
    weights = tmp_path / "model.pt"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "import_original_checkpoint.py"),
                    str(ORIGINAL_CHECKPOINT / "random_init_seed0.ckpt"), str(weights)], check=True, capture_output=True)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIG, "--meta_file", META,
         "--dataset_dir", str(require(NYU_SAMPLE / "images")), "--output_dir", str(out), "--ckpt_path", str(weights),
         "--frame_transforms#keep_artefacts", "true"],  # the original keeps 0_L-CC's burned-in "L"
        check=True, capture_output=True, cwd=REPO_ROOT,
    )
    rows = {r["image"].split("/")[-1]: r for r in read_csv(out / "predictions.csv")}
    assert set(rows) == {"0_L-CC.png", "0_R-CC.png"} and read_csv(out / "failures.csv") == []
    left = rows["0_L-CC.png"]
    np.testing.assert_allclose([float(left["benign_pred"]), float(left["malignant_pred"])], golden["prediction"][0], atol=1e-4)
    assert left["patch_locations"] == " ".join(str(v) for v in golden["patch_locations"][0, 0])
    saliency = nib.load(out / "0_L-CC_saliency.nii.gz").get_fdata(dtype=np.float32)
    assert np.abs(saliency - golden["saliency"][0]).max() <= 1e-3
    assert (out / "0_R-CC_figure.png").stat().st_size > 0


@pytest.mark.slow
def test_verify_net_in_out_on_the_inference_network():
    """MONAI's check of the network against metadata, at 2944x1920 with the single-tensor GLAM wrapper."""
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=CONFIG, device="cpu",
                      **{"network_def#_target_": "glam_bundle.networks.GLAMSaliency"})


def _writer_batches(n_batches: int):
    """(batch, output) pairs of two 8x8 cases each, as the inference evaluator hands them to its handlers."""
    import torch
    from monai.data import MetaTensor, list_data_collate

    for b in range(n_batches):
        items = [{"image": MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": f"/d/case{2 * b + i}.png"})}
                 for i in range(2)]
        pred = {"y_global": torch.tensor([[0.1, 0.2], [0.3, 0.4]]) + b, "patch_locations": torch.zeros(2, 1, 2),
                "saliency": torch.rand(2, 2, 8, 8)}
        yield list_data_collate(items), {"pred": pred, "label": torch.full((2, 2), -1.0)}


def _engine(batch, output):
    return type("Engine", (), {"state": type("State", (), {"batch": batch, "output": output})})()


def test_background_writer_keeps_order_failures_and_stops_on_a_full_disk(tmp_path, monkeypatch):
    """``write_in_background``: rows in input order, a case whose file cannot be written listed in failures.csv
    while the others go on, and a full disk raised in the engine's thread (at the next image or the end)."""
    import errno

    from glam_bundle.handlers import inference_writer
    from glam_bundle.handlers.inference_writer import GLAMInferenceWriter

    writer = GLAMInferenceWriter(tmp_path / "out", write_figures=False, background=True)
    writer.reset(None)
    real_save = inference_writer.nib.save

    def flaky_save(image, path):
        if "case3" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_save(image, path)

    monkeypatch.setattr(inference_writer.nib, "save", flaky_save)
    for batch, output in _writer_batches(3):
        writer.write_iteration(_engine(batch, output))
    writer.write_failures_file(_engine(None, None))
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == [f"/d/case{i}.png" for i in (0, 1, 2, 4, 5)]
    assert all((tmp_path / "out" / row["saliency_file"]).is_file() for row in rows)
    with open(tmp_path / "out" / "failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [f["image"] for f in failures] == ["/d/case3.png"] and "Permission denied" in failures[0]["error"]
    assert not _writer_threads()  # the run's thread ends with the run

    def full_disk(image, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(inference_writer.nib, "save", full_disk)
    writer = GLAMInferenceWriter(tmp_path / "full", write_figures=False, background=True)
    writer.reset(None)
    batches = _writer_batches(2)
    writer.write_iteration(_engine(*next(batches)))  # handed to the writer thread: the engine goes on
    with pytest.raises(OSError, match="No space left"):
        writer.write_iteration(_engine(*next(batches)))  # waits for the previous image's files first
    assert _writer_threads()
    del writer  # the run stopped on the error; a server drops the workflow and goes on
    gc.collect()
    for _ in range(100):  # the idle thread sees the shutdown and ends
        if not _writer_threads():
            break
        time.sleep(0.05)
    assert not _writer_threads()


def _writer_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("glam-inference-writer") and t.is_alive()]


def test_release_outputs_drops_the_iteration_tensors():
    from glam_bundle.handlers import ReleaseIterationOutputs

    batch, output = next(_writer_batches(1))
    engine = _engine(batch, output)
    ReleaseIterationOutputs()(engine)
    assert engine.state.output is None and engine.state.batch is None


def test_release_outputs_trims_the_heap_where_glibc_has_it(monkeypatch):
    from glam_bundle.handlers import ReleaseIterationOutputs

    calls = []
    handler = ReleaseIterationOutputs()
    if handler.trim is None:
        pytest.skip("no glibc malloc_trim here")
    monkeypatch.setattr(handler, "trim", calls.append)
    handler(_engine(*next(_writer_batches(1))))
    assert calls == [0]
    assert ReleaseIterationOutputs(trim_heap=False).trim is None
