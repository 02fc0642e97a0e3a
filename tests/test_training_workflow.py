"""The global-module training workflow (configs/train_global.json) on phantoms, with a bad case."""

import csv

import torch
from monai.bundle import ConfigWorkflow

from glam_bundle.data.datalist import load_datalist, write_datalist
from glam_bundle.data.phantom import generate_dataset
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES


def test_training_skips_and_reports_bad_cases(tmp_path):
    fractions = {"training": 0.6, "validation": 0.4}
    phantoms = generate_dataset(tmp_path / "ph", n_images=6, height=736, width=480, seed=3,
                                prevalence={"benign": 0.5, "malignant": 0.5}, fractions=fractions)
    splits = {name: load_datalist(phantoms, name) for name in fractions}
    bad = tmp_path / "ph" / "images" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    splits["training"].append({"image": str(bad), "benign": 1, "malignant": 0, "patient_id": "broken"})
    write_datalist(splits, tmp_path / "data" / "datalist.json")
    out, models = tmp_path / "out", tmp_path / "models"
    workflow = ConfigWorkflow(
        config_file=str(REPO_ROOT / "configs" / "train_global.json"), meta_file=str(REPO_ROOT / "metadata.json"),
        workflow_type="train", logging_file=False, dataset_dir=str(tmp_path / "data"), output_dir=str(out),
        ckpt_dir=str(models), cache_dir=str(tmp_path / "cache"), max_epochs=2, batch_size=2, **SMALL_NETWORK_OVERRIDES,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    before = {k: v.clone() for k, v in workflow.network_def.state_dict().items()}
    workflow.run()
    workflow.finalize()

    with open(out / "train_failures.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == [str(bad)] * 2  # once per epoch
    assert "PNG" in rows[0]["error"]
    state = torch.load(models / "model_global.pt", map_location="cpu", weights_only=True)
    changed = [k for k in before if "global_module" in k and not torch.equal(before[k], state[k].cpu())]
    assert changed, "the global module was not trained"
    # only the global module is optimised in this stage
    assert all(torch.equal(before[k], state[k].cpu()) for k in before if k.startswith("local_module") and "weight" in k)
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard log"
