"""Losses of the staged training (paper section 3.3, appendix B): reductions, float32 under autocast, and one
MONAI SupervisedTrainer step that hands the labels to GLAM."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer

from glam_bundle.inferers import GLAMInferer, PrepareBatchWithLabels
from glam_bundle.losses import GlobalModuleLoss, JointLoss, LocalModuleLoss
from glam_bundle.networks import GLAM, GlobalNetwork

TINY = dict(
    crop_size=(64, 64), num_patches_train=3, global_channels=(4, 8, 8, 8, 8), global_blocks_per_stage=1,
    local_layers=(1, 1, 1, 1), local_channels=(8, 8, 8, 16),
)
LABELS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
F32 = dict(rtol=1e-6, atol=1e-6)  # float32 losses against float64 sums


def tiny_batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(LABELS), 1, 256, 128, generator=torch.Generator().manual_seed(seed))


def bce_by_hand(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = p.float().clamp(1e-7, 1 - 1e-7).double()  # the clamp bound as float32 has it (1 − 1.19e-7)
    return -(y * p.log() + (1 - y) * (1 - p).log()).mean()  # mean over batch and classes


def fake_output(n: int = 4, k: int = 3, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        "y_scales": torch.rand(n, 3, 2, generator=g),
        "saliency_native_0": torch.rand(n, 2, 16, 8, generator=g),
        "saliency_native_1": torch.rand(n, 2, 8, 4, generator=g),
        "saliency_native_2": torch.rand(n, 2, 4, 2, generator=g),
        "y_local": torch.rand(n, 2, generator=g),
        "saliency_patches": torch.rand(n, k, 2, 16, 16, generator=g),
        "y_fusion": torch.rand(n, 2, generator=g),
    }
    out["y_scales"][0, 0, 0] = 1 - 1e-8  # saturated: 1 in float16/bfloat16
    out["y_local"][1, 1] = 0.0
    return {key: value.to(dtype) for key, value in out.items()}


def test_reductions_are_the_documented_ones():
    out, y = fake_output(), LABELS
    lam = 1e-3
    n = len(y)
    # Σ over classes and positions of each native S_n, mean over the batch, Σ over the scales
    l1_global = sum(out[f"saliency_native_{s}"].double().sum() for s in range(3)) / n
    expected_g = sum(bce_by_hand(out["y_scales"][:, s], y) for s in range(3)) + lam * l1_global
    torch.testing.assert_close(GlobalModuleLoss(lam)(out, y).double(), expected_g, **F32)
    l1_local = out["saliency_patches"].double().sum() / n  # Σ patches, classes, positions; mean batch
    expected_l = bce_by_hand(out["y_local"], y) + lam * l1_local
    torch.testing.assert_close(LocalModuleLoss(lam)(out, y).double(), expected_l, **F32)
    expected_t = expected_g + expected_l + bce_by_hand(out["y_fusion"], y)
    torch.testing.assert_close(JointLoss(lam)(out, y).double(), expected_t, **F32)
    # separate λ for L_l
    expected_t2 = expected_g + bce_by_hand(out["y_local"], y) + 0.5 * l1_local + bce_by_hand(out["y_fusion"], y)
    torch.testing.assert_close(JointLoss(lam, local_sparsity_weight=0.5)(out, y).double(), expected_t2, **F32)


def test_global_sparsity_is_taken_at_native_resolution():
    net = GlobalNetwork(channels=(4, 8, 8, 8, 8), blocks_per_stage=1).eval()
    with torch.no_grad():
        out = net(tiny_batch())
    assert [tuple(out[f"saliency_native_{s}"].shape[-2:]) for s in range(3)] == [(16, 8), (8, 4), (4, 2)]
    # the h0-grid copies of S1 and S2 weigh 4× and 16× the paper's term
    scales = out["saliency_scales"].double()
    torch.testing.assert_close(scales[:, 1].sum(), 4 * out["saliency_native_1"].double().sum())
    torch.testing.assert_close(scales[:, 2].sum(), 16 * out["saliency_native_2"].double().sum())
    bce_only = GlobalModuleLoss(0.0)(out, LABELS)
    l1 = sum(out[f"saliency_native_{s}"].sum() for s in range(3)) / len(LABELS)
    torch.testing.assert_close(GlobalModuleLoss(1e-2)(out, LABELS), bce_only + 1e-2 * l1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_the_float32_loss(dtype):
    reference = {k: v.to(dtype).float() for k, v in fake_output().items()}  # same values, float32
    low = {k: v.requires_grad_() for k, v in fake_output(dtype=dtype).items()}
    for loss in (GlobalModuleLoss(), LocalModuleLoss(), JointLoss()):
        value = loss(low, LABELS)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        torch.testing.assert_close(value, loss(reference, LABELS))
        # and close to the loss of the unrounded float32 values
        torch.testing.assert_close(value, loss(fake_output(), LABELS), rtol=2e-2, atol=0)
    JointLoss()(low, LABELS).backward()
    for key, value in low.items():
        assert value.grad is not None and value.grad.dtype == dtype and torch.isfinite(value.grad).all(), key


def test_network_and_loss_under_cpu_autocast():
    x = tiny_batch()
    torch.manual_seed(0)
    model = GLAM(**TINY).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    reference = JointLoss()(model(x, labels=LABELS), LABELS)
    model.load_state_dict(state)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=LABELS)
        losses = [loss(out, LABELS) for loss in (GlobalModuleLoss(), LocalModuleLoss(), JointLoss())]
    assert out["y_global"].dtype == torch.bfloat16  # the network did run in low precision
    for value in losses:
        assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(losses[2], reference, rtol=5e-2, atol=0)
    losses[2].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.local_module.saliency_head.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast needs a GPU")
def test_losses_under_cuda_autocast():
    # F.binary_cross_entropy raises "unsafe to autocast" inside torch.autocast("cuda")
    model = GLAM(**TINY).cuda().train()
    labels = LABELS.cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(tiny_batch().cuda(), labels=labels)
        value = JointLoss()(out, labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()


def test_loss_errors():
    out = fake_output()
    with pytest.raises(ValueError, match="unknown"):
        LocalModuleLoss()(out, torch.full((4, 2), -1.0))
    with pytest.raises(ValueError, match="shape"):
        GlobalModuleLoss()(out, LABELS[:, :1])
    with pytest.raises(KeyError, match="use_fusion"):
        JointLoss()({k: v for k, v in out.items() if k != "y_fusion"}, LABELS)
    with pytest.raises(KeyError, match="saliency_native_1"):
        GlobalModuleLoss()({k: v for k, v in out.items() if k != "saliency_native_1"}, LABELS)
    with pytest.raises(ValueError):
        LocalModuleLoss(sparsity_weight=-1)


def test_supervised_trainer_hands_labels_to_glam():
    """One epoch of local-module training (stage 3) with MONAI's SupervisedTrainer: PrepareBatchWithLabels makes
    the inferer call GLAM(x, labels=...), so negative images get random patches."""
    torch.manual_seed(0)
    model = GLAM(aggregation="concat", use_fusion=False, freeze_global=True, **TINY)
    data = [{"image": image, "label": label} for image, label in zip(tiny_batch(), LABELS)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs.get("labels"))

    model.register_forward_pre_hook(record, with_kwargs=True)
    global_before = {k: v.clone() for k, v in model.global_module.state_dict().items()}
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss_function=LocalModuleLoss(),
        inferer=GLAMInferer(),
        prepare_batch=PrepareBatchWithLabels(),
        decollate=False,
    )
    trainer.run()
    assert len(seen) == 1 and torch.equal(seen[0], LABELS)
    assert math.isfinite(trainer.state.output["loss"].item())
    assert not model.global_module.training  # trainer's network.train() left the frozen module in eval mode
    for key, value in model.global_module.state_dict().items():
        assert torch.equal(value, global_before[key]), key
    # the evaluation path without labels still works
    image, label, args, kwargs = PrepareBatchWithLabels()({"image": tiny_batch()[:1]})
    assert label is None and kwargs == {}


def test_bce_matches_torch_reference():
    p, y = torch.rand(3, 2), torch.randint(0, 2, (3, 2)).float()
    torch.testing.assert_close(
        LocalModuleLoss(0.0)({"y_local": p, "saliency_patches": torch.zeros(3, 1, 2, 2, 2)}, y),
        F.binary_cross_entropy(p, y),
    )
