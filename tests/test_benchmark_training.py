"""scripts/benchmark_training.py: the --quick run (every stage built from its configs, float32 and bfloat16
alternating, one step each; about 35 s on 2 CPU cores) writes its JSON and table into tmp_path, and a failing
precision mode is reported in the table instead of stopping the benchmark."""

import importlib.util
import json
import os
import subprocess
import sys

from .conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "benchmark_training.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run(tmp_path):
    out = tmp_path / "training"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["settings"]["presets"] == ["quick"] and result["settings"]["steps"] == 1
    assert result["machine"]["cores_visible"] >= 1 and "cpu_flags" in result["machine"]
    runs = {run["stage"]: run for run in result["runs"]}
    assert sorted(runs) == ["global", "joint", "local"]
    expected = {"global": ("GlobalModuleLoss", "GLAMInferer", "PrepareBatchWithKeys", ["global_module"]),
                "local": ("LocalModuleLoss", "PatchInferer", "PreparePatchBatch", ["local_module"]),
                "joint": ("JointLoss", "GLAMInferer", "PrepareBatchWithKeys",
                          ["aggregation", "fusion", "global_module", "local_module"])}
    for stage, run in runs.items():
        loss, inferer, prepare, trainable = expected[stage]
        assert (run["loss_function"], run["inferer"], run["prepare_batch"]) == (loss, inferer, prepare)
        assert run["trainable_modules"] == trainable and run["optimizer"] == "Adam"
        assert run["configs"][0] == "configs/train_global.json" and run["configs"][-1].endswith("demo_training.json")
        assert run["batch"] == 2 and run["image_size"] == [184, 120]
        assert run["modes"][:2] == ["float32", "bfloat16"]
        for mode in ("float32", "bfloat16"):
            row = run["summary"][mode]
            if "error" in row:  # a mode may fail; then it says why
                assert mode != "float32" and row["error"]
                continue
            assert row["step_s"] > 0 and row["images_per_s"] > 0 and row["peak_rss_mib"] > 100
            assert len(row["step_all_s"]) == 1 and all(abs(v) < 1e3 for v in row["loss"])
        assert run["summary"]["float32"]["ratio_to_float32"] == 1.0
    assert runs["local"]["input_shape"] == [2, 6, 1, 32, 32] and runs["local"]["num_patches"] == 6
    assert runs["global"]["input_shape"] == [2, 1, 184, 120]
    assert runs["joint"]["num_patches"] == 6
    table = out.with_suffix(".md").read_text()
    assert "| preset | stage |" in table and "python scripts/benchmark_training.py --quick" in table
    assert table.count("| quick | ") == 6
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").glob("outputs_*/*.pt"))


def test_failed_mode_is_reported():
    module = load_script()
    raw = {"modes": ["float32", "bfloat16"], "batch": 2, "errors": {"bfloat16": "RuntimeError: no kernel"},
           "warmup": {"float32": {"s": 2.0, "peak_rss_mib": 600.0, "loss": 1.0}},
           "steps": {"float32": [{"s": 1.0, "peak_rss_mib": 610.0, "loss": 1.0},
                                 {"s": 3.0, "peak_rss_mib": 605.0, "loss": 0.9}]}}
    summary = module.summarise(raw)
    assert summary["bfloat16"] == {"error": "RuntimeError: no kernel"}
    assert summary["float32"]["step_s"] == 2.0 and summary["float32"]["images_per_s"] == 1.0
    assert summary["float32"]["peak_rss_mib"] == 605.0
    run = {"preset": "demo", "stage": "global", "configs": ["configs/train_global.json"], "batch": 2,
           "input_shape": [2, 1, 8, 8], "trainable_parameters": 1000, "rss_before_first_step_mib": 500.0,
           "summary": summary}
    result = {"command": "python scripts/benchmark_training.py", "date": "today", "wall_s": 60.0,
              "machine": {"cpu": "cpu", "cpu_flags": {"avx512_bf16": True}, "cpu_capability": "AVX512",
                          "cores_visible": 2, "torch": "2", "python": "3", "load_average_start": [1.0, 1.0, 1.0]},
              "settings": {"threads": 2, "steps": 3, "heavy_steps": 2}, "load_average_end": [1.0, 1.0, 1.0],
              "runs": [run]}
    table = module.markdown(result)
    assert "| bfloat16 | failed: RuntimeError: no kernel |" in table
    assert "| float32 | 2 | 1.00 | 1 | 605 | 500 |" in table
