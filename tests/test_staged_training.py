"""The staged training (paper section 3.3) through the real config files, on tiny phantoms with a small network:
configs/train.json runs stage 1 (train_global.json), stages 2-3 (train_local.json) and stage 4 (train_joint.json);
configs/multi_gpu_train.json runs a stage under torchrun with two gloo processes."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glam_bundle.data.phantom import generate_dataset
from glam_bundle.staged_training import run_stages
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES

CONFIGS = REPO_ROOT / "configs"
STAGES = ("global", "local", "joint")
EPOCHS = {"global": 3, "local": 3, "joint": 1}


def write_preset(path, **extra) -> str:
    """Sizes only, as the bundle's presets: a 736x480 frame, 128x128 patches, narrow layers."""
    preset = {**SMALL_NETWORK_OVERRIDES, "batch_size": 2, "max_crop_noise": [25, 25], "max_crop_size_noise": 25, **extra}
    path.write_text(json.dumps(preset))
    return str(path)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    generate_dataset(root / "data", n_images=16, height=736, width=480, seed=0,
                     prevalence={"benign": 0.5, "malignant": 0.5},
                     fractions={"training": 0.5, "validation": 0.25, "test": 0.25})
    return root


def scalars(log_dir, tag) -> list[float]:
    values = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values += [event.value for event in events.Scalars(tag)]
    return values


def epoch_means(values, epochs) -> list[float]:
    return [float(np.mean(chunk)) for chunk in np.array_split(np.asarray(values), epochs)]


@pytest.fixture(scope="module")
def pipeline(phantoms):
    """configs/train.json run once (every stage), then the same command again."""
    settings = {"dataset_dir": str(phantoms / "data"), "ckpt_dir": str(phantoms / "models"),
                "cache_dir": str(phantoms / "cache"), "learning_rate": 1e-3}
    stage_settings = {s: {"max_epochs": EPOCHS[s], "output_dir": str(phantoms / "out" / s)} for s in STAGES}
    preset = write_preset(phantoms / "preset.json")
    run_stages(CONFIGS, STAGES, [preset], settings, stage_settings)
    weights = {s: torch.load(phantoms / "models" / f, weights_only=True)
               for s, f in (("global", "model_global.pt"), ("local", "model_local.pt"), ("joint", "model.pt"))}
    start = time.perf_counter()
    run_stages(CONFIGS, STAGES, [preset], settings, stage_settings)
    return {"root": phantoms, "weights": weights, "rerun_seconds": time.perf_counter() - start}


def test_every_stage_writes_its_best_model_and_feeds_the_next(pipeline):
    weights = pipeline["weights"]
    global_keys = [k for k in weights["global"] if k.startswith("global_module.") and k.endswith("weight")]
    # stage 3 keeps the stage-1 global module frozen; stage 4 trains it further
    assert all(torch.equal(weights["global"][k], weights["local"][k]) for k in global_keys)
    assert any(not torch.equal(weights["local"][k], weights["joint"][k]) for k in global_keys)
    assert "fusion.linear.weight" in weights["joint"] and "fusion.linear.weight" not in weights["local"]


def test_losses_are_finite_and_decrease_on_the_easy_case(pipeline):
    out = pipeline["root"] / "out"
    for stage in ("global", "local"):
        values = scalars(out / stage, "train_loss_terms/total")
        assert len(values) > 0 and np.isfinite(values).all(), stage
        means = epoch_means(values, EPOCHS[stage])
        assert means[-1] < means[0], (stage, means)
    joint = scalars(out / "joint", "train_loss_terms/total")
    assert joint and np.isfinite(joint).all()
    assert {"train_loss_terms/fusion", "train_loss_terms/local", "train_loss_terms/global"} <= {
        tag for path in (out / "joint").glob("events.*")
        for tag in EventAccumulator(str(path)).Reload().Tags()["scalars"]}


def test_stage_two_writes_the_patch_cache_with_its_recall(pipeline):
    index = json.loads((pipeline["root"] / "cache" / "patches" / "index.json").read_text())
    entries = index["entries"]
    assert len(entries) == 8
    rules = {e["selection"] for e in entries if e["benign"] or e["malignant"]}
    assert rules == {"algorithm1"}
    assert {e["selection"] for e in entries if not (e["benign"] or e["malignant"])} <= {"random"}
    assert 0.0 <= index["summary"]["recall"]["overall"] <= 1.0
    assert scalars(pipeline["root"] / "out" / "local", "patch_recall/overall")


def test_tensorboard_has_validation_metrics_and_images(pipeline):
    for stage in STAGES:
        log_dir = pipeline["root"] / "out" / stage
        assert scalars(log_dir, "val_dice"), stage
        images = set()
        for path in log_dir.glob("events.*"):
            events = EventAccumulator(str(path), size_guidance={"images": 0}).Reload()
            images |= set(events.Tags()["images"])
        assert any(tag.startswith("validation/") for tag in images), stage


def test_rerunning_a_finished_pipeline_returns_at_once(pipeline):
    root = pipeline["root"]
    assert pipeline["rerun_seconds"] < 60
    for stage, name in (("global", "model_global.pt"), ("local", "model_local.pt"), ("joint", "model.pt")):
        again = torch.load(root / "models" / name, weights_only=True)
        assert all(torch.equal(again[k], v) for k, v in pipeline["weights"][stage].items())


def test_two_process_gloo_ddp_trains_and_only_rank_zero_writes(phantoms, tmp_path):
    preset = write_preset(tmp_path / "preset.json")
    out, models = tmp_path / "out", tmp_path / "models"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--config_file", f"['{CONFIGS / 'train_global.json'}','{CONFIGS / 'multi_gpu_train.json'}','{preset}']",
        "--meta_file", str(CONFIGS / "metadata.json"), "--dataset_dir", str(phantoms / "data"),
        "--ckpt_dir", str(models), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--max_epochs", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (models / "model_global.pt").is_file() and (out / "last.pt").is_file()
    writers = {path.name.split(".")[-2] for path in out.glob("events.out.tfevents.*")}  # the writing process ids
    assert len(writers) == 1, sorted(out.iterdir())
    assert scalars(out, "val_dice") and len(scalars(out, "train_loss_terms/total")) > 0


def test_random_search_runs_seeded_trials_through_the_configs(phantoms, tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import search

    assert search.draw_trial(0, 3) == search.draw_trial(0, 3) != search.draw_trial(0, 4)
    draws = [search.draw_trial(0, i) for i in range(50)]
    assert all(10 ** -5.5 <= d["learning_rate"] <= 1e-4 and 10 ** -5.5 <= d["sparsity_weight"] <= 10 ** -3.5
               for d in draws)
    assert {d["percent_t"] for d in draws} <= set(search.TOP_T)
    preset = write_preset(tmp_path / "preset.json")
    out = tmp_path / "search"
    search.main(["--stage", "global", "--trials", "2", "--out", str(out), "--presets", preset,
                 "--dataset_dir", str(phantoms / "data"), "--max_epochs", "1",
                 "--override", f'cache_dir="{tmp_path / "cache"}"'])
    results = json.loads((out / "search.json").read_text())
    assert [row["trial"] for row in results["trials"]] == [0, 1]
    assert all(0.0 <= row["best_dice"] <= 1.0 for row in results["trials"])
    assert (out / "search.md").read_text().count("\n| ") == 3  # header + 2 trials
