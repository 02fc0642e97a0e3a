"""configs/multi_gpu_inference.json and configs/multi_gpu_evaluate.json: two gloo processes on CPU under torchrun
give the outputs of one process (every image exactly once, the same values, one merged file of each kind).

The datalist has 5 phantoms and 2 unreadable files (7 items, split 4 / 3 by the DistributedSampler, a failure on
each rank). Inference runs with the seeded random initialisation (so the two runs also show that every rank builds
the weights of a single process); evaluation needs a checkpoint, saved once from a seeded network."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from glam_bundle.data.datalist import load_datalist, write_datalist
from glam_bundle.data.phantom import generate_dataset
from glam_bundle.networks import GLAM
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES

CONFIGS = REPO_ROOT / "configs"
META = str(CONFIGS / "metadata.json")
INFERENCE = f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'multi_gpu_inference.json'}']"
EVALUATE = f"['{CONFIGS / 'train_global.json'}','{CONFIGS / 'evaluate.json'}','{CONFIGS / 'multi_gpu_evaluate.json'}']"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _overrides(**extra) -> list[str]:
    args = []
    for key, value in {**SMALL_NETWORK_OVERRIDES, **extra}.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return args


def _run(command: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GLAM_DEBUG", None)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _bundle(config: str, distributed: bool) -> list[str]:
    return [*(TORCHRUN if distributed else [sys.executable]), "-m", "monai.bundle", "run", "--config_file", config,
            "--meta_file", META]


def _assert_each_rank_read_its_share(result: subprocess.CompletedProcess) -> None:
    """Each unreadable item was tried once in all (the sampler splits the items; no rank reads them all) and each
    of the two ranks finished an epoch."""
    log = result.stdout + result.stderr
    assert log.count("skipping case") == 2 and log.count("truncated.png: ") == 1, log[-3000:]
    assert log.count("Epoch[1] Complete") == 2


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """5 phantoms (benign and malignant lesions with masks) and 2 unreadable items, in one "test" split."""
    root = tmp_path_factory.mktemp("multi_gpu")
    phantoms = generate_dataset(root / "phantoms", n_images=5, height=736, width=480,
                                prevalence={"benign": 0.5, "malignant": 0.5}, seed=3, fractions={"test": 1.0})
    items = load_datalist(phantoms, "test")
    truncated = root / "phantoms" / "images" / "truncated.png"
    truncated.write_bytes(PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR")
    items.insert(1, {"image": str(truncated), "benign": 0, "malignant": 1})  # index 1: rank 1
    items.insert(4, {"image": str(root / "phantoms" / "images" / "missing.png"), "benign": 1, "malignant": 0})  # rank 0
    dataset_dir = root / "data"
    write_datalist({"test": items}, dataset_dir / "datalist.json")
    return {"root": root, "dataset_dir": dataset_dir, "datalist": dataset_dir / "datalist.json",
            "good": [item["image"] for item in items[:1] + items[2:4] + items[5:]]}


def test_two_gloo_processes_infer_like_one(data):
    root = data["root"]
    common = _overrides(dataset_dir=str(root / "phantoms"), datalist=str(data["datalist"]), allow_random_weights=True)
    _run([*_bundle(str(CONFIGS / "inference.json"), False), "--output_dir", str(root / "infer_single"), *common])
    result = _run([*_bundle(INFERENCE, True), "--output_dir", str(root / "infer_ddp"), *common])
    _assert_each_rank_read_its_share(result)

    single = _read_csv(root / "infer_single" / "predictions.csv")
    merged = _read_csv(root / "infer_ddp" / "predictions.csv")
    names = [os.path.basename(row["image"]) for row in merged]
    assert names == [os.path.basename(path) for path in data["good"]]  # every image once, in datalist order
    assert [row["image"] for row in merged] == [row["image"] for row in single]
    for one, two in zip(single, merged):
        for key in ("benign_pred", "malignant_pred"):
            assert abs(float(one[key]) - float(two[key])) <= 1e-5, (one["image"], key)
        assert {k: v for k, v in one.items() if not k.endswith("_pred")} == \
            {k: v for k, v in two.items() if not k.endswith("_pred")}
        maps = [nib.load(root / out / one["saliency_file"]).get_fdata(dtype=np.float32)
                for out in ("infer_single", "infer_ddp")]
        assert np.abs(maps[0] - maps[1]).max() <= 1e-5
    failures = {os.path.basename(row["image"]) for row in _read_csv(root / "infer_ddp" / "failures.csv")}
    assert failures == {"truncated.png", "missing.png"}
    assert failures == {os.path.basename(row["image"]) for row in _read_csv(root / "infer_single" / "failures.csv")}
    left = sorted(p.name for p in (root / "infer_ddp").iterdir() if "rank" in p.name or p.name.startswith("."))
    assert left == [] and not (root / "infer_ddp" / "predictions.csv.partial").exists()


def _assert_close(one, two, path="metrics"):
    if isinstance(one, dict):
        assert one.keys() == two.keys(), path
        for key in one:
            _assert_close(one[key], two[key], f"{path}.{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), path
        for index, (a, b) in enumerate(zip(one, two)):
            _assert_close(a, b, f"{path}[{index}]")
    elif isinstance(one, float) and isinstance(two, (int, float)):
        assert math.isclose(one, two, rel_tol=0, abs_tol=1e-6), (path, one, two)
    else:
        assert one == two, (path, one, two)


def test_two_gloo_processes_evaluate_like_one(data):
    root = data["root"]
    torch.manual_seed(0)
    network = GLAM(crop_size=SMALL_NETWORK_OVERRIDES["crop_size"],
                   **{k.split("#")[1]: v for k, v in SMALL_NETWORK_OVERRIDES.items() if k.startswith("network_def#")})
    checkpoint = root / "model.pt"
    torch.save(network.state_dict(), checkpoint)
    common = _overrides(dataset_dir=str(data["dataset_dir"]), ckpt_path=str(checkpoint))
    single_config = f"['{CONFIGS / 'train_global.json'}','{CONFIGS / 'evaluate.json'}']"
    _run([*_bundle(single_config, False), "--output_dir", str(root / "eval_single"),
          "--cache_dir", str(root / "cache_single"), *common])
    result = _run([*_bundle(EVALUATE, True), "--output_dir", str(root / "eval_ddp"),
                   "--cache_dir", str(root / "cache_ddp"), *common])
    _assert_each_rank_read_its_share(result)

    single = json.loads((root / "eval_single" / "metrics.json").read_text())
    merged = json.loads((root / "eval_ddp" / "metrics.json").read_text())
    assert merged["num_images"] == 5 and merged["num_failures"] == 2
    assert sum(merged["labels"]["benign"].values()) == 5
    key = lambda failure: failure["image"]  # noqa: E731 (rank order, not datalist order, under torchrun)
    assert sorted(merged.pop("failures"), key=key) == sorted(single.pop("failures"), key=key)
    _assert_close(single, merged)
    assert merged["localisation"]["S_c"]["dice"]["benign"]["count"] >= 1  # lesions were evaluated
    assert (root / "eval_ddp" / "table.md").read_text() == (root / "eval_single" / "table.md").read_text()
    failures = {os.path.basename(row["image"]) for row in _read_csv(root / "eval_ddp" / "failures.csv")}
    assert failures == {"truncated.png", "missing.png"}
    written = [sorted(p.name for p in (root / out).iterdir()) for out in ("eval_single", "eval_ddp")]
    assert written[0] == written[1]  # one report, no per-rank leftovers


def test_fewer_images_than_processes_is_a_clear_error(data, tmp_path):
    one = tmp_path / "one.json"
    write_datalist({"test": [{"image": data["good"][0]}]}, one)
    result = _run([*_bundle(INFERENCE, True), "--output_dir", str(tmp_path / "out"),
                   *_overrides(dataset_dir=str(data["root"] / "phantoms"), datalist=str(one),
                               allow_random_weights=True)], expect_ok=False)
    assert result.returncode != 0 and "1 images for 2 processes" in result.stderr + result.stdout
