"""Mistakes a user can make end with one line naming the setting, the path and what to do (issue 12).

Each command runs as users run it (``python -m monai.bundle run --config_file ...``, in a subprocess): the exit
status, and that stderr's last line is the one-line ``error: ...`` with no traceback (glam_bundle/errors.py); with
``GLAM_DEBUG=1`` the traceback is back. Plus the pieces behind them: the checkpoint check, the failure handlers, the
datalist messages, the disk cache's reports.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ignite.engine import Engine

from glam_bundle.checkpoint import CheckpointNotFoundError, check_inference_checkpoint, require_checkpoint
from glam_bundle.data.cache import make_cached_dataset
from glam_bundle.data.datalist import load_datalist, load_inference_data
from glam_bundle.data.errors import BadInputError
from glam_bundle.data.phantom import generate_dataset
from glam_bundle.errors import (
    EXIT_USER_ERROR, AllCasesFailedError, ConfigError, exception_chain, user_error_message,
)
from glam_bundle.handlers.failure_reporter import FailureReporter
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES, changed_paths, snapshot_folders

CONFIGS = REPO_ROOT / "configs"
META = str(REPO_ROOT / "metadata.json")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_args() -> list[str]:
    args = []
    for key, value in SMALL_NETWORK_OVERRIDES.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    return args


def run_bundle(config, *args, cwd, debug=False, small=True):
    """``python -m monai.bundle run`` (with the small network unless ``small`` is False); returns the
    CompletedProcess."""
    config_file = str(CONFIGS / config) if isinstance(config, str) else str([str(CONFIGS / c) for c in config])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GLAM_DEBUG", None)
    if debug:
        env["GLAM_DEBUG"] = "1"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--meta_file", META,
               *(small_args() if small else []), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *fragments) -> str:
    """Exit status 2, stderr's last line ``error: ...`` holding every fragment, no traceback anywhere."""
    assert result.returncode == EXIT_USER_ERROR, (result.returncode, result.stderr[-3000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "Failed to evaluate" not in result.stderr
    return last


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """A 3-image phantom dataset (one image per split) at 736×480."""
    root = tmp_path_factory.mktemp("errors")
    generate_dataset(root / "data", n_images=3, height=736, width=480, seed=1)
    return root / "data"


# --- the commands -------------------------------------------------------------------------------------------------


def test_inference_without_weights_refuses_and_names_the_file(tmp_path, phantoms):
    result = run_bundle("inference.json", "--dataset_dir", phantoms / "images", "--output_dir", tmp_path / "out",
                        "--ckpt_path", "models/modle.pt", cwd=tmp_path)  # misspelt, relative to the cwd
    last = assert_one_line_error(result, "--ckpt_path models/modle.pt", f"looked for {tmp_path / 'models' / 'modle.pt'}",
                                 "--allow_random_weights true")
    assert "checkpoint not found" in last
    assert not (tmp_path / "out").exists()  # refused before any image


def test_checkpoint_of_another_network_is_one_line(tmp_path, phantoms):
    """The small network's weights into the default-size network: torch's load_state_dict error, as one line."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(SMALL_NETWORK_OVERRIDES)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "small.pt")
    result = run_bundle("inference.json", "--dataset_dir", phantoms / "images", "--output_dir", tmp_path / "out",
                        "--ckpt_path", tmp_path / "small.pt", "--image_size", "[736, 480]", cwd=tmp_path, small=False)
    assert_one_line_error(result, "--ckpt_path: the checkpoint does not fit the GLAM network", "of another shape",
                          "network_def#")


def test_inference_where_every_image_failed_exits_non_zero(tmp_path, phantoms):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes((phantoms / "images").glob("*.png").__next__().read_bytes()[:300])
    (bad / "header_only.png").write_bytes(PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR")
    out = tmp_path / "out"
    result = run_bundle("inference.json", "--dataset_dir", bad, "--output_dir", out, "--allow_random_weights", "true",
                        cwd=tmp_path)
    assert_one_line_error(result, "all 2 images failed", str(out / "failures.csv"), "truncated")
    assert (out / "failures.csv").read_text().count("\n") == 3  # header and the two images
    assert "running with randomly initialised weights" in result.stdout + result.stderr


def test_evaluation_where_every_image_failed_exits_non_zero(tmp_path, phantoms):
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(SMALL_NETWORK_OVERRIDES)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    bad = tmp_path / "bad.png"
    bad.write_bytes(PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datalist.json").write_text(json.dumps({"test": [{"image": str(bad), "benign": 1}]}))
    out = tmp_path / "out"
    result = run_bundle(["train_global.json", "evaluate.json"], "--dataset_dir", tmp_path / "data", "--output_dir", out,
                        "--ckpt_path", tmp_path / "model.pt", "--cache_dir", tmp_path / "cache", cwd=tmp_path)
    assert_one_line_error(result, "the only image failed", str(out / "failures.csv"), str(bad))
    assert not (out / "metrics.json").exists()


def test_inference_with_some_failures_says_so_last(tmp_path, phantoms):
    folder = tmp_path / "some"
    folder.mkdir()
    image = next((phantoms / "images").glob("*.png"))
    (folder / image.name).write_bytes(image.read_bytes())
    (folder / "truncated.png").write_bytes(image.read_bytes()[:400])
    out = tmp_path / "out"
    result = run_bundle("inference.json", "--dataset_dir", folder, "--output_dir", out, "--allow_random_weights", "true",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert "1 of 2 images FAILED" in last and str(out / "failures.csv") in last, result.stdout[-2000:]
    assert (out / "predictions.csv").read_text().count("\n") == 2


def test_training_on_a_folder_that_does_not_exist(tmp_path):
    missing = tmp_path / "no_such_dataset"
    args = ["--dataset_dir", missing, "--output_dir", tmp_path / "out", "--ckpt_dir", tmp_path / "models",
            "--cache_dir", tmp_path / "cache"]
    result = run_bundle("train_global.json", *args, cwd=tmp_path)
    last = assert_one_line_error(result, f"{missing}: folder not found", "--dataset_dir")
    assert "datalist file not found" not in last
    assert len(result.stderr.strip().splitlines()) <= 3  # MONAI's config notice and the error, not ~65 lines

    debug = run_bundle("train_global.json", *args, cwd=tmp_path, debug=True)  # GLAM_DEBUG=1: the full traceback
    assert debug.returncode == 1 and "Traceback" in debug.stderr and f"{missing}: folder not found" in debug.stderr


def test_max_epochs_zero_is_one_line(tmp_path, phantoms):
    result = run_bundle("train_global.json", "--dataset_dir", phantoms, "--output_dir", tmp_path / "out",
                        "--ckpt_dir", tmp_path / "models", "--cache_dir", tmp_path / "cache", "--max_epochs", "0",
                        cwd=tmp_path)
    assert_one_line_error(result, "--max_epochs", "positive number of epochs")


def test_the_hook_keeps_unexpected_tracebacks(tmp_path):
    """Only the bundle's user errors are shortened: anything else keeps Python's traceback and exit status 1."""
    code = "import glam_bundle\nraise KeyError('an unexpected bug')"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr and "an unexpected bug" in result.stderr

    code = ("import glam_bundle\nfrom glam_bundle.errors import ConfigError\n"
            "raise RuntimeError('Failed to evaluate ConfigExpression: ...') from ConfigError('cache', 'dsk', 'bad')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.strip().splitlines() == ["error: --cache dsk: bad (traceback: GLAM_DEBUG=1)"]


def test_a_thread_stopped_by_a_full_disk_prints_one_line_before_the_error(tmp_path):
    """TensorBoard's event writer thread fails on a full disk beside the main thread: one warning line from the
    thread (not a traceback that can break the run's own last line), then the run's one-line error."""
    code = (
        "import errno, threading, glam_bundle\n"
        "def write():\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device', 'events.out.tfevents')\n"
        "thread = threading.Thread(target=write, name='EventFileWriter')\n"
        "thread.start(); thread.join()\n"
        "raise OSError(errno.ENOSPC, 'No space left on device', 'last.pt')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == EXIT_USER_ERROR and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 2 and lines[0].startswith("warning: EventFileWriter stopped: disk full (writing events.")
    assert lines[1].startswith("error: disk full (writing last.pt)")
    # anything else in a thread keeps its traceback
    code = "import threading, glam_bundle\nthreading.Thread(target=lambda: 1 / 0).start()\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr


# --- the pieces -----------------------------------------------------------------------------------------------------


def test_inference_checkpoint_check(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFoundError) as raised:
        check_inference_checkpoint("./models/model.pt")
    message = str(raised.value)
    assert message.startswith(f"--ckpt_path ./models/model.pt (looked for {tmp_path / 'models' / 'model.pt'})")
    assert "--allow_random_weights true" in message and isinstance(raised.value, FileNotFoundError)
    with pytest.raises(CheckpointNotFoundError, match="a folder, not a checkpoint file"):
        check_inference_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointNotFoundError):  # "false" from the command line is a string
        check_inference_checkpoint("./models/model.pt", allow_random_weights="false")
    with caplog.at_level(logging.WARNING):
        assert check_inference_checkpoint("./models/model.pt", allow_random_weights=True) is False
    assert "randomly initialised weights" in caplog.text
    (tmp_path / "model.pt").write_bytes(b"x")
    assert check_inference_checkpoint("model.pt") is True
    with pytest.raises(FileNotFoundError, match=r"^--init_checkpoint .*: checkpoint not found"):
        require_checkpoint(tmp_path / "nope.pt", setting="init_checkpoint")


def test_datalist_and_folder_messages(tmp_path):
    with pytest.raises(BadInputError) as raised:
        load_datalist(tmp_path / "missing" / "datalist.json")
    assert str(raised.value).startswith(f"{tmp_path / 'missing'}: folder not found") and "--dataset_dir" in str(raised.value)
    with pytest.raises(BadInputError, match="datalist file not found; give the folder"):
        load_datalist(tmp_path / "datalist.json")
    with pytest.raises(BadInputError, match=r"image folder not found \(--dataset_dir\)"):
        load_inference_data(tmp_path / "missing")


def test_user_error_found_in_monai_wrapping():
    try:
        try:
            raise BadInputError("/d/x.json", "datalist file not found")
        except BadInputError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression:\n$...") from inner
    except RuntimeError as outer:
        assert [type(e).__name__ for e in exception_chain(outer)] == ["RuntimeError", "BadInputError"]
        assert user_error_message(outer) == "/d/x.json: datalist file not found"
    assert user_error_message(ValueError("Argument max_epochs should be greater than or equal to the start epoch "
                                         "defined in the state: 2 vs 5. Please...")).startswith("--max_epochs 2: below epoch 5")
    assert "--cache memory" in user_error_message(OSError(errno.ENOSPC, "No space left on device", "/c/x.pt"))
    from glam_bundle.data.patch_cache import PatchCacheMissingError
    from glam_bundle.handlers.resume import ResumeError

    assert user_error_message(ResumeError("cannot resume from /o/last.pt: x.\nDelete it")) == \
        "cannot resume from /o/last.pt: x. Delete it"
    assert user_error_message(PatchCacheMissingError("/c/patches: no patch cache")) == "/c/patches: no patch cache"
    undefined = ValueError("the referring item `@max_epochs::global` is not defined in the config content.")
    assert user_error_message(undefined).startswith("--max_epochs: the config reads max_epochs#global")
    assert "'global': 10" in user_error_message(undefined)  # train.json's per-stage form
    assert user_error_message(ValueError("something else")) is None


def _engine_with(failures_per_iteration: int) -> Engine:
    def step(engine, batch):
        engine.state.failures.extend({"image": f"/d/{engine.state.iteration}.png", "error": "broken"}
                                     for _ in range(failures_per_iteration))
        return batch

    engine = Engine(step)
    engine.state.failures = []
    return engine


def test_failure_reporter_stops_an_epoch_where_everything_failed(tmp_path):
    engine = _engine_with(1)
    FailureReporter(tmp_path / "failures.csv", what="training images").attach(engine)
    with pytest.raises(AllCasesFailedError, match=r"all 2 training images failed, .*failures.csv.*/d/1.png"):
        engine.run([{}, {}], max_epochs=1)
    engine = _engine_with(1)  # some cases succeed: the epoch goes on
    FailureReporter(tmp_path / "some.csv").attach(engine)
    engine.run([{}, {"pred": 1}], max_epochs=2)
    assert (tmp_path / "some.csv").read_text().count("\n") == 5


def test_cache_settings_and_reports(tmp_path, caplog, monkeypatch):
    from monai.transforms import Compose, Lambdad

    items = [{"image": str(tmp_path / f"{i}.txt"), "value": np.zeros(1000, np.float32) + i} for i in range(3)]
    chain = Compose([Lambdad("value", lambda v: v * 2)])
    with pytest.raises(ConfigError, match=r"^--cache 'dsk': the cache must be one of disk, memory, none"):
        make_cached_dataset(items, chain, tmp_path / "c", cache="dsk")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"--cache_dir .*file: a file, not a folder.*--cache memory"):
        make_cached_dataset(items, chain, tmp_path / "file")
    with caplog.at_level(logging.INFO, logger="glam_bundle.data.cache"):
        dataset = make_cached_dataset(items, chain, tmp_path / "cache")
    assert f"cache (disk): {tmp_path / 'cache'}: 0 entries" in caplog.text and "free on its disk" in caplog.text

    import torch

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="glam_bundle.data.cache"):
        assert float(dataset[1]["value"][0]) == 2 and float(dataset[2]["value"][0]) == 4  # goes on uncached
    assert caplog.text.count("disk full") == 1 and "--cache memory" in caplog.text and "--cache none" in caplog.text


def test_snapshot_check_sees_new_and_changed_files(tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "a.txt").write_text("1")
    before = snapshot_folders(tmp_path)
    (tmp_path / "outputs" / "run").mkdir()
    (tmp_path / "outputs" / "run" / "events").write_text("2")
    (tmp_path / "outputs" / "a.txt").write_text("12")
    assert changed_paths(before, snapshot_folders(tmp_path)) == ["outputs/a.txt", "outputs/run", "outputs/run/events"]


def test_staged_training_settings_are_one_line_errors(tmp_path):
    from glam_bundle.errors import ConfigError
    from glam_bundle.staged_training import run_stages

    with pytest.raises(ConfigError, match="--stages .*unknown stage"):
        run_stages(REPO_ROOT / "configs", ["global", "glocal"])
    with pytest.raises(ConfigError, match="--presets .*nope.json: file not found"):
        run_stages(REPO_ROOT / "configs", ["global"], presets=[tmp_path / "nope.json"])
