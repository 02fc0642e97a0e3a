"""Bundle metadata (metadata.json, configs/metadata.json), its schema check, and configs/logging.conf."""

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import jsonschema
import pytest
import torch

from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES

META_FILE = REPO_ROOT / "metadata.json"
META_LINK = REPO_ROOT / "configs" / "metadata.json"
SCHEMA_FILE = REPO_ROOT / "tests" / "schema" / "meta_schema.json"
LOGGING_CONF = REPO_ROOT / "configs" / "logging.conf"
INFERENCE_CONFIG = REPO_ROOT / "configs" / "inference.json"
ZOO_SCHEMA_NAME = "meta_schema_20240725.json"

SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
SCHEMA_MD5 = hashlib.md5(SCHEMA_FILE.read_bytes()).hexdigest()  # lets verify_metadata check the copy's integrity
MANDATORY_FIELDS = SCHEMA["required"]


@pytest.fixture
def metadata():
    return json.loads(META_FILE.read_text(encoding="utf-8"))


@pytest.fixture
def schema_copy(tmp_path, monkeypatch):
    """The vendored schema copied to tmp_path, so verify_metadata finds it and writes nothing in the repo.

    Any download attempt fails the test: verify_metadata must work offline from the existing file.
    """
    import monai.apps.utils

    def no_download(*args, **kwargs):
        raise AssertionError("verify_metadata tried to download the schema")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", no_download)
    target = tmp_path / "schema" / "meta_schema.json"
    target.parent.mkdir()
    shutil.copyfile(SCHEMA_FILE, target)
    return target


def _major_minor(version: str) -> tuple:
    return tuple(version.split("+")[0].split(".")[:2])


def _write_json(path, content) -> str:
    path.write_text(json.dumps(content), encoding="utf-8")
    return str(path)


# --- schema validation ---------------------------------------------------------------------------------


def test_schema_is_a_valid_draft4_schema():
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    assert set(MANDATORY_FIELDS) >= {
        "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
        "task", "description", "authors", "copyright", "network_data_format",
    }


def test_metadata_validates_with_jsonschema(metadata):
    jsonschema.validate(instance=metadata, schema=SCHEMA)


def test_metadata_validates_with_monai_verify_metadata(schema_copy):
    from monai.bundle import verify_metadata

    schema_before = schema_copy.read_bytes()
    verify_metadata(meta_file=str(META_FILE), filepath=str(schema_copy), hash_val=SCHEMA_MD5)
    assert schema_copy.read_bytes() == schema_before  # existing file used as-is, not replaced by a download


def test_metadata_points_at_zoo_schema(metadata):
    assert metadata["schema"].startswith("https://")
    assert metadata["schema"].endswith("/" + ZOO_SCHEMA_NAME)


@pytest.mark.parametrize("field", MANDATORY_FIELDS)
def test_metadata_missing_mandatory_field_fails(metadata, schema_copy, tmp_path, field):
    from monai.bundle import verify_metadata

    del metadata[field]
    with pytest.raises(jsonschema.ValidationError, match=field):
        jsonschema.validate(instance=metadata, schema=SCHEMA)
    broken = _write_json(tmp_path / "metadata.json", metadata)
    with pytest.raises(ValueError, match=field):
        verify_metadata(meta_file=broken, filepath=str(schema_copy), hash_val=SCHEMA_MD5)


@pytest.mark.parametrize(
    "path, value",
    [
        (("network_data_format", "inputs", "image", "num_channels"), "1"),
        (("network_data_format", "outputs", "pred", "value_range"), ["0", "1"]),
        (("network_data_format", "outputs", "pred", "channel_def"), {"benign": "0"}),
        (("network_data_format", "outputs", "class_probabilities"), {"type": "probabilities"}),
        (("version",), "first"),
        (("references",), "Liu et al. 2021"),
    ],
    ids=["num_channels_str", "value_range_str", "channel_def_keys", "tensor_incomplete", "version_not_semver",
         "references_not_list"],
)
def test_metadata_malformed_field_fails(metadata, path, value):
    node = metadata
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(instance=metadata, schema=SCHEMA)


@pytest.mark.parametrize("side, key", [("inputs", "image"), ("outputs", "pred")])
def test_metadata_without_verify_net_io_key_fails(metadata, side, key):
    # verify_net_in_out reads exactly inputs#image and outputs#pred
    metadata["network_data_format"][side]["renamed"] = metadata["network_data_format"][side].pop(key)
    with pytest.raises(jsonschema.ValidationError, match=key):
        jsonschema.validate(instance=metadata, schema=SCHEMA)


# --- location, version bookkeeping ----------------------------------------------------------------------


def test_configs_metadata_is_relative_symlink_to_root_file():
    assert META_LINK.is_symlink()
    target = os.readlink(META_LINK)
    assert not os.path.isabs(target), f"symlink must be relative, got {target}"
    assert META_LINK.resolve() == META_FILE.resolve()


def test_monai_reads_metadata_from_standard_location():
    """MONAI tools default to configs/metadata.json; through the link they get the root file."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(str(META_LINK))
    root = json.loads(META_FILE.read_text(encoding="utf-8"))
    assert parser["_meta_#version"] == root["version"]
    assert parser["_meta_#network_data_format"] == root["network_data_format"]


def test_changelog_has_current_version(metadata):
    assert metadata["version"] in metadata["changelog"]
    assert metadata["changelog"][metadata["version"]].strip()


def test_versions_match_installed(metadata):
    import monai
    import numpy
    import torch

    assert metadata["monai_version"] == monai.__version__
    assert _major_minor(metadata["pytorch_version"]) == _major_minor(torch.__version__)
    assert _major_minor(metadata["numpy_version"]) == _major_minor(numpy.__version__)


def test_required_packages_are_installed_with_recorded_major_version(metadata):
    required = metadata["required_packages_version"]
    assert {"pytorch-ignite", "nibabel", "pydicom", "itk", "tensorboard", "fire", "scipy", "pillow",
            "matplotlib"} <= set(required)
    for name, recorded in required.items():
        installed = importlib.metadata.version(name)  # raises PackageNotFoundError when missing
        assert installed.split(".")[0] == recorded.split(".")[0], f"{name}: metadata {recorded}, installed {installed}"


# --- content conventions ---------------------------------------------------------------------------------


def test_network_data_format_follows_project_conventions(metadata):
    fmt = metadata["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    # MONAI Label takes the first input/output entry: dimension from the input, label names from the output
    assert next(iter(fmt["inputs"])) == "image"
    assert next(iter(fmt["outputs"])) == "pred"
    assert (image["num_channels"], image["spatial_shape"], image["dtype"]) == (1, [2944, 1920], "float32")
    assert image["modality"] == "MG"
    assert (pred["num_channels"], pred["spatial_shape"], pred["dtype"]) == (2, [2944, 1920], "float32")
    assert pred["value_range"] == [0, 1]
    class_channels = {"0": "benign", "1": "malignant"}
    # MONAI Label takes the label names and values of its label maps from the first output's channel_def
    assert pred["channel_def"] == {"0": "background", "1": "benign", "2": "malignant"}
    probabilities = fmt["outputs"]["class_probabilities"]
    assert (probabilities["type"], probabilities["num_channels"]) == ("probabilities", 2)
    assert probabilities["channel_def"] == class_channels


def test_verify_net_in_out_command_as_documented(tmp_path):
    """The README's ``verify_net_in_out`` command on ``saliency_network_def`` of configs/inference.json (the
    configured ``network_def`` returning only S_c): input channels/dtype, output channels/dtype.

    The small network of the workflow tests on a 736x480 input keeps it fast: widths and patch size change
    neither the channel counts nor the dtypes; the full 2944x1920 shape itself is checked in the test above.
    """
    from monai.bundle import ConfigParser

    small = {key: value for key, value in SMALL_NETWORK_OVERRIDES.items() if key != "num_workers"}
    small["_meta_#network_data_format#inputs#image#spatial_shape"] = small["image_size"]
    overrides = [item for key, value in small.items() for item in (f"--{key}", json.dumps(value))]
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "--net_id", "saliency_network_def",
         "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--device", "cpu",
         *overrides],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr

    # verify_net_in_out does not compare spatial sizes: pred must have the input's (H, W)
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update({key: value for key, value in small.items() if not key.startswith("_meta_")})
    network = parser.get_parsed_content("saliency_network_def").eval()
    with torch.no_grad():
        pred = network(torch.rand(1, 1, *small["image_size"]))
    assert pred.shape == (1, 2, *small["image_size"])
    # the default network_def returns GLAM's dict, which verify_net_in_out cannot check
    assert isinstance(parser.get_parsed_content("network_def").eval()(torch.rand(1, 1, *small["image_size"])), dict)


def test_verify_metadata_command_as_documented_works_offline(tmp_path):
    """The README's ``verify_metadata`` command: the schema shipped in tests/schema is used as it is, with no
    download (a proxy that refuses every connection makes any download attempt fail)."""
    before = SCHEMA_FILE.read_bytes(), SCHEMA_FILE.stat().st_mtime_ns
    env = dict(os.environ, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
         "--filepath", "tests/schema/meta_schema.json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "skipped downloading" in output and "metadata is verified with no error" in output
    assert (SCHEMA_FILE.read_bytes(), SCHEMA_FILE.stat().st_mtime_ns) == before
    # the same command on a broken metadata file fails (the check is live)
    broken = json.loads(META_FILE.read_text(encoding="utf-8"))
    del broken["network_data_format"]
    broken_file = _write_json(tmp_path / "metadata.json", broken)
    failed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", broken_file,
         "--filepath", str(SCHEMA_FILE)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert failed.returncode != 0 and "network_data_format" in failed.stdout + failed.stderr


def test_metadata_states_research_use_and_cites_glam(metadata):
    assert "research" in metadata["intended_use"].lower()
    assert "not" in metadata["intended_use"].lower()
    assert any("Weakly-supervised high-resolution segmentation of mammography images" in ref
               for ref in metadata["references"])
    assert not metadata["eval_metrics"], "no numbers for weights this bundle has not measured"


# --- logging.conf ------------------------------------------------------------------------------------------


def test_logging_conf_passes_monai_validation(tmp_path):
    from monai.bundle.workflows import _reject_executable_logging_config

    assert _reject_executable_logging_config(str(LOGGING_CONF))
    # the check is live: the same file with a call in `args` is refused
    unsafe = tmp_path / "logging.conf"
    unsafe.write_text(LOGGING_CONF.read_text().replace("args=(sys.stdout,)", "args=(print('x'),)"))
    with pytest.raises(ValueError, match="refusing"):
        _reject_executable_logging_config(str(unsafe))


def test_logging_conf_logs_zoo_format_to_stdout():
    # run in a child process: fileConfig replaces the root logger's handlers for the whole process
    code = (
        "import logging, logging.config, sys\n"
        "logging.config.fileConfig(sys.argv[1])\n"
        "logging.getLogger('glam').info('hello')\n"
        "logging.getLogger('glam').debug('hidden')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(LOGGING_CONF)], capture_output=True, text=True,
                            check=True, timeout=60)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].endswith(" - glam - INFO - hello")
    assert result.stderr == ""


# --- models/ --------------------------------------------------------------------------------------------------


def test_model_weights_are_not_committed():
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "models/model.pt"], cwd=REPO_ROOT, timeout=30)
    assert ignored.returncode == 0, "models/model.pt must be git-ignored (see models/README.md)"
    assert (REPO_ROOT / "models" / "README.md").is_file()
