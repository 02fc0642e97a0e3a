"""The evaluation workflow (configs/evaluate.json merged over configs/train_global.json) and its report
(glam_bundle/handlers/evaluation_report.py), on a tiny phantom set with a 1-epoch model of reduced size.

The report's numbers are checked against an independent recomputation (NumPy Dice, scikit-learn average
precision and ROC AUC) from the outputs the evaluator produced, captured by an extra handler.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from glam_bundle.data.datalist import load_datalist, write_datalist
from glam_bundle.data.phantom import generate_dataset
from glam_bundle.handlers import DatasetLevelPxAP, ImageLevelPxAP, PerClassROCAUC, SoftDice
from glam_bundle.checkpoint import require_checkpoint
from glam_bundle.handlers.evaluation_report import EvaluationReport, format_value
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES

TRAIN_CONFIG = str(REPO_ROOT / "configs" / "train_global.json")
EVAL_CONFIG = str(REPO_ROOT / "configs" / "evaluate.json")
META_FILE = str(REPO_ROOT / "metadata.json")
CLASSES = ("benign", "malignant")  # channel order
MAPS = {"S_g": "saliency_global", "S_l": "saliency_local", "S_c": "saliency"}
EXPECTED_HEADER = [
    "Saliency map",
    "Dice malignant", "Dice benign",
    "Image-level PxAP malignant", "Image-level PxAP benign",
    "Dataset-level PxAP malignant", "Dataset-level PxAP benign",
    "AUC malignant", "AUC benign",
]  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _workflow(config_file, **override) -> ConfigWorkflow:
    return ConfigWorkflow(config_file=config_file, meta_file=META_FILE, logging_file=False, **override)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Phantom dataset (test split: 3 benign and 3 malignant positives and negatives, plus one unreadable
    file) and a checkpoint from one training epoch. Returns the paths and the common overrides."""
    root = tmp_path_factory.mktemp("evaluate")
    fractions = {"training": 0.5, "validation": 0.1, "test": 0.4}
    phantoms = generate_dataset(root / "phantoms", n_images=14, height=736, width=480,
                                prevalence={"benign": 0.5, "malignant": 0.5}, seed=0, fractions=fractions)
    splits = {name: load_datalist(phantoms, name) for name in fractions}
    bad_image = root / "phantoms" / "images" / "truncated.png"
    bad_image.write_bytes(PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR")
    splits["test"].append({"image": str(bad_image), "benign": 0, "malignant": 1, "patient_id": "bad"})
    dataset_dir = root / "data"
    write_datalist(splits, dataset_dir / "datalist.json")

    override = dict(SMALL_NETWORK_OVERRIDES, dataset_dir=str(dataset_dir), cache_dir=str(root / "cache"))
    ckpt_dir = root / "models"
    workflow = _workflow(TRAIN_CONFIG, workflow_type="train", max_epochs=1, ckpt_dir=str(ckpt_dir),
                         output_dir=str(root / "train_out"), **override)  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    checkpoint = ckpt_dir / "model_global.pt"
    assert checkpoint.is_file()
    return {"root": root, "override": override, "checkpoint": checkpoint, "splits": splits, "bad_image": bad_image}


class _Capture:
    """Keeps a CPU copy of every non-empty evaluator output (maps, masks, predictions, labels, images)."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, np.ndarray]] = []

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not output:
            return
        kept = {key: output["pred"][key] for key in (*MAPS.values(), "y_global")}
        kept.update(mask=output["mask"], label=output["label"], image=output["image"])
        self.outputs.append({k: np.asarray(v.detach().cpu(), dtype=np.float64) for k, v in kept.items()})

    def stacked(self, key: str) -> np.ndarray:
        return np.concatenate([o[key] for o in self.outputs])


@pytest.fixture(scope="module")
def evaluated(trained):
    """Run the merged evaluate workflow with a capture handler; returns its outputs, report and workflow."""
    output_dir = trained["root"] / "eval_out"
    workflow = _workflow([TRAIN_CONFIG, EVAL_CONFIG], workflow_type=None, ckpt_path=str(trained["checkpoint"]),
                         output_dir=str(output_dir), **trained["override"])  # fmt: skip
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    capture = _Capture()
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, capture)
    workflow.run()
    workflow.finalize()
    return {
        "dir": output_dir,
        "capture": capture,
        "metrics": json.loads((output_dir / "metrics.json").read_text()),
        "table": (output_dir / "table.md").read_text(),
        "workflow": workflow,
        "evaluator": evaluator,
    }


def _nearest_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) -> (N, C, H, W) by nearest neighbour, source index floor(dst * in / out)."""
    rows = np.floor(np.arange(size[0]) * (maps.shape[-2] / size[0])).astype(int)
    cols = np.floor(np.arange(size[1]) * (maps.shape[-1] / size[1])).astype(int)
    return maps[..., rows, :][..., cols]


def _truncate_to_bins(scores: np.ndarray, precision_bits: int = 14, min_exponent: int = -40) -> np.ndarray:
    """Scores rounded down to the default log-linear bins of dataset-level PxAP: float32 with the mantissa
    truncated to ``precision_bits`` bits; scores below 2**min_exponent share the lowest bin."""
    values = np.maximum(scores.astype(np.float32), np.float32(2.0**min_exponent))
    bits = values.view(np.uint32) & ~np.uint32((1 << (23 - precision_bits)) - 1)
    return bits.view(np.float32)


def _independent_localisation(capture: _Capture) -> dict:
    """Dice / image-level PxAP (mean, population std, count) and dataset-level AP (exact, and on binned
    scores) per map and class, with NumPy and scikit-learn."""
    masks = capture.stacked("mask") > 0.5
    result = {}
    for label, key in MAPS.items():
        maps = _nearest_resize(capture.stacked(key), masks.shape[-2:])
        entry = {}
        for c, name in enumerate(CLASSES):
            counted = [i for i in range(len(masks)) if masks[i, c].any()]
            s, g = maps[counted, c], masks[counted, c]
            dice = 2 * (s * g).sum(axis=(1, 2)) / ((s * s).sum(axis=(1, 2)) + g.sum(axis=(1, 2)))
            aps = np.array([average_precision_score(g[i].ravel(), s[i].ravel()) for i in range(len(counted))])
            entry[name] = {
                "count": len(counted),
                "dice": (dice.mean(), dice.std()),
                "image_pxap": (aps.mean(), aps.std()),
                "dataset_pxap": average_precision_score(g.ravel(), s.ravel()),
                "dataset_pxap_binned": average_precision_score(g.ravel(), _truncate_to_bins(s.ravel())),
                "positive_pixels": int(g.sum()),
                "negative_pixels": int(g.size - g.sum()),
            }
        result[label] = entry
    return result


def test_counts_and_failures(evaluated, trained):
    metrics, capture = evaluated["metrics"], evaluated["capture"]
    test_items = [item for item in trained["splits"]["test"] if item["patient_id"] != "bad"]
    assert metrics["num_images"] == len(test_items) == len(capture.stacked("label")) == 6
    assert metrics["num_failures"] == 1
    assert metrics["failures"][0]["image"] == str(trained["bad_image"])
    assert metrics["failures"][0]["error"]
    for c, name in enumerate(CLASSES):
        positives = sum(item[name] for item in test_items)
        assert metrics["labels"][name] == {"positive": positives, "negative": 6 - positives, "unknown": 0}
        assert positives == 3  # both classes have lesions and lesion-free images in this test split
        assert int(capture.stacked("label")[:, c].sum()) == positives
    assert metrics["checkpoint"] == str(trained["checkpoint"].resolve())
    assert metrics["info"]["split"] == "test"


def test_localisation_metrics_match_independent_computation(evaluated):
    reported = evaluated["metrics"]["localisation"]
    expected = _independent_localisation(evaluated["capture"])
    assert list(reported) == list(MAPS)
    for label in MAPS:
        for name in CLASSES:
            want, got = expected[label][name], reported[label]
            assert want["count"] == 3
            for metric in ("dice", "image_pxap"):
                assert got[metric][name]["count"] == want["count"]
                assert got[metric][name]["mean"] == pytest.approx(want[metric][0], abs=1e-6)
                assert got[metric][name]["std"] == pytest.approx(want[metric][1], abs=1e-6)
            dataset = got["dataset_pxap"][name]
            assert (dataset["positive_pixels"], dataset["negative_pixels"]) == (
                want["positive_pixels"],
                want["negative_pixels"],
            )
            # Exact on the binned scores. The binning itself moves AP a little: the maps of a 1-epoch model are
            # near-constant (AP at chance, ~0.006), so merging near-ties shifts it by up to ~5% of that small value;
            # test_metrics.py checks the binning's accuracy on maps that rank pixels.
            assert dataset["ap"] == pytest.approx(want["dataset_pxap_binned"], abs=1e-9)
            assert dataset["ap"] == pytest.approx(want["dataset_pxap"], rel=0.02, abs=1e-3), (label, name)


def test_auc_matches_sklearn_and_engine_metrics(evaluated):
    metrics, capture = evaluated["metrics"], evaluated["capture"]
    predictions, labels = capture.stacked("y_global"), capture.stacked("label")
    for c, name in enumerate(CLASSES):
        assert metrics["classification_auc"][name] == pytest.approx(roc_auc_score(labels[:, c], predictions[:, c]))
    engine = metrics["engine_metrics"]
    for prefix, label in (("sg", "S_g"), ("sl", "S_l"), ("sc", "S_c")):
        for name in CLASSES:
            assert engine[f"{prefix}_dice_{name}_mean"] == metrics["localisation"][label]["dice"][name]["mean"]
            assert engine[f"{prefix}_dataset_pxap_{name}"] == metrics["localisation"][label]["dataset_pxap"][name]["ap"]
        assert engine[f"auc_{name}"] == metrics["classification_auc"][name]


def test_checkpoint_weights_were_loaded(evaluated, trained):
    """The evaluated network is the trained one: a fresh network loaded from the file gives the same output."""
    network = evaluated["workflow"].parser.get_parsed_content("network_def", instantiate=True, lazy=False)
    network.load_state_dict(torch.load(trained["checkpoint"], map_location="cpu", weights_only=True))
    network.eval()
    capture = evaluated["capture"]
    with torch.no_grad():
        out = network(torch.as_tensor(capture.outputs[0]["image"], dtype=torch.float32))
    np.testing.assert_allclose(out["y_global"].numpy(), capture.outputs[0]["y_global"], atol=1e-6)
    np.testing.assert_allclose(out["saliency"].numpy(), capture.outputs[0]["saliency"], atol=1e-6)


def _table_rows(table: str) -> list[list[str]]:
    rows = [line for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_table_layout_and_values_equal_metrics_json(evaluated):
    metrics = evaluated["metrics"]
    header, separator, *rows = _table_rows(evaluated["table"])
    assert header == EXPECTED_HEADER
    assert all(set(cell) == {"-"} for cell in separator)
    assert [row[0] for row in rows] == list(MAPS)
    for row in rows:
        entry = metrics["localisation"][row[0]]
        expected = [format_value(entry[m][n]["mean"], entry[m][n]["std"]) for m in ("dice", "image_pxap")
                    for n in ("malignant", "benign")]  # fmt: skip
        expected += [format_value(entry["dataset_pxap"][n]["ap"]) for n in ("malignant", "benign")]
        expected += [format_value(metrics["classification_auc"][n]) for n in ("malignant", "benign")]
        assert row[1:] == expected
        assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", row[1])  # paper style, e.g. 0.390 ± 0.253
    assert "images evaluated: 6; failures: 1" in evaluated["table"]


def test_pr_curve_pngs_are_valid(evaluated):
    assert evaluated["metrics"]["figures"] == ["pr_curve_malignant.png", "pr_curve_benign.png"]
    for name in evaluated["metrics"]["figures"]:
        path = evaluated["dir"] / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 400
            assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # not blank
    leftovers = [p.name for p in evaluated["dir"].iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary files of the atomic writes remain


def test_missing_checkpoint_fails_clearly_from_the_cli(trained, tmp_path):
    missing = tmp_path / "no_such" / "model.pt"
    output_dir = tmp_path / "eval_out"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"['{TRAIN_CONFIG}','{EVAL_CONFIG}']",
            "--meta_file", META_FILE, "--ckpt_path", str(missing), "--output_dir", str(output_dir)]  # fmt: skip
    for key, value in trained["override"].items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    result = subprocess.run(args, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2  # a user error: one line, no traceback (glam_bundle.errors)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --ckpt_path {missing}: checkpoint not found") and "Traceback" not in result.stderr
    assert not (output_dir / "metrics.json").exists()


def test_checkpoint_of_another_network_is_refused(trained, tmp_path):
    """Strict loading: the default-size network does not take the small network's checkpoint."""
    override = {k: v for k, v in trained["override"].items() if not k.startswith("network_def#")}
    workflow = _workflow([TRAIN_CONFIG, EVAL_CONFIG], workflow_type=None, ckpt_path=str(trained["checkpoint"]),
                         output_dir=str(tmp_path / "eval_out"), **override)  # fmt: skip
    workflow.initialize()
    with pytest.raises(RuntimeError) as raised:
        workflow.run()
    assert "Missing key(s) in state_dict" in str(raised.value.__cause__)  # MONAI wraps the load error
    assert not (tmp_path / "eval_out" / "metrics.json").exists()


def test_require_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path}: checkpoint not found")):
        require_checkpoint(path)
    path.write_bytes(b"")
    assert require_checkpoint(path) == str(path)


def test_training_config_properties(trained, tmp_path):
    """``check_properties()`` of the training config as MONAI apps (MONAI Label/FL) call it."""
    workflow = _workflow(TRAIN_CONFIG, workflow_type="train", output_dir=str(tmp_path / "train_out"),
                         ckpt_dir=str(tmp_path / "models"), **trained["override"])
    workflow.initialize()
    assert workflow.check_properties() == []


def test_report_prints_nan_as_na_without_lesions_of_a_class(tmp_path):
    """No image with a benign mask and one known benign label: "n/a" in the table, null in metrics.json."""
    rng = np.random.default_rng(0)
    handlers = {
        "dice": SoftDice(output_transform=lambda o: (o["saliency"], o["mask"])),
        "image_pxap": ImageLevelPxAP(output_transform=lambda o: (o["saliency"], o["mask"])),
        "dataset_pxap": DatasetLevelPxAP(output_transform=lambda o: (o["saliency"], o["mask"])),
    }
    auc = PerClassROCAUC(output_transform=lambda o: (o["y"], o["label"]))
    batches = []
    for first in (0, 2):  # two batches of two images
        mask = torch.zeros(2, 2, 32, 24)
        mask[:, 1, 8 + first : 16, 4:12] = 1  # malignant lesions only
        batches.append({
            "saliency": torch.as_tensor(rng.uniform(size=(2, 2, 32, 24)), dtype=torch.float32),
            "mask": mask,
            "y": torch.as_tensor(rng.uniform(size=(2, 2)), dtype=torch.float32),
            "label": torch.tensor([[0.0 if first == 0 else -1.0, 0.0], [-1.0, 1.0]]),
        })  # fmt: skip
    engine = Engine(lambda engine, batch: batch)
    engine.state.failures = []
    for name, handler in handlers.items():
        handler.attach(engine, name)
    auc.attach(engine, "auc")
    report = EvaluationReport(tmp_path, {"S_x": handlers}, auc=auc, checkpoint_path=None)
    report.attach(engine)
    with pytest.warns(UserWarning):  # MONAI warns about the single known benign label
        engine.run(batches)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 4
    assert metrics["labels"]["benign"] == {"positive": 0, "negative": 1, "unknown": 3}
    entry = metrics["localisation"]["S_x"]
    assert entry["dice"]["benign"] == {"mean": None, "std": None, "count": 0}
    assert entry["dataset_pxap"]["benign"]["ap"] is None
    assert metrics["classification_auc"]["benign"] is None
    assert math.isfinite(entry["dice"]["malignant"]["mean"]) and entry["dice"]["malignant"]["count"] == 4
    (_, _, row) = _table_rows((tmp_path / "table.md").read_text())
    assert row[0] == "S_x"
    assert row[2] == row[4] == row[6] == row[8] == "n/a"  # benign columns
    assert row[1] != "n/a" and row[7] != "n/a"
    assert (tmp_path / "pr_curve_benign.png").read_bytes()[:8] == PNG_SIGNATURE


def test_report_rejects_incomplete_maps(tmp_path):
    with pytest.raises(ValueError, match="lacks metric handlers"):
        EvaluationReport(tmp_path, {"S_g": {"dice": SoftDice()}})
    with pytest.raises(TypeError, match="DatasetLevelPxAP"):
        EvaluationReport(tmp_path, {"S_g": {"dice": SoftDice(), "image_pxap": ImageLevelPxAP(),
                                            "dataset_pxap": ImageLevelPxAP()}})  # fmt: skip


def test_map_breakdown_script_agrees_with_the_report(trained, evaluated, tmp_path):
    """scripts/map_breakdown.py: per image and class the Dice of each map and whether the patch holds the lesion;
    its means are the evaluation report's."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import map_breakdown

    sets = [f"{key}={json.dumps(value)}" for key, value in trained["override"].items() if key != "dataset_dir"]
    args = ["--dataset_dir", trained["override"]["dataset_dir"], "--ckpt", str(trained["checkpoint"]),
            "--out", str(tmp_path / "breakdown.json")] + [arg for s in sets for arg in ("--set", s)]
    result = map_breakdown.main(args)
    assert json.loads((tmp_path / "breakdown.json").read_text())["summary"] == result["summary"]
    reported = evaluated["metrics"]["localisation"]
    for name in CLASSES:
        entry = result["summary"][name]
        assert entry["images"] == reported["S_c"]["dice"][name]["count"] > 0
        for label in MAPS:
            assert entry[label] == pytest.approx(reported[label]["dice"][name]["mean"], abs=1e-5)
        assert entry["patch_holds_lesion"] + sum(
            1 for row in result["rows"] if row["class"] == name and row["patch_covers"] <= map_breakdown.HIT
        ) == entry["images"]
    assert all(0 <= row["patch_covers"] <= 1 and 0 <= row["S_l_in_lesion"] <= 1 for row in result["rows"])
