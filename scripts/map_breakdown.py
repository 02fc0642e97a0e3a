"""Where a model's Dice comes from: per test image and class, the soft Dice of S_g, S_l and S_c, how much of the
lesion the selected patch covers, and S_l inside the lesion against the rest of the patch.

The evaluation report (``configs/evaluate.json``) gives the means; this breaks them down by whether the one
evaluation patch (M = 1) holds the lesion, the first thing to look at when S_c stays low (paper, appendix A).
Run from the repository root, e.g. on the demo's run::

    python scripts/map_breakdown.py --dataset_dir outputs/synthetic --ckpt models/model.pt \
        --presets configs/presets/demo.json configs/presets/demo_training.json --out /tmp/breakdown.json

Checkpoints of an earlier stage load too (``model_local.pt``: the attention and fusion parameters it lacks do not
change the maps). ``--set key=value`` overrides a config entry (value parsed as JSON), e.g.
``--set network_def#local_percent_t=0.1``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.checkpoint import list_keys, load_original_checkpoint, require_checkpoint  # noqa: E402
from glam_bundle.constants import CLASS_NAMES  # noqa: E402
from glam_bundle.metrics.localisation import compute_soft_dice, lesion_present, resize_to_mask  # noqa: E402
from glam_bundle.networks.utils import load_partial_state_dict  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
MAPS = {"S_g": "saliency_global", "S_l": "saliency_local", "S_c": "saliency"}
HIT = 0.5  # a patch "holds" the lesion when it covers more than half of the lesion's pixels


def case_rows(out: dict, batch: dict, crop_size: tuple[int, int]) -> list[dict]:
    """One row per class with a lesion mask in this (batch of one) case; the Dice is the report's
    (``compute_soft_dice`` on the maps resized to the mask as ``SoftDiceMetric`` does)."""
    masks = batch["mask"].float()  # (1, C, H, W)
    maps = {label: resize_to_mask(out[key], masks.shape[-2:]) for label, key in MAPS.items()}
    dice = {label: compute_soft_dice(saliency, masks)[0] for label, saliency in maps.items()}
    present = lesion_present(masks)[0]
    top, left = (int(v) for v in out["patch_locations"][0, 0])
    patch = torch.zeros_like(masks[0, 0])
    patch[top : top + crop_size[0], left : left + crop_size[1]] = 1
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        if not present[c]:
            continue
        mask, local = masks[0, c], maps["S_l"][0, c]
        background = patch * (1 - mask)
        rows.append({
            "image": str(batch["image"].meta["filename_or_obj"][0]),
            "class": name,
            **{label: float(dice[label][c]) for label in MAPS},
            "patch_covers": float((mask * patch).sum() / mask.sum()),
            "lesion_pixels": int(mask.sum()),
            "both_classes": bool(present.all()),
            "S_l_in_lesion": float((local * mask).sum() / mask.sum()),
            "S_l_patch_background": float((local * background).sum() / background.sum().clamp(min=1)),
        })
    return rows


def summary(rows: list[dict]) -> dict:
    """Per class: means over all images, over those whose patch holds the lesion, and over the others."""
    def mean(rs, key):
        return float(np.mean([r[key] for r in rs])) if rs else None

    result = {}
    for name in CLASS_NAMES:
        rs = [r for r in rows if r["class"] == name]
        hits = [r for r in rs if r["patch_covers"] > HIT]
        misses = [r for r in rs if r["patch_covers"] <= HIT]
        result[name] = {
            "images": len(rs),
            **{label: mean(rs, label) for label in MAPS},
            "patch_holds_lesion": len(hits),
            "both_classes": sum(r["both_classes"] for r in rs),
            "patch_misses_in_both_class_images": sum(r["both_classes"] for r in misses),
            "hits": {key: mean(hits, key) for key in (*MAPS, "S_l_in_lesion", "S_l_patch_background")},
            "misses": {key: mean(misses, key) for key in MAPS},
        }
    return result


def main(argv: list[str] | None = None) -> dict:
    from monai.bundle import ConfigParser

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True, help="folder with datalist.json (scripts/make_phantoms.py)")
    parser.add_argument("--ckpt", required=True, help="GLAM checkpoint (any stage)")
    parser.add_argument("--presets", nargs="*", default=[], help="config presets merged after the base configs")
    parser.add_argument("--split", default="test", help="datalist split to score (tune on 'validation', report 'test')")
    parser.add_argument("--cache_dir", default=None, help="preprocessing cache (default: none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (JSON value)")
    parser.add_argument("--out", default=None, help="JSON file for the rows and the summary")
    args = parser.parse_args(argv)

    config = ConfigParser()
    config.read_config([str(REPO_ROOT / "configs" / f) for f in ("train_global.json", "evaluate.json")] + args.presets)
    config.update({"bundle_root": str(REPO_ROOT), "dataset_dir": args.dataset_dir, "cache": "none"})
    if args.cache_dir:
        config.update({"cache": "disk", "cache_dir": args.cache_dir})
    config["validate#dataset#dataset#data"] = f"$glam_bundle.data.datalist.load_datalist(@datalist, {args.split!r})"
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError as error:
            parser.error(f"--set {item}: the value is not JSON ({error})")
    # on the CPU, where the rows are computed; the bundle's loader names a missing or refused file in one line
    network = config.get_parsed_content("network_def").eval()
    state = load_original_checkpoint(require_checkpoint(args.ckpt, setting="ckpt"))
    try:
        _, initialised = load_partial_state_dict(network, state, ignore_unexpected=True)
    except (KeyError, ValueError) as error:  # wrongly shaped tensors: another network size
        lines = str(error).splitlines()
        parser.error(f"--ckpt {args.ckpt}: {lines[0]} {lines[1].strip() if len(lines) > 1 else ''} "
                     f"({len(lines) - 1} tensors in all); give the presets and --set overrides it was trained with")
    lacking = [key for key in initialised if not key.startswith(("aggregation.", "fusion."))]
    if lacking:  # only the attention and fusion layers, which do not change the maps, may be missing
        parser.error(f"--ckpt {args.ckpt}: lacks map parameters ({list_keys(lacking)})")
    prepare_batch = config.get_parsed_content("validate#evaluator#prepare_batch")
    crop_size = tuple(int(v) for v in config.get_parsed_content("crop_size"))
    rows = []
    with torch.inference_mode():
        for batch in config.get_parsed_content("validate#dataloader"):
            if "image" not in batch:  # every case of the batch failed to load (listed by the evaluation)
                continue
            image, _, _, keywords = prepare_batch(batch, "cpu")
            rows += case_rows(network(image, **keywords), batch, crop_size)
    result = {"checkpoint": args.ckpt, "split": args.split, "overrides": args.set, "summary": summary(rows),
              "rows": rows}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        with atomic_output(args.out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
