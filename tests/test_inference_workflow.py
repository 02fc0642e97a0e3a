"""The inference workflow (configs/inference.json): outputs, bad input, parity with the original pipeline."""

import csv
import json
import subprocess
import sys

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


def test_synthetic_images_with_bad_cases(tmp_path):
    datalist_path = generate_dataset(tmp_path / "data", n_images=4, height=736, width=480, seed=1)
    datalist = json.loads(datalist_path.read_text())
    items = [item for split in datalist.values() for item in split]
    bad = tmp_path / "data" / "bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes((tmp_path / "data" / items[0]["image"]).read_bytes()[:300])
    Image.fromarray(np.full((736, 480, 3), 128, np.uint8)).save(bad / "rgb.png")
    items += [{"image": "bad/truncated.png"}, {"image": "bad/rgb.png"}, {"image": "bad/missing.png"}]
    (tmp_path / "data" / "all.json").write_text(json.dumps({"test": items}))
    out = tmp_path / "out"
    run_workflow(dataset_dir=str(tmp_path / "data"), datalist=str(tmp_path / "data" / "all.json"), output_dir=str(out), **SMALL_NETWORK_OVERRIDES)

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
