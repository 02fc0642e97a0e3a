"""The fast inference settings the docs claim (docs/performance.md) cannot silently fall off: the evaluator runs the
network under inference mode and the autocast its ``precision`` resolves to (CPU capability mocked both ways), the
configs' defaults are those documented, and ``scripts/benchmark_inference.py --quick`` writes a valid report.
Nothing here is timed."""

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

import glam_bundle.precision as precision
from glam_bundle.constants import TINY_NETWORK
from glam_bundle.engines import GLAMEvaluator
from glam_bundle.precision import AutocastInferer, resolve_autocast, resolve_precision
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES

BF16_CPU = {"avx512_bf16": True, "amx_bf16": False}
PLAIN_CPU = {"avx512_bf16": False, "amx_bf16": False}


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU capability that ``glam_bundle.precision`` sees."""

    def set_flags(flags):
        monkeypatch.setattr(precision, "cpu_capabilities", lambda: dict(flags))

    return set_flags


class SpyNetwork(nn.Module):
    """A one-convolution stand-in for GLAM that records the grad / inference / autocast state it runs under."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)  # 2 channels: channels_last differs from contiguous
        self.seen = []

    def forward(self, x, **kwargs):
        self.seen.append({
            "channels_last_input": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
            "channels_last_weights": self.conv.weight.is_contiguous(memory_format=torch.channels_last)
            and not self.conv.weight.is_contiguous(),
            "inference_mode": torch.is_inference_mode_enabled(),
            "grad": torch.is_grad_enabled(),
            "autocast": torch.is_autocast_enabled("cpu"),
            "autocast_dtype": torch.get_autocast_dtype("cpu"),
        })
        logits = self.conv(x)
        return {"saliency": torch.sigmoid(logits), "y_global": torch.sigmoid(logits.mean(dim=(2, 3)))}


def run_spy_evaluator(**kwargs):
    network = SpyNetwork()
    evaluator = GLAMEvaluator(device=torch.device("cpu"), val_data_loader=[{"image": torch.randn(1, 2, 8, 8)}],
                              network=network, decollate=False, **kwargs)
    evaluator.run()
    return network.seen, evaluator


def test_auto_resolves_to_bfloat16_only_on_a_cpu_with_native_bfloat16(cpu_flags):
    cpu_flags(BF16_CPU)
    assert resolve_precision("cpu", "auto") == "bfloat16"
    assert resolve_autocast("cpu", "auto") == {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": True}
    cpu_flags({"avx512_bf16": False, "amx_bf16": True})
    assert resolve_precision("cpu", "auto") == "bfloat16"
    cpu_flags(PLAIN_CPU)
    assert resolve_precision("cpu", "auto") == "float32"
    assert resolve_autocast("cpu", "auto")["enabled"] is False
    # explicit settings do not depend on the CPU; float16 is for GPUs; unknown names are refused
    assert resolve_precision("cpu", "bfloat16") == "bfloat16" and resolve_precision("cpu", "float32") == "float32"
    with pytest.raises(ValueError, match="GPU"):
        resolve_precision("cpu", "float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("cpu", "fp8")


def test_auto_on_a_gpu_is_bfloat16_or_float16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("cuda", "auto") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("cuda", "auto") == "float16"
    assert resolve_autocast("cuda:0", "float16") == {"device_type": "cuda", "dtype": torch.float16, "enabled": True}


@pytest.mark.parametrize("flags", [BF16_CPU, PLAIN_CPU], ids=["bf16_cpu", "plain_cpu"])
def test_evaluator_runs_under_inference_mode_and_the_resolved_autocast(cpu_flags, flags):
    cpu_flags(flags)
    seen, evaluator = run_spy_evaluator(precision="auto")
    bf16 = flags["avx512_bf16"]
    assert len(seen) == 1 and seen[0]["inference_mode"] is True and seen[0]["grad"] is False
    assert seen[0]["autocast"] is bf16
    if bf16:
        assert seen[0]["autocast_dtype"] == torch.bfloat16
    assert isinstance(evaluator.inferer, AutocastInferer) == bf16
    # what follows the network sees float32 whatever the precision
    pred = evaluator.state.output["pred"]
    assert pred["saliency"].dtype == torch.float32 and pred["y_global"].dtype == torch.float32


@pytest.mark.parametrize("setting,channels_last", [("float32", False), ("bfloat16", True), ("auto", True)])
def test_evaluator_uses_channels_last_with_reduced_precision(cpu_flags, setting, channels_last):
    """channels_last "auto": on with bfloat16 (where it was measured to help), off in float32; input and weights."""
    cpu_flags(BF16_CPU)
    seen, evaluator = run_spy_evaluator(precision=setting)
    assert evaluator.channels_last is channels_last
    assert seen[0]["channels_last_input"] is channels_last
    assert seen[0]["channels_last_weights"] is channels_last
    seen, evaluator = run_spy_evaluator(precision="bfloat16", channels_last=False)
    assert evaluator.channels_last is False and seen[0]["channels_last_input"] is False
    with pytest.raises(ValueError, match="channels_last"):
        run_spy_evaluator(channels_last="sometimes")


def test_channels_last_gives_the_same_glam_outputs():
    """The layout changes the order of the sums only: GLAM's outputs in float32 agree to rounding."""
    from glam_bundle.networks import GLAM
    from glam_bundle.precision import to_channels_last

    torch.manual_seed(0)
    network = GLAM(crop_size=(64, 64), **TINY_NETWORK).eval()
    x = torch.rand(1, 1, 368, 240)
    with torch.inference_mode():
        expected = network(x)
        out = to_channels_last(network)(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(out["patch_locations"], expected["patch_locations"])
    for key in ("saliency", "y_global"):
        assert torch.allclose(out[key], expected[key], atol=1e-5), key


def test_evaluator_defaults_float32_and_inference_mode_switchable(cpu_flags):
    cpu_flags(BF16_CPU)
    seen, evaluator = run_spy_evaluator()
    assert evaluator.precision == "float32" and evaluator.inference_mode is True
    assert seen[0]["inference_mode"] is True and seen[0]["autocast"] is False
    seen, _ = run_spy_evaluator(inference_mode=False, precision="bfloat16")
    assert seen[0]["inference_mode"] is False and seen[0]["grad"] is False  # MONAI's eval_mode: no_grad
    assert seen[0]["autocast"] is True and seen[0]["autocast_dtype"] == torch.bfloat16


def test_configs_wire_the_documented_defaults():
    inference = json.loads((REPO_ROOT / "configs" / "inference.json").read_text())
    evaluate = json.loads((REPO_ROOT / "configs" / "evaluate.json").read_text())
    # docs/performance.md: float32 by default (bfloat16 failed the saliency tolerance in the benchmark),
    # inference mode on; "auto" / "bfloat16" are opt-in
    assert inference["precision"] == "float32" and evaluate["precision"] == "float32"
    assert inference["evaluator"]["precision"] == "@precision"
    assert inference["evaluator"]["inference_mode"] is True
    assert evaluate["validate#evaluator#precision"] == "@precision"
    # channels_last with reduced precision (resolved by the evaluator)
    assert inference["channels_last"] == "auto" and inference["evaluator"]["channels_last"] == "@channels_last"
    assert evaluate["channels_last"] == "auto" and evaluate["validate#evaluator#channels_last"] == "@channels_last"
    # files written beside the next image's network, and each image's tensors dropped once written
    assert inference["writer"]["background"] == "@write_in_background"
    assert ConfigParser(inference).get_parsed_content("write_in_background") is torch.cuda.is_available()
    assert inference["handlers"][-1] == {"_target_": "glam_bundle.handlers.ReleaseIterationOutputs"}


@pytest.mark.parametrize("setting,flags", [("float32", BF16_CPU), ("auto", BF16_CPU), ("auto", PLAIN_CPU)])
def test_inference_config_runs_the_network_as_configured(tmp_path, cpu_flags, setting, flags):
    """configs/inference.json end to end (small network, one phantom): the network's forward sees inference mode
    and the autocast ``precision`` resolves to, and the written saliency is float32."""
    from monai.bundle import ConfigWorkflow

    from glam_bundle.data.phantom import generate_dataset

    cpu_flags(flags)
    generate_dataset(tmp_path / "data", n_images=1, height=736, width=480, seed=1)
    workflow = ConfigWorkflow(
        config_file=str(REPO_ROOT / "configs" / "inference.json"), meta_file=str(REPO_ROOT / "metadata.json"),
        workflow_type="infer", logging_file=False, allow_random_weights=True, dataset_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "out"), precision=setting, **SMALL_NETWORK_OVERRIDES,
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    seen = []
    network.register_forward_hook(lambda *_: seen.append(
        (torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    workflow.run()
    workflow.finalize()
    expect_bf16 = setting == "auto" and flags["avx512_bf16"]
    assert seen and all(s[0] for s in seen)
    assert all(s[1] == expect_bf16 for s in seen)
    if expect_bf16:
        assert all(s[2] == torch.bfloat16 for s in seen)
    import nibabel as nib

    (saliency,) = (tmp_path / "out").rglob("*_saliency.nii.gz")
    assert nib.load(saliency).get_data_dtype() == "float32"


@pytest.mark.slow
def test_benchmark_quick_writes_a_valid_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    out = tmp_path / "bench"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benchmark_inference.py"), "--quick", "--out", str(out)],
                   check=True, capture_output=True, cwd=tmp_path, env=env, timeout=900)
    result = json.loads(out.with_suffix(".json").read_text())
    modes = result["network"]["modes"]
    assert {"float32_eager", "float32_inference_mode", "bfloat16_autocast", "torchscript_float32",
            "float32_channels_last"} <= set(modes)
    assert result["default_mode"] in modes and modes["float32_eager"]["latency_ratio"] == 1.0
    for row in modes.values():
        assert row["latency_s"] > 0 and len(row["latency_all_s"]) >= 5 and row["images_per_s"] > 0
        assert row["saliency_max_abs_diff"] >= 0 and row["prediction_max_abs_diff"] >= 0
    assert modes["float32_eager"]["peak_rss_mib"] > 0 and result["network"]["flops"]["total"] > 0
    assert modes["torchscript_float32"]["saliency_max_abs_diff"] < 1e-3  # the exported file computes the same maps
    e2e = result["end_to_end"]["per_precision"]
    assert {"float32", "float32_writer_thread"} <= set(e2e)
    # the config's default on a CPU writes in the engine's thread; the other variant forces the writer thread
    assert e2e["float32"]["writer"] == "foreground" and e2e["float32_writer_thread"]["writer"] == "background"
    for row in e2e.values():
        assert row["image_s"] > 0 and row["network_s"] > 0 and row["writer_s"] > 0 and row["peak_rss_mib"] > 0
    # the foreground writer's files are the engine's wait
    assert e2e["float32"]["writing_s"] >= 0.9 * e2e["float32"]["writer_s"]
    assert {"cpu", "cpu_flags", "cores_visible", "torch"} <= set(result["machine"])
    assert result["targets"] and "## Targets" in out.with_suffix(".md").read_text()
