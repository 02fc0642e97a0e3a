"""Shapes, parameter counts and behaviour of the GLAM networks (paper sizes at 2944×1920)."""

import pytest
import torch

from glam_bundle.losses import GlobalModuleLoss, JointLoss, LocalModuleLoss
from glam_bundle.networks import (
    GLAM,
    ConcatAggregation,
    FusionModule,
    GatedAttentionAggregation,
    GLAMSaliency,
    GlobalNetwork,
    LocalNetwork,
    TopTPooling,
    load_partial_state_dict,
    random_patch_locations,
)

H, W = 2944, 1920
SMALL = dict(global_channels=(4, 8, 8, 8, 8), global_blocks_per_stage=1, local_layers=(1, 1, 1, 1), local_channels=(8, 8, 8, 16))


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_parameter_counts_match_the_original():
    model = GLAM()
    # 2,800,444 parameters as the original, of which the 12 of the unused `combine` weight are frozen (DDP)
    assert sum(p.numel() for p in model.global_module.parameters()) == 2_800_444
    assert trainable(model.global_module) == 2_800_432
    assert not model.global_module.heads.combine.requires_grad
    assert trainable(model.local_module) == 21_285_696


@torch.no_grad()
def test_global_module_shapes_at_paper_resolution():
    net = GlobalNetwork().eval()
    h0, h1, h2 = net.backbone(torch.randn(1, 1, H, W))
    assert h0.shape == (1, 64, 184, 120)
    assert h1.shape == (1, 128, 92, 60)
    assert h2.shape == (1, 256, 46, 30)
    out, native = net.heads((h0, h1, h2))
    assert out.shape == (1, 3, 2, 184, 120)
    assert [tuple(s.shape) for s in native] == [(1, 2, 184, 120), (1, 2, 92, 60), (1, 2, 46, 30)]


@torch.no_grad()
def test_global_module_outputs_and_combination():
    net = GlobalNetwork().eval()
    out = net(torch.randn(2, 1, H, W))
    assert out["saliency_global"].shape == (2, 2, 184, 120)
    assert out["y_global"].shape == (2, 2) and out["z_global"].shape == (2, 256)
    s0, s1, s2 = out["saliency_scales"].unbind(1)
    torch.testing.assert_close(out["saliency_global"], 0.2 * s0 + 0.6 * s1 + 0.2 * s2)
    # S1 and S2 are replicated 2×2 and 4×4 blocks of their native 92×60 and 46×30 maps
    assert torch.equal(s1[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1), s1)
    assert torch.equal(s2[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1), s2)
    # the native-resolution maps (for the appendix-B ℓ1 term) are those blocks
    assert torch.equal(out["saliency_native_0"], s0)
    assert torch.equal(out["saliency_native_1"], s1[..., ::2, ::2])
    assert torch.equal(out["saliency_native_2"], s2[..., ::4, ::4])
    k = round(184 * 120 * 0.03)
    expected = s1.flatten(2).topk(k, dim=-1).values.mean(-1)
    torch.testing.assert_close(out["y_scales"][:, 1], expected)
    torch.testing.assert_close(out["y_global"], out["y_scales"].mean(1))


@torch.no_grad()
def test_local_module_gives_128_map_for_512_patch():
    out = LocalNetwork().eval()(torch.randn(2, 1, 512, 512))
    assert out["saliency_patch"].shape == (2, 2, 128, 128)
    assert out["z_patch"].shape == (2, 512)
    assert 0 <= out["saliency_patch"].min() and out["saliency_patch"].max() <= 1


def test_top_t_pooling():
    x = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10).repeat(1, 2, 1, 1)
    assert torch.equal(TopTPooling(0.05)(x), torch.full((1, 2), 97.0))  # mean of 95..99
    with pytest.raises(ValueError):
        TopTPooling(0.0)


def test_concat_aggregation_pools_over_all_patches():
    maps = torch.zeros(1, 3, 2, 4, 4)
    maps[0, 2, 1] = 1.0  # only the third patch is salient for class 1
    out = ConcatAggregation(percent_t=16 / 48)(maps, torch.randn(1, 3, 5))
    torch.testing.assert_close(out["y_local"], torch.tensor([[0.0, 1.0]]))
    assert out["z_local"].shape == (1, 5)


def test_gated_attention_weights_are_a_distribution():
    agg = GatedAttentionAggregation(feature_size=5, hidden_size=3, percent_t=0.5)
    maps, feats = torch.rand(2, 4, 2, 8, 8), torch.randn(2, 4, 5)
    out = agg(maps, feats)
    torch.testing.assert_close(out["attention"].sum(1), torch.ones(2))
    per_patch = maps.flatten(3).topk(32, dim=-1).values.mean(-1)
    torch.testing.assert_close(out["y_local"], (out["attention"][..., None] * per_patch).sum(1))
    torch.testing.assert_close(out["z_local"], (out["attention"][..., None] * feats).sum(1))


def test_fusion_is_one_linear_layer():
    fusion = FusionModule(global_size=3, local_size=2)
    zg, zl = torch.randn(4, 3), torch.randn(4, 2)
    expected = torch.sigmoid(torch.cat([zg, zl], 1) @ fusion.linear.weight.T + fusion.linear.bias)
    torch.testing.assert_close(fusion(zg, zl), expected)


@pytest.mark.parametrize("aggregation", ["attention", "concat"])
def test_glam_forward_dict_and_training_patches(aggregation):
    torch.manual_seed(0)
    model = GLAM(aggregation=aggregation, num_patches=1, num_patches_train=3, crop_size=(128, 128), **SMALL)
    x = torch.randn(2, 1, 736, 480)
    model.train()
    out = model(x)
    assert out["patch_locations"].shape == (2, 3, 2)
    assert out["saliency_patches"].shape == (2, 3, 2, 32, 32)
    loss = sum(out[k].mean() for k in ("y_global", "y_local", "y_fusion"))
    loss.backward()
    assert model.global_module.heads.conv1.weight.grad.abs().sum() > 0
    assert model.local_module.saliency_head.weight.grad.abs().sum() > 0
    assert model.fusion.linear.weight.grad.abs().sum() > 0
    assert "saliency" not in out and "saliency_local" not in out  # not built in training mode by default
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out["patch_locations"].shape == (2, 1, 2)
    for key in ("y_global", "y_local", "y_fusion"):
        assert out[key].shape == (2, 2)
    assert out["saliency"].shape == out["saliency_local"].shape == (2, 2, 736, 480)
    # outside the patch S_c is half the upsampled S_g (gamma_c = 0.5, S_l = 0 there)
    g_full = torch.nn.functional.interpolate(out["saliency_global"], size=(736, 480), mode="nearest")
    r, c = out["patch_locations"][0, 0].tolist()
    outside = torch.ones(736, 480, dtype=torch.bool)
    outside[r : r + 128, c : c + 128] = False
    torch.testing.assert_close(out["saliency"][0][:, outside], 0.5 * g_full[0][:, outside])
    inside = out["saliency"][0, :, r : r + 128, c : c + 128]
    local = out["saliency_patches"][0, 0].repeat_interleave(4, -2).repeat_interleave(4, -1)
    torch.testing.assert_close(inside, 0.5 * (g_full[0, :, r : r + 128, c : c + 128] + local))


def test_glam_gamma_c_and_options():
    model = GLAM(use_fusion=False, gamma_c=1.0, crop_size=(128, 128), **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 368, 240))
    assert "y_fusion" not in out
    g_full = torch.nn.functional.interpolate(out["saliency_global"], size=(368, 240), mode="nearest")
    torch.testing.assert_close(out["saliency"], g_full)
    with pytest.raises(ValueError, match="smaller"):
        model(torch.randn(1, 1, 100, 100))
    with pytest.raises(ValueError):
        GLAM(aggregation="max")
    with pytest.raises(ValueError):
        GlobalNetwork(gammas=(0.5, 0.6, 0.2))


# Staged training (paper section 3.3) on a tiny GLAM: 256×128 images, 64×64 patches, narrow layers.
TINY = dict(crop_size=(64, 64), num_patches_train=3, **SMALL)
TINY_IMAGE = (256, 128)
LABELS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def tiny_batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(LABELS), 1, *TINY_IMAGE, generator=torch.Generator().manual_seed(seed))


def test_full_resolution_maps_flag():
    x = tiny_batch()[:2]
    model = GLAM(full_resolution_maps=True, **TINY).train()
    assert model(x)["saliency"].shape == (2, 2, *TINY_IMAGE)
    model = GLAM(full_resolution_maps=False, **TINY).eval()
    with torch.no_grad():
        out = model(x)
    assert "saliency" not in out and "saliency_local" not in out and out["y_local"].shape == (2, 2)
    # GLAMSaliency's only output is S_c: built in training mode too
    saliency_model = GLAMSaliency(**TINY).train()
    assert saliency_model(x).shape == (2, 2, *TINY_IMAGE)


def test_frozen_global_module_stays_in_eval_mode_through_a_local_training_step():
    torch.manual_seed(0)
    model = GLAM(aggregation="concat", use_fusion=False, freeze_global=True, **TINY)
    x = tiny_batch()
    # non-trivial running statistics, so that batch statistics would give different outputs
    for module in model.global_module.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    global_before = {k: v.clone() for k, v in model.global_module.state_dict().items()}
    local_before = {k: v.clone() for k, v in model.local_module.state_dict().items()}
    with torch.no_grad():
        reference = model.eval()(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()  # as MONAI's trainer does every iteration
    assert model.training and model.local_module.training and not model.global_module.training
    assert not any(p.requires_grad for p in model.global_module.parameters())
    out = model(x)
    torch.testing.assert_close(out["y_global"], reference["y_global"], rtol=0, atol=0)
    torch.testing.assert_close(out["saliency_global"], reference["saliency_global"], rtol=0, atol=0)
    # Algorithm 1 on the pretrained S_g: the first of the K training patches is the evaluation patch
    assert torch.equal(out["patch_locations"][:, :1], reference["patch_locations"])
    optimizer.zero_grad()
    LocalModuleLoss()(out, LABELS).backward()
    optimizer.step()
    for key, value in model.global_module.state_dict().items():
        assert torch.equal(value, global_before[key]), key  # weights, running stats, num_batches_tracked
    assert not torch.equal(model.local_module.saliency_head.weight, local_before["saliency_head.weight"])
    with torch.no_grad():
        after = model.eval()(x)
    torch.testing.assert_close(after["y_global"], reference["y_global"], rtol=0, atol=0)
    # unfreezing makes the global module trainable again, except the unused `combine`
    model.freeze_global = False
    model.train()
    assert model.global_module.training
    assert all(p.requires_grad for n, p in model.global_module.named_parameters() if n != "heads.combine")
    assert not model.global_module.heads.combine.requires_grad


def test_negative_images_get_random_patches_in_training():
    torch.manual_seed(0)
    model = GLAM(aggregation="concat", use_fusion=False, freeze_global=True, **TINY).train()
    x = tiny_batch()
    with torch.no_grad():
        selected = model(x)["patch_locations"]  # labels None: Algorithm 1 for every image
        torch.manual_seed(123)
        out = model(x, labels=LABELS)
        torch.manual_seed(123)
        again = model(x, labels=LABELS)
    torch.manual_seed(123)
    random = random_patch_locations(len(LABELS), TINY_IMAGE, (64, 64), 3)
    negative = (LABELS == 0).all(1)
    assert torch.equal(out["patch_locations"][negative], random[negative])
    assert torch.equal(out["patch_locations"][~negative], selected[~negative])
    assert torch.equal(out["patch_locations"], again["patch_locations"])  # reproducible from torch's seed
    assert not torch.equal(random[negative], selected[negative])
    # evaluation mode ignores the labels
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, labels=LABELS)["patch_locations"], model(x)["patch_locations"])
    with pytest.raises(ValueError, match="labels"):
        model.train()(x, labels=LABELS[:2])


def assert_every_trainable_parameter_has_a_grad(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without gradient (DDP would fail): {missing}"


def test_every_trainable_parameter_gets_a_gradient_in_each_stage():
    x = tiny_batch()
    # stage 1: global module only (the optimizer holds global_module's parameters)
    torch.manual_seed(0)
    model = GLAM(**TINY).train()
    GlobalModuleLoss()(model(x, global_only=True), LABELS).backward()
    assert_every_trainable_parameter_has_a_grad(model.global_module)
    # stage 3: local module, concatenation aggregation, no fusion, frozen global module
    model = GLAM(aggregation="concat", use_fusion=False, freeze_global=True, **TINY).train()
    LocalModuleLoss()(model(x, labels=LABELS), LABELS).backward()
    assert_every_trainable_parameter_has_a_grad(model)
    assert any(p.requires_grad for p in model.parameters())
    # stage 4: joint training, attention aggregation and fusion
    model = GLAM(aggregation="attention", use_fusion=True, **TINY).train()
    JointLoss()(model(x, labels=LABELS), LABELS).backward()
    assert_every_trainable_parameter_has_a_grad(model)


def test_load_partial_state_dict_from_stage_3_into_stage_4():
    torch.manual_seed(0)
    stage3 = GLAM(aggregation="concat", use_fusion=False, **TINY)
    stage4 = GLAM(aggregation="attention", use_fusion=True, **TINY)
    fusion_before = stage4.fusion.linear.weight.clone()
    loaded, initialised = load_partial_state_dict(stage4, stage3.state_dict())
    assert loaded == sorted(stage3.state_dict())
    assert initialised and all(k.startswith(("aggregation.", "fusion.")) for k in initialised)
    assert sorted(loaded + initialised) == sorted(stage4.state_dict())
    for key, value in stage3.state_dict().items():
        assert torch.equal(stage4.state_dict()[key], value)
    assert torch.equal(stage4.fusion.linear.weight, fusion_before)
    # the other way round: the attention and fusion weights are unexpected, accepted only when asked
    with pytest.raises(KeyError, match="does not have"):
        load_partial_state_dict(stage3, stage4.state_dict())
    loaded, initialised = load_partial_state_dict(stage3, stage4.state_dict(), ignore_unexpected=True)
    assert initialised == [] and loaded == sorted(stage3.state_dict())
    # a different architecture: every mismatching key is listed, nothing is loaded
    wider = GLAM(**dict(TINY, local_channels=(8, 8, 8, 32)))
    before = {k: v.clone() for k, v in stage4.state_dict().items()}
    with pytest.raises(ValueError, match="local_module.saliency_head.weight"):
        load_partial_state_dict(stage4, wider.state_dict())
    assert all(torch.equal(v, before[k]) for k, v in stage4.state_dict().items())
    with pytest.raises(KeyError, match="does not have"):
        load_partial_state_dict(stage4, {"module." + k: v for k, v in stage3.state_dict().items()})


def test_centre_aligned_upsampling_puts_each_coarse_cell_on_its_receptive_field_centre():
    from glam_bundle.networks.global_network import centred_upsample

    coarse = torch.zeros(1, 1, 6, 4)
    coarse[0, 0, 2, 1] = 1.0
    fine = centred_upsample(coarse, (23, 15), factor=4)  # odd sizes: 368x240 gives h0 23x15, h2 6x4
    assert fine.shape == (1, 1, 23, 15)
    assert fine[0, 0, 8, 4] == 1.0 and fine[0, 0].argmax() == 8 * 15 + 4  # cell (2, 1) -> h0 cell (8, 4)
    assert fine[0, 0, 6, 4] == pytest.approx(0.5) and fine[0, 0, 12, 4] == 0.0  # linear in between
    # The release's floor-nearest upsampling paints the same cell on rows 8..11, centred 1.5 cells lower.
    released = GlobalNetwork(channels=(4, 4, 4, 4, 4), blocks_per_stage=1).eval()
    aligned = GlobalNetwork(channels=(4, 4, 4, 4, 4), blocks_per_stage=1, centre_aligned=True).eval()
    aligned.load_state_dict(released.state_dict())
    x = torch.randn(1, 1, 368, 240)
    with torch.no_grad():
        a, b = released(x), aligned(x)
    torch.testing.assert_close(a["saliency_scales"][:, 0], b["saliency_scales"][:, 0])  # S0 is not resampled
    torch.testing.assert_close(a["saliency_native_2"], b["saliency_native_2"])
    assert not torch.allclose(a["saliency_scales"][:, 2], b["saliency_scales"][:, 2])


def test_breast_mask_restricts_every_saliency_map_and_the_patches_to_the_breast():
    from glam_bundle.inferers import PrepareBatchWithKeys

    torch.manual_seed(0)
    net = GLAM(
        global_channels=(4, 4, 4, 4, 4), global_blocks_per_stage=1, local_layers=(1, 1, 1, 1),
        local_channels=(4, 4, 4, 4), crop_size=(32, 32), global_percent_t=0.1,
    ).eval()
    x = torch.randn(2, 1, 128, 96)
    breast = torch.zeros(2, 1, 128, 96)
    breast[:, :, 16:112, :48] = 1.0  # breast on the left half; the rest is border and padding
    image, label, args, kwargs = PrepareBatchWithKeys({"breast_mask": "breast_mask"})(
        {"image": x, "label": torch.ones(2, 2), "breast_mask": breast}
    )
    with torch.no_grad():
        free, masked = net(x), net(image, **kwargs)
    cells = masked["saliency_global"]  # (2, 2, 8, 6) on 16-px cells: columns 3.. and rows 0, 7 hold no breast
    assert cells[..., 3:].abs().sum() == 0 and cells[..., 0, :].abs().sum() == 0 and cells[..., 7, :].abs().sum() == 0
    assert masked["saliency_native_2"][..., 1:].abs().sum() == 0  # 64-px cells: column 1 is outside
    assert cells[..., 1:7, :3].gt(0).all()
    torch.testing.assert_close(cells[..., 1:7, :3], free["saliency_global"][..., 1:7, :3])
    assert (masked["saliency"] * (1 - breast)).abs().max() < 1e-6  # S_c is 0 off the breast
    rows, cols = masked["patch_locations"][..., 0], masked["patch_locations"][..., 1]
    assert (cols < 48).all() and (rows + 32 > 16).all() and (rows < 112).all()  # patches overlap the breast
