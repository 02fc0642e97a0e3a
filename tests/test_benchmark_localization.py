"""scripts/benchmark_localization.py: the lesion kinds in the phantom datalist, the command-line errors, and the
whole --quick pipeline (phantoms -> CAM, GMIC and GLAM trained and evaluated through the configs -> report) into
tmp_path (about 90 s on 2 CPU cores)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from monai.data import list_data_collate

from glam_bundle.constants import CLASS_NAMES
from glam_bundle.data.datalist import load_datalist
from glam_bundle.data.phantom import LESION_KINDS, generate_dataset, make_phantom

from .conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "benchmark_localization.py"
METRICS = ("dice", "image_pxap", "dataset_pxap", "auc")


def test_phantom_kinds_recorded(tmp_path):
    phantom = make_phantom(368, 240, "CC", "L", ["benign", "calcification_cluster"], rng=0, lesion_scale=2.0)
    assert phantom.kinds == ("benign_mass", "calcification_cluster")
    assert make_phantom(184, 120, rng=0).kinds == ()
    path = generate_dataset(tmp_path / "ds", n_images=12, height=184, width=120, seed=1,
                            prevalence={"benign": 0.5, "malignant": 0.5})
    items = load_datalist(path)
    for item in items:
        kinds = item["lesion_kinds"].split()
        assert all(kind in LESION_KINDS for kind in kinds)
        assert sorted(LESION_KINDS[k] for k in kinds) == sorted(c for c in CLASS_NAMES if item[c])
        for kind in kinds:
            assert f"mask_{LESION_KINDS[kind]}" in item
    assert any(item["lesion_kinds"] == "" for item in items) and any(item["lesion_kinds"] for item in items)
    # a string, so items with different numbers of lesions still collate into one training batch
    assert len(list_data_collate([{"k": item["lesion_kinds"]} for item in items])["k"]) == len(items)


@pytest.mark.parametrize(
    "args, message",
    [(["--quick", "--full"], "not allowed with"), (["--n_images", "3"], "--n_images"),
     (["--epochs", "1", "0", "1"], "--epochs")],
)
def test_errors_exit_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, str(SCRIPT), *args, "--work_dir", str(tmp_path / "w"),
                             "--report_dir", str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()


def test_refuses_a_work_dir_of_another_run(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "benchmark_settings.json").write_text('{"n_images": 3}')
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--work_dir", str(work), "--report_dir",
                             str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2 and "other settings" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["benchmark_settings.json"]


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    work, report = tmp_path / "work", tmp_path / "report"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--work_dir", str(work), "--report_dir",
                             str(report)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((report / "benchmark_localization.json").read_text())
    config = data["config"]
    assert config["preset"] == "quick" and config["seed"] == 0 and config["n_images"] == 40
    assert {"command", "machine", "epochs", "wall_time_s", "lesion_size"} <= set(config)
    assert set(config["lesion_size"]) == set(LESION_KINDS)
    assert set(data["methods"]) == {"cam", "gmic", "glam"}
    for name, method in data["methods"].items():
        for metric in METRICS:
            assert set(method[metric]) == {"benign", "malignant"}, (name, metric)
            for value in method[metric].values():
                assert value is None or 0.0 <= value <= 1.0
        assert set(method["per_kind"]) == set(LESION_KINDS)
        assert set(method["wall_time_s"]) == {"train", "evaluate", "per_image"}
        # the benign class has one kind, so its per-kind figures are the evaluation's own
        benign = method["per_kind"]["benign_mass"]
        if benign["n"]:
            assert np.isclose(benign["dice"], method["dice"]["benign"], atol=1e-6)
            assert np.isclose(benign["auc"], method["auc"]["benign"], atol=1e-6)
        assert (work / name / "evaluate" / "metrics.json").is_file()
    # every lesion at most 1 % of its breast (the small-lesion rule), measured on the phantoms written
    assert all(size["max_fraction_of_breast"] <= 0.01 for size in config["lesion_size"].values() if size["lesions"])
    # stage 2's patch recall, read back from each two-stage method's patch cache; CAM selects no patches
    assert data["methods"]["cam"]["patch_recall"] is None
    for name in ("gmic", "glam"):
        recall = data["methods"][name]["patch_recall"]
        assert recall["num_patches"] == 6 and recall["lesions"]["overall"] > 0
        assert 0.0 <= recall["recall_at_1"]["overall"] <= recall["recall"]["overall"] <= 1.0
    assert (work / "cam" / "models" / "model_global.pt").is_file()
    assert (work / "glam" / "models" / "model.pt").is_file() and (work / "gmic" / "models" / "model.pt").is_file()
    text = (report / "benchmark_localization.md").read_text()
    assert "| Method | Dice malignant | Dice benign |" in text and "smoke test" in text
    for label in ("| CAM |", "| GMIC |", "| GLAM |", "calcification cluster", "median lesion / breast area",
                  "## Patch selection (stage 2, training images)"):
        assert label in text
    assert (report / "benchmark_localization.png").stat().st_size > 10_000
