"""Interruptions: SIGKILL at random points of a training stage and halfway through a batch inference.

Training: ``configs/train_global.json`` at the tiny frame, killed with SIGKILL at 5 points (seeded: after a random
number of iterations and a random delay; one kill lands while ``last.pt`` is being written, made slow by
``bundle_driver``'s slow ``torch.save``), then run to its end with the same command (``kill_harness``). It resumes
each time from the last complete checkpoint and every checkpoint file loads. (``test_resume.py`` shows that a resumed
run ends with the same weights as an uninterrupted one; ``scripts/fault_suite.py`` checks it after these kills too.)

Inference: ``configs/inference.json`` killed after 2 of 5 images and run again with the same command: the 2 images
done are skipped (their files untouched), the rest processed, ``predictions.csv`` complete and without duplicates.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.reliability import cases as C

KILLS = 5
SEED = 3
EPOCHS = 12  # 4 random kills move training on by at most 3 epochs each: every kill lands before the end


def run_harness(tmp_path, command, *options) -> dict:
    report_path = tmp_path / "logs" / "report.json"
    report_path.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "tests.reliability.kill_harness", *options, "--report", str(report_path), "--",
         *command],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report_path.read_text())


def test_training_killed_at_random_points_resumes_and_finishes(tmp_path):
    C.make_phantoms(tmp_path / "ph", n_images=6, fractions={"training": 0.5, "validation": 0.5})
    out, models = tmp_path / "out", tmp_path / "models"
    command = ["run", "training", "--config_file", C.TRAIN_CONFIG, "--dataset_dir", str(tmp_path / "ph"),
               "--output_dir", str(out), "--ckpt_dir", str(models), "--max_epochs", str(EPOCHS), "--val_interval",
               "3", *C.tiny_args(C.TINY_TRAINING)]
    report = run_harness(tmp_path, command, "--seed", str(SEED), "--kills", str(KILLS), "--kill_after_iterations",
                         "4", "--min_delay", "0", "--max_delay", "0.6", "--slow_save_kill", "2")
    attempts = report["attempts"]
    assert [a["status"] for a in attempts] == [-9] * KILLS + [0], (tmp_path / "logs" / "attempt_5.log").read_text()[-3000:]
    assert attempts[2]["killed_while_writing"], "the kill did not land while last.pt was being written"
    for attempt in attempts:  # each restart goes on from the last complete checkpoint
        before = attempt["last_before"]
        assert before is None or "error" not in before, before
        expected = f"resuming from {out / 'last.pt'} at epoch {before['epoch']}" if before else ""
        assert attempt["resume_line"] == expected, attempt
    assert report["final_last"] == {"epoch": EPOCHS, "completed": True}
    loaded = C.load_every_pt(out) | C.load_every_pt(models)
    temporaries = C.temporary_leftovers(out) + C.temporary_leftovers(models)
    unreadable = {path: error for path, error in loaded.items() if error and path not in temporaries}
    assert not unreadable, unreadable
    assert {os.path.basename(p) for p in loaded if p not in temporaries} == {"last.pt", "model_global.pt"}
    # the temporary file of a killed write is removed when the next run starts
    assert not temporaries, temporaries


def test_inference_killed_halfway_skips_the_images_done(tmp_path):
    C.make_phantoms(tmp_path / "ph", n_images=5, fractions={"test": 1.0})
    out = tmp_path / "out"
    command = C.inference_args(out, dataset_dir=tmp_path / "ph" / "images")
    report = run_harness(tmp_path, command, "--kills", "1", "--hang_after", "2")
    assert [a["status"] for a in report["attempts"]] == [-9, 0]
    log = (tmp_path / "logs" / "attempt_1.log").read_text()
    assert re.search(r"resuming a killed run in \S+: 2 images already done are skipped, 3 to go", log), log[-3000:]
    rows = C.read_csv(out / "predictions.csv")
    images = [row["image"] for row in rows]
    expected = sorted(str(p) for p in (tmp_path / "ph" / "images").iterdir())
    assert sorted(images) == expected and len(set(images)) == len(images)
    for row in rows:
        assert (out / row["saliency_file"]).is_file() and (out / row["figure_file"]).is_file()
    assert not (out / "predictions.csv.partial").exists() and not C.temporary_leftovers(out)
    assert C.read_csv(out / "failures.csv") == []
    # the two images done before the kill: their files are not written again, their rows kept as they were
    before = report["attempts"][0]["files_after"]
    kept = {name: stamp for name, stamp in before.items() if name.endswith((".nii.gz", ".png"))}
    assert len(kept) == 4, before
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in kept.items())
