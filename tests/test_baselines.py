"""The baselines CAM and GMIC (glam_bundle/networks/cam.py, gmic.py; docs/baselines.md): output shapes at small
sizes, and training and evaluation through the real config files (configs/train_global.json, configs/train.json's
stages, configs/evaluate.json) with only configs/baselines/*.json merged in, on tiny phantoms with narrow
networks."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow

from glam_bundle.data.phantom import generate_dataset
from glam_bundle.losses import GlobalModuleLoss, JointLoss, LocalModuleLoss
from glam_bundle.networks import CAM, GLAM, GMIC, GlobalNetwork, freeze_all_but
from tests.conftest import REPO_ROOT, SMALL_NETWORK_OVERRIDES

CONFIGS = REPO_ROOT / "configs"
CAM_CONFIG = str(CONFIGS / "baselines" / "cam.json")
GMIC_CONFIG = str(CONFIGS / "baselines" / "gmic.json")
META_FILE = str(CONFIGS / "metadata.json")
SMALL = {"global_channels": (4, 8, 8, 8, 8), "global_blocks_per_stage": 1, "crop_size": (128, 128)}
SMALL_LOCAL = {"local_layers": (1, 1, 1, 1), "local_channels": (8, 8, 8, 16)}
TABLE_ROWS = ("S_g", "S_l", "S_c")


def _image(n=2, height=736, width=480, seed=0):
    return torch.randn(n, 1, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- shapes


def test_cam_outputs_have_glams_global_keys_with_one_scale():
    net = CAM(**SMALL)
    x = _image()
    out = net(x)  # training mode: the global module's entries only
    assert set(out) == {"saliency_scales", "saliency_native_2", "y_scales", "saliency_global", "y_global", "z_global"}
    assert out["saliency_global"].shape == (2, 2, 12, 8) and out["saliency_scales"].shape == (2, 1, 2, 12, 8)
    assert out["y_scales"].shape == (2, 1, 2) and out["y_global"].shape == (2, 2) and out["z_global"].shape == (2, 8)
    # t = 1.0 (default): global average pooling of the class activation map
    torch.testing.assert_close(out["y_global"], out["saliency_global"].mean(dim=(2, 3)))
    net.eval()
    with torch.no_grad():
        out = net(x)
        full_resolution = {"saliency", "saliency_local", "patch_locations"}
        assert set(net(x, global_only=True)) == set(out) - full_resolution
    assert out["saliency"].shape == (2, 2, 736, 480) and out["patch_locations"].shape == (2, 0, 2)
    assert torch.equal(out["saliency"], F.interpolate(out["saliency_global"], size=(736, 480), mode="nearest"))
    assert torch.equal(out["saliency_local"], out["saliency"])
    with pytest.raises(ValueError, match="no local module"):
        net(x, patches=True)


def test_cam_top_t_and_glam_arguments():
    x = _image(n=1)
    net = CAM(global_percent_t=0.03, **SMALL).eval()
    with torch.no_grad():
        out = net(x)
    top = out["saliency_global"].flatten(2).topk(3, dim=-1).values.mean(-1)  # round(96 · 0.03) = 3 cells
    torch.testing.assert_close(out["y_global"], top)
    # GLAM's local-module arguments (presets written for GLAM) are accepted and ignored; anything else is not
    CAM(**SMALL, **SMALL_LOCAL, aggregation="concat", use_fusion=False, freeze_global=True, num_patches_train=6)
    with pytest.raises(TypeError, match="global_percent"):
        CAM(global_percent=0.5)
    assert sum(p.numel() for p in CAM().parameters()) == 2_800_048  # GLAM's global module less conv0, conv1, combine
    assert not any(k.startswith("global_module.heads.conv0") for k in CAM().state_dict())


def test_gmic_is_glam_with_a_single_last_layer_map_and_s_c_equal_to_s_g():
    net = GMIC(**SMALL, **SMALL_LOCAL)
    assert isinstance(net, GLAM) and net.num_patches == net.num_patches_train == 6 and net.gamma_c == 1.0
    assert [k for k in net.state_dict() if k.startswith("global_module.heads.")] == ["global_module.heads.conv2.weight"]
    assert GMIC().local_module.backbone is not None  # ResNet-18 stages by default
    x = _image()
    labels = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    out = net(x, labels=labels)
    assert out["saliency_global"].shape == (2, 2, 12, 8) and out["y_scales"].shape == (2, 1, 2)
    assert out["patch_locations"].shape == (2, 6, 2) and out["saliency_patches"].shape == (2, 6, 2, 32, 32)
    assert out["attention"].shape == (2, 6) and out["y_fusion"].shape == (2, 2) and "saliency" not in out
    loss = JointLoss()(out, labels)
    loss.backward()
    assert torch.isfinite(loss)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out["saliency"].shape == out["saliency_local"].shape == (2, 2, 736, 480)
    assert torch.equal(out["saliency"], F.interpolate(out["saliency_global"], size=(736, 480), mode="nearest"))
    # stage-3 network of the stage configs (concat aggregation, frozen global module, no fusion)
    stage3 = GMIC(**SMALL, **SMALL_LOCAL, aggregation="concat", use_fusion=False, freeze_global=True).train()
    out = stage3.forward_patches(torch.randn(2, 6, 1, 128, 128))
    assert LocalModuleLoss()(out, labels).isfinite()


def test_breast_mask_and_losses_with_one_scale():
    x = _image()
    mask = torch.zeros(2, 1, 736, 480)
    mask[..., :368, :240] = 1  # the breast: the upper-left quarter
    for net in (CAM(**SMALL), GMIC(**SMALL, **SMALL_LOCAL)):
        out = net(x, global_only=True, breast_mask=mask)
        assert (out["saliency_global"][..., 6:, :] == 0).all() and (out["saliency_global"][..., :, 4:] == 0).all()
        assert (out["saliency_native_2"][..., :6, :4] > 0).all()
        loss = GlobalModuleLoss(sparsity_weight=1e-3)
        value = loss(out, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        assert value.isfinite() and set(loss.terms) == {"bce_s0", "l1", "sparsity", "total"}
        assert loss.terms["l1"] == pytest.approx(float(out["saliency_native_2"].sum() / 2), rel=1e-5)
    # GLAM's default global module is unchanged: three scales, three native maps, the combine weight
    glam_out = GlobalNetwork(channels=SMALL["global_channels"], blocks_per_stage=1)(x)
    assert glam_out["y_scales"].shape == (2, 3, 2) and {"saliency_native_0", "saliency_native_1"} <= set(glam_out)
    with pytest.raises(KeyError, match="native saliency maps"):
        GlobalModuleLoss()({k: v for k, v in glam_out.items() if k != "saliency_native_1"}, torch.ones(2, 2))
    with pytest.raises(ValueError, match="one per saliency level"):
        GlobalNetwork(saliency_levels=(2,))  # GLAM's three gammas for one level


def test_every_trainable_parameter_gets_a_gradient_in_the_global_stage():
    x, labels = _image(), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for net in (CAM(**SMALL), GMIC(**SMALL, **SMALL_LOCAL)):
        trainable = freeze_all_but(net, ["global_module"])
        GlobalModuleLoss()(net(x, global_only=True), labels).backward()
        named = dict(net.named_parameters())
        assert trainable and all(named[name].grad is not None for name in trainable), type(net).__name__


# ------------------------------------------------------------------------------------ through the configs


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    generate_dataset(root / "data", n_images=12, height=736, width=480, seed=1,
                     prevalence={"benign": 0.5, "malignant": 0.5},
                     fractions={"training": 0.5, "validation": 0.17, "test": 0.33})
    preset = {**SMALL_NETWORK_OVERRIDES, "batch_size": 2, "max_crop_noise": [25, 25], "max_crop_size_noise": 25}
    (root / "preset.json").write_text(json.dumps(preset))
    return root


def _run(config_file, **override):
    workflow = ConfigWorkflow(config_file=config_file, meta_file=META_FILE, logging_file=False, **override)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def _cli(*args, cwd):
    """python -m monai.bundle run ... from ``cwd`` with the bundle root set, as docs/baselines.md writes it."""
    command = [sys.executable, "-m", "monai.bundle", "run", *args, "--meta_file", META_FILE,
               "--bundle_root", str(REPO_ROOT)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _check_report(output_dir):
    metrics = json.loads((output_dir / "metrics.json").read_text())
    table = (output_dir / "table.md").read_text()
    assert metrics["num_images"] == 4 and metrics["num_failures"] == 0
    assert set(metrics["localisation"]) == set(TABLE_ROWS)
    for row in TABLE_ROWS:
        assert f"| {row} |" in table, table
    assert "Dice malignant" in table and "AUC benign" in table
    return metrics, table


def test_cam_trains_with_train_global_json_and_evaluates_with_evaluate_json(phantoms, tmp_path):
    ckpt_dir = tmp_path / "models"
    _run([str(CONFIGS / "train_global.json"), str(phantoms / "preset.json"), CAM_CONFIG],
         dataset_dir=str(phantoms / "data"), cache_dir=str(phantoms / "cache"), ckpt_dir=str(ckpt_dir),
         output_dir=str(tmp_path / "train"), max_epochs=1, mask_saliency_to_breast=True)
    weights = torch.load(ckpt_dir / "model_global.pt", weights_only=True)
    assert "global_module.heads.conv2.weight" in weights and not any(k.startswith("local_module") for k in weights)
    assert not any(k.startswith("global_module.heads.conv0") for k in weights)
    # the documented evaluation command; cam.json points ckpt_path at <ckpt_dir>/model_global.pt
    configs = ["configs/train_global.json", "configs/evaluate.json", str(phantoms / "preset.json"),
               "configs/baselines/cam.json"]
    _cli("--config_file", str([str(REPO_ROOT / c) if c.startswith("configs/") else c for c in configs]),
         "--dataset_dir", str(phantoms / "data"), "--cache_dir", str(phantoms / "cache"),
         "--ckpt_dir", str(ckpt_dir), "--output_dir", str(tmp_path / "evaluate"),
         "--mask_saliency_to_breast", "true", cwd=tmp_path)
    metrics, _ = _check_report(tmp_path / "evaluate")
    assert metrics["checkpoint"] == str(ckpt_dir / "model_global.pt")


def test_gmic_trains_every_stage_through_train_json_presets_and_evaluates(phantoms, tmp_path):
    ckpt_dir, out = tmp_path / "models", tmp_path / "out"
    # configs/train.json --presets "['<sizes>','configs/baselines/gmic.json']" (the second path relative to the
    # bundle root, as documented)
    _cli("--config_file", str(CONFIGS / "train.json"),
         "--presets", str([str(phantoms / "preset.json"), "configs/baselines/gmic.json"]),
         "--max_epochs", "{'global': 1, 'local': 1, 'joint': 1}", "--dataset_dir", str(phantoms / "data"),
         "--cache_dir", str(phantoms / "cache"), "--ckpt_dir", str(ckpt_dir), "--output_dir", str(out), cwd=tmp_path)
    weights = {f: torch.load(ckpt_dir / f, weights_only=True)
               for f in ("model_global.pt", "model_local.pt", "model.pt")}
    for name, state in weights.items():
        assert [k for k in state if k.startswith("global_module.heads.")] == ["global_module.heads.conv2.weight"], name
    assert "aggregation.attention_w.weight" in weights["model.pt"] and "fusion.linear.weight" in weights["model.pt"]
    assert "fusion.linear.weight" not in weights["model_local.pt"]
    # the sizes preset's narrow local module applies under gmic.json (only the class is overridden)
    assert weights["model.pt"]["local_module.saliency_head.weight"].shape[1] == SMALL_NETWORK_OVERRIDES[
        "network_def#local_channels"][-1]
    assert (phantoms / "cache" / "patches_gmic" / "index.json").is_file()  # its own patch cache
    assert not (phantoms / "cache" / "patches").exists()
    assert {p.name for p in out.iterdir()} == {"train_global", "train_local", "train_joint"}
    _run([str(CONFIGS / "train_global.json"), str(CONFIGS / "evaluate.json"), str(phantoms / "preset.json"),
          GMIC_CONFIG], dataset_dir=str(phantoms / "data"), cache_dir=str(phantoms / "cache"),
         ckpt_dir=str(ckpt_dir), output_dir=str(tmp_path / "evaluate"))
    metrics, _ = _check_report(tmp_path / "evaluate")
    assert metrics["checkpoint"] == str(ckpt_dir / "model.pt")
