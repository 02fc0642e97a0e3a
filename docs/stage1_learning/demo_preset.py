"""Stage-1 (global module) demo preset on synthetic phantoms, in a plain PyTorch loop.

Needs the bundle at 69aaa4e + /tmp/learn/patch_{transforms,global_network,phantom}.diff:
    PYTHONPATH=/tmp/learn/patched/full python demo_preset.py '{"seed": 0}'
Options (JSON): seed, epochs, aug (crop noise in pixels of the 368x240 frame, 0 = none), mask (mask S to the breast),
centre (centre-aligned S1/S2 upsampling in training), centre_eval (same, for evaluation; default = centre), gammas, t, lam, lr, bs, n_train, out.
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

from glam_bundle.data.datalist import load_datalist  # noqa: E402
from glam_bundle.data.phantom import generate_dataset  # noqa: E402
from glam_bundle.metrics import compute_soft_dice, resize_to_mask  # noqa: E402
from glam_bundle.networks import GlobalNetwork  # noqa: E402
from glam_bundle.transforms import default_preprocessing, make_cached_dataset  # noqa: E402

cfg = dict(seed=0, epochs=12, aug=0, mask=True, centre=True, gammas=[0.4, 0.0, 0.6], t=0.05, lam=3e-3, lr=3e-4,
           bs=8, n_train=512, n_val=80, n_test=80, out="/tmp/learn/demo")
cfg.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
print(json.dumps(cfg), flush=True)
SIZE = (368, 240)
PREVALENCE = {"benign": 0.3, "malignant": 0.3}
# Lesions 2x (benign) / 4x (malignant kinds) their realistic fraction of the image height, contrast x1.5,
# calcification masks = the cluster's disk (radiologist-style outline) instead of the specks.
GEN = dict(lesion_scale={"benign_mass": 2.0, "malignant_mass": 4.0, "calcification_cluster": 4.0},
           contrast_scale=1.5, calcification_mask="cluster", max_attempts=20)
ROOT = "/tmp/learn/demo_data"


def make_split(name, n, seed):
    out = f"{ROOT}/{name}"
    if not os.path.exists(f"{out}/datalist.json"):
        t = time.time()
        generate_dataset(out, n_images=n, height=SIZE[0], width=SIZE[1], prevalence=PREVALENCE, seed=seed,
                         fractions={"training": 1.0}, **GEN)
        print(f"generated {name}: {n} phantoms in {time.time() - t:.1f}s", flush=True)
    return load_datalist(f"{out}/datalist.json", "training")


def tensors(ds):
    items = [ds[i] for i in range(len(ds))]
    get = lambda k: torch.stack([torch.as_tensor(d[k]).as_subclass(torch.Tensor) for d in items])  # noqa: E731
    return get("image").float(), get("label").float(), get("mask") > 0.5, get("breast_mask").bool()


t0 = time.time()
plain = default_preprocessing(image_size=SIZE, min_size=0)  # geometry constants scaled to the frame (patch)
train_items = make_split(f"train{cfg['n_train']}", cfg["n_train"], 0)
val = tensors(make_cached_dataset(make_split("val", cfg["n_val"], 1000), plain, f"{ROOT}/cache"))
test = tensors(make_cached_dataset(make_split("test", cfg["n_test"], 2000), plain, f"{ROOT}/cache"))
if cfg["aug"]:
    train_ds = make_cached_dataset(train_items, default_preprocessing(
        image_size=SIZE, min_size=0, augment=True, max_crop_noise=(cfg["aug"], cfg["aug"]),
        max_crop_size_noise=cfg["aug"]), f"{ROOT}/cache")
else:
    fixed = tensors(make_cached_dataset(train_items, plain, f"{ROOT}/cache"))
print(f"data ready in {time.time() - t0:.1f}s", flush=True)


def cells(breast, size):
    """(N,1,H,W) breast mask -> (N,1,h,w) 1 where a cell of the map holds breast."""
    return (F.interpolate(breast.float(), size=tuple(size), mode="area") > 0).float()


def forward(net, x, breast):
    """Saliency scales on the h0 grid (masked to the breast), native maps for the l1 term, pooled predictions."""
    h0, h1, h2 = net.backbone(x)
    scales = net.heads((h0, h1, h2))  # (N, 3, 2, h, w)
    native = [torch.sigmoid(conv(h)) for conv, h in zip((net.heads.conv0, net.heads.conv1, net.heads.conv2), (h0, h1, h2))]
    if cfg["mask"]:
        scales = scales * cells(breast, scales.shape[-2:]).unsqueeze(1)
        native = [s * cells(breast, s.shape[-2:]) for s in native]
    y_scales = net.pool(scales.flatten(1, 2)).view(scales.shape[:3])
    return scales, native, y_scales


def loss_fn(net, x, y, breast):
    # L_g = sum_n BCE(y, y_n) + lam * sum_ij |S_n(i, j)|, S_n at its own resolution (the fixed loss).
    scales, native, y_scales = forward(net, x, breast)
    y_scales = y_scales.clamp(1e-7, 1 - 1e-7)
    bce = F.binary_cross_entropy(y_scales, y.unsqueeze(1).expand_as(y_scales), reduction="none").mean(dim=(0, 2)).sum()
    return bce + cfg["lam"] * sum(s.sum(dim=(1, 2, 3)).mean() for s in native)


@torch.no_grad()
def evaluate(net, data):
    net.eval()
    net.heads.centre_aligned = cfg.get("centre_eval", cfg["centre"])  # S1/S2 upsampling used for S_g at evaluation
    X, Y, M, B = data
    S, yg = [], []
    for i in range(0, len(X), 8):
        scales, _, y_scales = forward(net, X[i:i + 8], B[i:i + 8])
        S.append((scales * net.gammas).sum(1))
        yg.append(y_scales.mean(1))
    S, yg = torch.cat(S), torch.cat(yg)
    Sf = resize_to_mask(S, SIZE, "bilinear") * (B.float() if cfg["mask"] else 1.0)
    dice = np.nanmean(compute_soft_dice(Sf, M).numpy(), axis=0)
    from sklearn.metrics import roc_auc_score
    aucs = [roc_auc_score(Y[:, c].numpy(), yg[:, c].numpy()) for c in range(2)]
    net.train()
    net.heads.centre_aligned = cfg["centre"]
    return [round(float(d), 3) for d in dice], [round(float(a), 3) for a in aucs], S


torch.manual_seed(cfg["seed"])
net = GlobalNetwork(percent_t=cfg["t"], gammas=cfg["gammas"], centre_aligned=cfg["centre"])
untrained_test = evaluate(net, test)[:2]
print("untrained: test dice", untrained_test[0], "auc", untrained_test[1], flush=True)
opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
gen = torch.Generator().manual_seed(cfg["seed"])
best, best_state, t_train = -1.0, None, time.time()
for epoch in range(1, cfg["epochs"] + 1):
    if cfg["aug"]:
        train_ds.transform.set_random_state(seed=cfg["seed"] * 1000 + epoch)
        X, Y, _, B = tensors(train_ds)
    else:
        X, Y, _, B = fixed
    order = torch.randperm(len(X), generator=gen)
    for i in range(0, len(order) - 1, cfg["bs"]):
        j = order[i:i + cfg["bs"]]
        loss = loss_fn(net, X[j], Y[j], B[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if epoch % 2 == 0 or epoch == cfg["epochs"]:
        dice, aucs, _ = evaluate(net, val)
        if min(dice) > best:  # model selection on validation Dice, as the paper
            best, best_epoch = min(dice), epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        print(f"epoch {epoch} {time.time() - t_train:.0f}s loss {loss.item():.3f} val dice {dice} auc {aucs}", flush=True)
train_time = time.time() - t_train
net.load_state_dict(best_state)
dice, aucs, S = evaluate(net, test)
print("SUMMARY", json.dumps({"cfg": cfg, "best_epoch": best_epoch, "train_s": round(train_time), "test_dice": dice,
                             "test_auc": aucs, "untrained_test_dice": untrained_test[0],
                             "ratio": [round(d / max(u, 1e-6), 1) for d, u in zip(dice, untrained_test[0])]}), flush=True)
os.makedirs(cfg["out"], exist_ok=True)
torch.save(net.state_dict(), f"{cfg['out']}/model_global_seed{cfg['seed']}.pt")

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

X, Y, M, B = test
idx = [i for i in range(len(X)) if Y[i, 0] > 0][:3] + [i for i in range(len(X)) if Y[i, 1] > 0][:3] + \
      [i for i in range(len(X)) if Y[i].sum() == 0][:2]
Sf = resize_to_mask(S, SIZE, "bilinear") * B.float()
fig, axes = plt.subplots(2, len(idx), figsize=(2.1 * len(idx), 6.4))
for k, i in enumerate(idx):
    for c in range(2):
        ax = axes[c, k]
        ax.imshow(X[i, 0], cmap="gray")
        ax.imshow(Sf[i, c], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if M[i, c].any():
            ax.contour(M[i, c].float(), [0.5], colors="w", linewidths=0.8)
        ax.set_title(f"test {i} {'benign' if c == 0 else 'malig.'} S_g", fontsize=7)
        ax.axis("off")
fig.suptitle(f"demo preset seed {cfg['seed']}: test soft Dice benign {dice[0]}, malignant {dice[1]}", fontsize=8)
fig.tight_layout()
fig.savefig(f"{cfg['out']}/overlay_seed{cfg['seed']}_aug{cfg['aug']}.png", dpi=80)
