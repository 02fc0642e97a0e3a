"""Export (TorchScript through ``monai.bundle ckpt_export``, ONNX through ``scripts/export_onnx.py``) and the
model zoo's bundle checks (``ci/verify_bundle.py``: ckpt_export; every config parsing with its run ids).

Exported files are loaded in a child process that cannot import this package nor MONAI (only torch.jit.load or
onnxruntime), from a working directory outside the repository. The small network keeps most tests fast; the
golden comparison (slow) runs the paper's network once per export kind on the 2944×1920 golden input.
Commands: docs/export.md. ``verify_metadata`` / ``verify_net_in_out`` are in tests/test_metadata.py.
"""

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from glam_bundle.networks import (
    EXPORT_OUTPUTS,
    GLAM,
    GLAMExport,
    GLAMSaliency,
    crop_patches,
    export_view,
    paste_patch_maps,
)
from glam_bundle.networks.patch_selection import _crop_patches_gather, _paste_patch_maps_where
from tests.conftest import ORIGINAL_CHECKPOINT, REPO_ROOT, SMALL_NETWORK_OVERRIDES, require

CONFIG_DIR = REPO_ROOT / "configs"
INFERENCE = CONFIG_DIR / "inference.json"
META = CONFIG_DIR / "metadata.json"
SMALL_SHAPE = (1, 1, *SMALL_NETWORK_OVERRIDES["image_size"])

# Runs in the child: loads an exported file with torch.jit.load or onnxruntime only, runs every input of an
# .npz and saves the outputs; glam_bundle and monai are made unimportable first.
CHILD = r"""
import sys
sys.modules["glam_bundle"] = None
sys.modules["monai"] = None
import numpy as np
kind, model_path, inputs_path, outputs_path = sys.argv[1:]
inputs = np.load(inputs_path)
results = {}
if kind == "torchscript":
    import torch
    torch.set_num_threads(1)
    model = torch.jit.load(model_path, map_location="cpu").eval()
    with torch.no_grad():
        for name in inputs.files:
            for key, value in zip(("saliency", "prediction", "patch_locations"), model(torch.from_numpy(inputs[name]))):
                results[name + "__" + key] = value.numpy()
else:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    for name in inputs.files:
        for key, value in zip(names, session.run(None, {"image": inputs[name]})):
            results[name + "__" + key] = value
assert not [m for m in sys.modules if m.split(".")[0] in ("glam_bundle", "monai") and sys.modules[m] is not None]
np.savez(outputs_path, **results)
"""


def run_standalone(kind, model_path, inputs: dict, tmp_path) -> dict:
    """Outputs of the exported file, {input name: (saliency, prediction, patch_locations)}, from a child process
    outside the repository with no PYTHONPATH (``-I``: isolated mode)."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    np.savez(workdir / "inputs.npz", **{name: value.numpy() for name, value in inputs.items()})
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, kind, str(model_path), "inputs.npz", "outputs.npz"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(workdir / "outputs.npz")
    return {name: tuple(outputs[f"{name}__{key}"] for key in EXPORT_OUTPUTS) for name in inputs}


def small_network(**override) -> GLAM:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser.update({**SMALL_NETWORK_OVERRIDES, **override})
    return parser.get_parsed_content("network_def")


def cli_overrides(overrides: dict) -> list[str]:
    return [item for key, value in overrides.items() for item in (f"--{key}", json.dumps(value))]


def sample_inputs(seed: int = 0) -> dict:
    """Two images of the small size with their bright blob in different places (different patches)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for index, (row, col) in enumerate(((100, 40), (520, 300))):
        image = torch.rand(SMALL_SHAPE, generator=generator)
        image[..., row:row + 96, col:col + 96] += 4.0
        inputs[f"image{index}"] = image
    return inputs


def assert_matches_eager(outputs: dict, network: GLAM, inputs: dict, saliency_tol=1e-3, prediction_tol=1e-4):
    network.eval()
    with torch.no_grad():
        for name, image in inputs.items():
            expected = network(image)
            saliency, prediction, locations = outputs[name]
            assert saliency.shape == tuple(expected["saliency"].shape) and saliency.dtype == np.float32
            assert np.abs(prediction - expected["y_global"].numpy()).max() <= prediction_tol, name
            assert np.abs(saliency - expected["saliency"].numpy()).max() <= saliency_tol, name
            np.testing.assert_array_equal(locations, expected["patch_locations"].numpy())


# --- the export networks ---------------------------------------------------------------------------------


def test_export_view_shares_weights_and_returns_glam_outputs():
    torch.manual_seed(0)
    network = small_network().eval()
    export, saliency_only = export_view(network), export_view(network, kind="saliency")
    assert isinstance(export, GLAMExport) and isinstance(saliency_only, GLAMSaliency)
    assert type(network) is GLAM and network.full_resolution_maps is None  # the original is unchanged
    assert export.state_dict().keys() == network.state_dict().keys()  # models/model.pt loads as it is
    image = sample_inputs()["image0"]
    with torch.no_grad():
        expected = network(image)
        saliency, prediction, locations = export(image)
        assert torch.equal(saliency_only(image), expected["saliency"])
    assert torch.equal(saliency, expected["saliency"]) and torch.equal(prediction, expected["y_global"])
    assert torch.equal(locations, expected["patch_locations"])
    # loading weights into the view loads the configured network
    zeros = {key: torch.zeros_like(value) for key, value in export.state_dict().items()}
    export.load_state_dict(zeros)
    assert all(not value.any() for value in network.state_dict().values())
    with pytest.raises(ValueError, match="kind"):
        export_view(network, kind="dict")
    with pytest.raises(TypeError, match="GLAM"):
        export_view(torch.nn.Linear(1, 1))
    assert GLAMExport(crop_size=(64, 64)).full_resolution_maps is True


def test_onnx_gather_paths_copy_the_same_values():
    """The crop and paste used under ONNX export (gather, where) equal the indexed versions exactly."""
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(2, 1, 96, 80, generator=generator)
    crop = (32, 24)
    locations = torch.tensor([[[0, 0], [10, 12], [64, 56]], [[30, 5], [40, 20], [0, 56]]])  # overlapping patches
    rows = locations[..., 0, None] + torch.arange(crop[0])
    cols = locations[..., 1, None] + torch.arange(crop[1])
    assert torch.equal(_crop_patches_gather(image, rows, cols), crop_patches(image, locations, crop))
    maps = torch.rand(2, 3, 2, 8, 6, generator=generator)
    expected = paste_patch_maps(maps, locations, (96, 80), crop)
    upsampled = torch.nn.functional.interpolate(maps.flatten(0, 1), size=crop, mode="nearest").view(2, 3, 2, *crop)
    assert torch.equal(_paste_patch_maps_where(upsampled, rows, cols, (96, 80)), expected)


# --- TorchScript: monai.bundle ckpt_export ---------------------------------------------------------------------


def test_ckpt_export_command_writes_a_standalone_torchscript(tmp_path):
    """The documented command (docs/export.md), at the small size: the file runs without this package and
    follows the input (two images, two patch locations) like eager mode."""
    torch.manual_seed(0)
    network = small_network()
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    target = tmp_path / "model.ts"
    overrides = {key: value for key, value in SMALL_NETWORK_OVERRIDES.items() if key != "num_workers"}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "--net_id", "export_network_def", "--use_trace", "True",
         "--filepath", str(target), "--ckpt_file", str(ckpt), "--meta_file", str(META), "--config_file", str(INFERENCE),
         "--input_shape", json.dumps(list(SMALL_SHAPE)), *cli_overrides(overrides)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert target.is_file()
    inputs = sample_inputs()
    outputs = run_standalone("torchscript", target, inputs, tmp_path)
    assert_matches_eager(outputs, network, inputs, saliency_tol=1e-6, prediction_tol=1e-6)
    locations = [outputs[name][2].tolist() for name in inputs]
    assert locations[0] != locations[1], "the test images must select different patches"
    # MONAI's extra files: the metadata and the config travel with the model
    extra = {"metadata.json": "", "inference.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: TorchScript is what MONAI Label reads
        torch.jit.load(str(target), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(META.read_text())["version"]
    assert "export_network_def" in json.loads(extra["inference.json"])


# --- ONNX: scripts/export_onnx.py --------------------------------------------------------------------------------


def load_export_script():
    spec = importlib.util.spec_from_file_location("export_onnx", REPO_ROOT / "scripts" / "export_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_onnx_script_writes_a_standalone_model(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    network = small_network()
    ckpt = tmp_path / "model.pt"
    torch.save({"model": network.state_dict()}, ckpt)  # CheckpointSaver's layout is accepted too
    target = tmp_path / "model.onnx"
    overrides = {key: value for key, value in SMALL_NETWORK_OVERRIDES.items() if key != "num_workers"}
    status = load_export_script().main(
        ["--ckpt_file", str(ckpt), "--filepath", str(target), "--override", json.dumps(overrides), "--check"]
    )
    out = capsys.readouterr().out
    assert status == 0 and target.is_file()
    assert f"input image {list(SMALL_SHAPE)}" in out and "patch locations equal" in out
    import onnx

    model = onnx.load(str(target), load_external_data=False)
    assert [o.name for o in model.graph.output] == list(EXPORT_OUTPUTS)
    assert {p.key for p in model.metadata_props} >= {"bundle_version", "channel_def", "input_shape"}
    inputs = sample_inputs()
    outputs = run_standalone("onnx", target, inputs, tmp_path)
    assert_matches_eager(outputs, network, inputs)
    assert outputs["image0"][2].tolist() != outputs["image1"][2].tolist()


@pytest.mark.parametrize("problem", ["missing_checkpoint", "other_network", "bad_override", "unknown_net_id"])
def test_export_onnx_script_errors_are_one_line(tmp_path, capsys, problem):
    pytest.importorskip("onnx")
    ckpt = tmp_path / "model.pt"
    torch.save(GLAM(crop_size=(64, 64), local_layers=(1, 1, 1, 1), global_blocks_per_stage=1).state_dict(), ckpt)
    args = {
        "missing_checkpoint": ["--ckpt_file", str(tmp_path / "absent.pt")],
        "other_network": ["--ckpt_file", str(ckpt)],
        "bad_override": ["--ckpt_file", str(ckpt), "--override", "{image_size: 3}"],
        "unknown_net_id": ["--ckpt_file", str(ckpt), "--net_id", "exporter"],
    }[problem]
    status = load_export_script().main([*args, "--filepath", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    expected = {"missing_checkpoint": "absent.pt", "other_network": "--override", "bad_override": "--override",
                "unknown_net_id": "exporter"}[problem]
    assert expected in err
    assert not (tmp_path / "x.onnx").exists()


# --- golden input, the paper's network -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The original checkpoint converted, the golden input and the eager outputs of GLAM on it."""
    from glam_bundle.checkpoint import convert_original_state_dict, load_original_checkpoint

    src = require(ORIGINAL_CHECKPOINT / "random_init_seed0.ckpt")
    data = np.load(require(ORIGINAL_CHECKPOINT / "golden_0_L-CC.npz"))
    network = GLAM()
    state, _, _ = convert_original_state_dict(load_original_checkpoint(src), network)
    network.load_state_dict(state, strict=True)
    ckpt = tmp_path_factory.mktemp("golden") / "model.pt"
    torch.save(state, ckpt)
    image = torch.from_numpy(data["image"])
    with torch.no_grad():
        eager = network.eval()(image)
    return {"ckpt": ckpt, "image": image, "eager": eager, "data": data}


def assert_golden(outputs, golden):
    saliency, prediction, locations = outputs["golden"]
    eager, data = golden["eager"], golden["data"]
    assert np.abs(prediction - eager["y_global"].numpy()).max() <= 1e-4
    assert np.abs(saliency - eager["saliency"].numpy()).max() <= 1e-3
    np.testing.assert_array_equal(locations, eager["patch_locations"].numpy())
    # and the original implementation's outputs, as tests/test_original_parity.py for eager mode
    assert np.abs(prediction - data["prediction"]).max() <= 1e-4
    assert np.abs(saliency - data["saliency"]).max() <= 1e-3
    np.testing.assert_array_equal(locations, data["patch_locations"])


@pytest.mark.slow
def test_torchscript_export_reproduces_eager_on_the_golden_input(golden, tmp_path):
    from monai.bundle import ckpt_export

    target = tmp_path / "model.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings
        ckpt_export(net_id="export_network_def", filepath=str(target), ckpt_file=str(golden["ckpt"]),
                    meta_file=str(META), config_file=str(INFERENCE), use_trace=True,
                    converter_kwargs={"check_trace": False})  # the input shape from the metadata: 2944x1920
    assert_golden(run_standalone("torchscript", target, {"golden": golden["image"]}, tmp_path), golden)


@pytest.mark.slow
def test_onnx_export_reproduces_eager_on_the_golden_input(golden, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    target = tmp_path / "model.onnx"
    assert load_export_script().main(["--ckpt_file", str(golden["ckpt"]), "--filepath", str(target)]) == 0
    assert_golden(run_standalone("onnx", target, {"golden": golden["image"]}, tmp_path), golden)


# --- every config parses with each of its run ids (as the zoo's CI runs them) ---------------------------------------

# (config files merged in order, run ids): the combinations the README and docs/ run
RUN_IDS = [
    (["inference.json"], ["initialize", "run"]),
    (["train.json"], ["run", "training"]),
    (["train_global.json"], ["initialize", "run", "training"]),
    (["train_global.json", "train_local.json"], ["initialize", "run", "training"]),
    (["train_global.json", "train_joint.json"], ["initialize", "run", "training"]),
    (["train_global.json", "evaluate.json"], ["initialize", "run"]),
    (["train_global.json", "multi_gpu_train.json"], ["initialize", "run", "training", "finalize"]),
    (["inference.json", "multi_gpu_inference.json"], ["initialize", "run", "finalize"]),
    (["train_global.json", "evaluate.json", "multi_gpu_evaluate.json"], ["initialize", "run", "finalize"]),
    (["train_global.json", "baselines/cam.json"], ["initialize", "run", "training"]),
    (["train_global.json", "baselines/gmic.json"], ["initialize", "run", "training"]),
]


def unresolved_targets(config) -> list[str]:
    """``_target_`` strings of a config that name nothing importable (MONAI short names resolved as MONAI does)."""
    from monai.bundle.config_item import ComponentLocator, ConfigComponent
    from monai.utils import optional_import

    locator, unresolved = ComponentLocator(), []

    def walk(node, path):
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and not target.startswith(("$", "@", "%")):
                name = ConfigComponent(node, id=path, locator=locator).resolve_module_name()
                module, _, attribute = name.rpartition(".")
                if not module or not optional_import(module, name=attribute)[1]:
                    unresolved.append(f"{path}: {target}")
            for key, value in node.items():
                walk(value, f"{path}#{key}" if path else key)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}#{index}")

    walk(config, "")
    return unresolved


@pytest.mark.parametrize("files, run_ids", RUN_IDS, ids=["+".join(f[:-5].replace("/", ".") for f in files) for files, _ in RUN_IDS])
def test_every_config_parses_with_its_run_ids(files, run_ids):
    """Every reference reachable from each run id resolves, and every ``_target_`` names something importable
    (nothing is instantiated or run)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIG_DIR / name) for name in files])
    parser.read_meta(str(META))
    parser.parse()
    for run_id in run_ids:
        assert run_id in parser, f"{files} has no {run_id!r}"
        parser.get_parsed_content(run_id, instantiate=False, eval_expr=False)
    assert not unresolved_targets(parser.get())


def test_config_checks_detect_a_broken_reference_and_target():
    parser = ConfigParser(json.loads(INFERENCE.read_text()))
    parser["evaluator#network"] = "@networkk"
    parser["network_def#_target_"] = "glam_bundle.networks.GLAMM"
    parser["inferer#_target_"] = "SimpleInfererr"
    parser.parse()
    with pytest.raises(ValueError, match="networkk"):
        parser.get_parsed_content("run", instantiate=False, eval_expr=False)
    assert unresolved_targets(parser.get()) == ["network_def: glam_bundle.networks.GLAMM", "inferer: SimpleInfererr"]
