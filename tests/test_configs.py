"""The configs build one preprocessing chain: every workflow's chain is ``default_preprocessing()``'s.

Each config joins the named pieces of ``glam_bundle.transforms.chain`` (``load_transforms``,
``frame_transforms``, ``window_transforms``, ``finish_transforms``) by reference. The chains are compared by
the cache fingerprint (every transform's class and parameters), and the comparison is shown to be sensitive:
changing one piece of one config alone makes exactly that config's chains differ.
"""

import json
import shutil

import pytest
from monai.bundle import ConfigParser

from glam_bundle.data.cache import transform_fingerprint
from glam_bundle.transforms import default_preprocessing
from tests.conftest import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs"

# chain name -> (config files merged in order, id of the Compose, default_preprocessing arguments)
CHAINS = {
    "train": (["train_global.json"], "train#preprocessing", {"augment": True}),
    "validate": (["train_global.json"], "validate#preprocessing", {}),
    "evaluate": (["train_global.json", "evaluate.json"], "validate#preprocessing", {}),
    "inference": (["inference.json"], "preprocessing", {"load_masks": False}),
}


def parse_config(config_dir, files, **override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(config_dir / name) for name in files])
    parser.update(override)
    parser.parse()
    return parser


def chain_fingerprints(config_dir) -> dict[str, bytes]:
    fingerprints = {}
    for name, (files, chain_id, _) in CHAINS.items():
        compose = parse_config(config_dir, files).get_parsed_content(chain_id)
        fingerprints[name] = transform_fingerprint(compose.transforms)
    return fingerprints


def reference_fingerprints() -> dict[str, bytes]:
    return {name: transform_fingerprint(default_preprocessing(**kwargs).transforms) for name, (*_, kwargs) in CHAINS.items()}


def test_every_config_chain_is_default_preprocessing():
    assert chain_fingerprints(CONFIG_DIR) == reference_fingerprints()


def test_training_and_validation_chains_differ_only_by_the_window_noise():
    train = default_preprocessing(augment=True).transforms
    validate = default_preprocessing().transforms
    assert len(train) == len(validate) + 1  # RandWindowNoised
    assert [type(t) for t in train if type(t).__name__ != "RandWindowNoised"] == [type(t) for t in validate]


OVERRIDE_FILES = {"evaluate.json"}
# (config file, piece id, new value) -> the chains that must change
MUTATIONS = [
    ("inference.json", "window_transforms#image_size", [1472, 960], {"inference"}),
    ("inference.json", "frame_transforms#film", True, {"inference"}),
    ("inference.json", "load_transforms#min_size", [256, 256], {"inference"}),
    ("train_global.json", "train#window_transforms#max_crop_size_noise", 50, {"train"}),
    ("train_global.json", "validate#window_transforms#image_size", [1472, 960], {"validate", "evaluate"}),
    ("train_global.json", "finish_transforms#keep_breast_mask", True, {"train", "validate", "evaluate"}),
    ("evaluate.json", "validate#window_transforms", {"_target_": "glam_bundle.transforms.window_transforms",
                                                     "image_size": [2944, 1920], "augment": True}, {"evaluate"}),
]


@pytest.mark.parametrize("config_name, piece, value, changed", MUTATIONS, ids=[f"{m[0]}:{m[1]}" for m in MUTATIONS])
def test_changing_one_chain_alone_is_detected(tmp_path, config_name, piece, value, changed):
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir, symlinks=True)
    config = json.loads((config_dir / config_name).read_text())
    if config_name in OVERRIDE_FILES:  # keyed by full ids
        config[piece] = value
    else:
        node = config
        *parents, leaf = piece.split("#")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (config_dir / config_name).write_text(json.dumps(config))
    fingerprints, reference = chain_fingerprints(config_dir), reference_fingerprints()
    assert {name for name in CHAINS if fingerprints[name] != reference[name]} == changed


def test_inference_config_parses_alone_from_another_working_directory(tmp_path, monkeypatch):
    """MONAI Label reads configs/inference.json alone, from its own working directory, with bundle_root set."""
    from glam_bundle.data.phantom import make_phantom
    from glam_bundle.atomic_io import save_png_atomic

    images = tmp_path / "images"
    images.mkdir()
    save_png_atomic(make_phantom(height=736, width=480, rng=0).image, images / "case.png")
    monkeypatch.chdir(tmp_path)
    parser = parse_config(CONFIG_DIR, ["inference.json"], bundle_root=str(REPO_ROOT), dataset_dir=str(images),
                          image_size=[736, 480], crop_size=[128, 128])
    assert parser.get_parsed_content("bundle_root") == str(REPO_ROOT)
    item = parser.get_parsed_content("dataset")[0]
    assert tuple(item["image"].shape) == (1, 736, 480)
    for name in ("network_def", "inferer", "postprocessing", "evaluator"):
        assert parser.get_parsed_content(name) is not None


def test_train_json_runs_its_stages_from_the_command_line(tmp_path):
    """configs/train.json alone, as MONAI Label and users run it (here with no stage, to test the wiring only)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG_DIR / "train.json"),
         "--meta_file", str(CONFIG_DIR / "metadata.json"), "--stages", "[]", "--bundle_root", str(REPO_ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    unknown = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG_DIR / "train.json"),
         "--meta_file", str(CONFIG_DIR / "metadata.json"), "--stages", "['globl']", "--bundle_root", str(REPO_ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert unknown.returncode != 0 and "unknown stage" in unknown.stderr
