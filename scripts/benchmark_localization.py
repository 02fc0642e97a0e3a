"""Localisation benchmark: CAM, GMIC and GLAM trained and evaluated the same way on the same phantom split.

Run from the repository root, e.g.::

    python scripts/benchmark_localization.py                 # default preset, 2 CPU cores (see docs/baselines.md)
    python scripts/benchmark_localization.py --quick         # smoke preset (40 phantoms, 2/1/1 epochs), ~2 min
    python scripts/benchmark_localization.py --full          # paper sizes, for a GPU machine

Steps (every training and evaluation is a ``python -m monai.bundle run`` subprocess, the command a user types):

1. phantoms (``glam_bundle.data.phantom.generate_dataset``) into ``<work_dir>/phantoms``, and the size of every
   lesion relative to its breast (lesion pixels / breast pixels, per lesion kind);
2. training: CAM = ``configs/train_global.json`` + ``configs/baselines/cam.json`` (stage 1, the only stage it
   has, with the global stage's epochs: the equal-budget rule), GMIC = ``configs/train.json`` with
   ``configs/baselines/gmic.json`` in ``--presets``, GLAM = ``configs/train.json``; each in ``<work_dir>/<method>``
   (its own ckpt_dir, output_dir and cache_dir), all with the preset's config presets and epochs;
3. evaluation of each on the same test split by ``configs/evaluate.json`` (+ the method's override), read back
   from its ``metrics.json``;
4. per lesion kind (benign mass, malignant mass, calcification cluster): one more pass of the same evaluation
   config in this process, which keeps every test image's soft Dice, image-level PxAP, pixel histograms and
   prediction (the bundle's metric functions, glam_bundle/metrics/localisation.py);
5. ``<report_dir>/benchmark_localization.md``, ``.json`` and ``.png`` (the three methods' S_c maps on the same
   test images).

Lesion size: every lesion covers at most 1 % of its breast (``max_lesion_fraction`` 0.01: a lesion drawn larger
is drawn again smaller), in every preset; the report's lesion-size table measures it on every phantom.

A rerun with the same ``--work_dir`` reuses the phantoms when their settings match and skips finished training
stages (the bundle's resume); delete the folder to start over. Errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.constants import CLASS_NAMES, SPLITS  # noqa: E402
from glam_bundle.data.phantom import LESION_KINDS  # noqa: E402

METHODS = ("cam", "gmic", "glam")
METHOD_LABELS = {"cam": "CAM", "gmic": "GMIC", "glam": "GLAM"}
OVERRIDE_FILES = {"cam": ["configs/baselines/cam.json"], "gmic": ["configs/baselines/gmic.json"], "glam": []}
KIND_LABELS = {"benign_mass": "benign mass", "malignant_mass": "malignant mass",
               "calcification_cluster": "calcification cluster"}
REPORT_NAME = "benchmark_localization"
DEMO_PRESETS = ["configs/presets/demo.json", "configs/presets/demo_training.json"]

# Phantoms with small lesions: at most 1 % of their breast's area each (the rule), in the demo's 368x240
# frame and the paper's 2944x1920 one (--full). In the small frame the lesion scales (benign 1.4, malignant 2.5)
# put most lesions near the 1 % cap (larger draws are redrawn smaller), about 2 of the global module's 16-px
# cells across, and the contrast is doubled so that a lesion that size still stands out of the parenchyma.
SMALL_LESION_PHANTOMS = {"height": 368, "width": 240, "lesion_scale": {"benign": 1.4, "malignant": 2.5},
                         "max_lesion_fraction": 0.01, "contrast_scale": 2.0, "calcification_mask": "cluster",
                         "max_attempts": 20, "fractions": [0.7, 0.1, 0.2],
                         "prevalence": {"benign": 0.3, "malignant": 0.3}}
PRESETS = {
    "default": {
        "description": "CPU preset: the demo's 368x240 frame, 64x64 patches and training settings "
                       "(configs/presets/demo.json + demo_training.json), lesions of at most 1 % of the breast, "
                       "epochs global 16 / local 10 / joint 2",
        "n_images": 732, "phantoms": SMALL_LESION_PHANTOMS, "config_presets": DEMO_PRESETS,
        "epochs": {"global": 16, "local": 10, "joint": 2}, "num_workers": None,
    },
    "quick": {
        "description": "SMOKE TEST ONLY (tests/test_benchmark_localization.py): the default preset's sizes with 40 "
                       "phantoms and epochs 2 / 1 / 1; its numbers say nothing about the methods",
        "n_images": 40, "phantoms": SMALL_LESION_PHANTOMS, "config_presets": DEMO_PRESETS,
        "epochs": {"global": 2, "local": 1, "joint": 1}, "num_workers": 0,
    },
    "full": {
        "description": "paper sizes for a GPU machine: 2944x1920 frame, 512x512 patches, the configs' defaults "
                       "(no preset), the paper's epochs 50 / 20 / 5; realistic lesion sizes and contrast "
                       "(lesion_scale 1, contrast 1, at most 1 % of the breast), calcification clusters outlined as "
                       "a disk",
        "n_images": 732,
        "phantoms": {**SMALL_LESION_PHANTOMS, "height": 2944, "width": 1920, "lesion_scale": 1.0,
                     "contrast_scale": 1.0},
        "config_presets": [], "epochs": {"global": 50, "local": 20, "joint": 5}, "num_workers": None,
    },
}
TRAINING_SEED = 123  # the configs' "seed" (not overridden)


class BenchmarkError(Exception):
    """A one-line error for the command line."""


# ----------------------------------------------------------------------------------------------------- commands


def _list_arg(paths: list[str]) -> str:
    return "[" + ",".join(repr(p) for p in paths) + "]"


def method_commands(method: str, settings: dict, dirs: dict[str, Path], dataset_dir: Path) -> dict[str, list[str]]:
    """The training and evaluation commands of a method, as argument lists (run in the repository root)."""
    presets, overrides = settings["config_presets"], list(OVERRIDE_FILES[method])
    epochs, extra = settings["epochs"], settings_overrides(settings)
    paths = ["--dataset_dir", str(dataset_dir), "--ckpt_dir", str(dirs["models"]), "--cache_dir", str(dirs["cache"])]
    run = [sys.executable, "-m", "monai.bundle", "run"]
    if method == "cam":
        train = run + ["--config_file", _list_arg(["configs/train_global.json", *presets, *overrides]), *paths,
                       "--output_dir", str(dirs["root"] / "train_global"), "--max_epochs", str(epochs["global"])]
        for key, value in extra.items():
            train += [f"--{key}", str(value)]
    else:
        train = run + ["--config_file", "configs/train.json", "--presets", _list_arg([*presets, *overrides]), *paths,
                       "--output_dir", str(dirs["root"]), "--max_epochs", repr(dict(epochs))]
        if extra:
            train += ["--overrides", repr(extra)]
    evaluate = run + ["--config_file",
                      _list_arg(["configs/train_global.json", "configs/evaluate.json", *presets, *overrides]), *paths,
                      "--output_dir", str(dirs["root"] / "evaluate"),
                      "--validate#report#title", f"{METHOD_LABELS[method]} evaluation"]
    if "num_workers" in extra:
        evaluate += ["--num_workers", str(extra["num_workers"])]
    return {"train": train, "evaluate": evaluate}


def settings_overrides(settings: dict) -> dict:
    """Config overrides for every stage: ``num_workers`` when set."""
    return {} if settings["num_workers"] is None else {"num_workers": settings["num_workers"]}


def _quote(arg: str) -> str:
    """Shell quoting that keeps Python literals readable: "['a','b']" rather than '['"'"'a'"'"',...'."""
    if "'" in arg and not any(ch in arg for ch in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def shell_text(args: list[str]) -> str:
    """A command as one would type it: ``python`` for the interpreter, paths as given."""
    shown = ["python" if i == 0 else a for i, a in enumerate(args)]
    return " ".join(_quote(a) for a in shown)


def run_logged(args: list[str], log: Path, what: str) -> float:
    """Run a command in the repository root with its output in ``log``; returns its wall time in seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + shell_text(args) + "\n")
        handle.flush()
        code = subprocess.call(args, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - start
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise BenchmarkError(f"{what} failed (exit {code}, log {log}): {tail[0][:300]}")
    return elapsed


# ----------------------------------------------------------------------------------------------------- phantoms


def make_phantoms(out_dir: Path, n_images: int, seed: int, phantoms: dict) -> Path:
    """The phantom split (reused when ``out_dir`` holds one made with the same settings); returns the datalist."""
    from glam_bundle.data.phantom import generate_dataset

    wanted = {"n_images": n_images, "seed": seed, **phantoms}
    record, datalist = out_dir / "settings.json", out_dir / "datalist.json"
    if record.is_file() and datalist.is_file():
        try:
            if json.loads(record.read_text(encoding="utf-8")) == wanted:
                return datalist
        except json.JSONDecodeError:
            pass
    generate_dataset(
        out_dir, n_images=n_images, height=phantoms["height"], width=phantoms["width"],
        prevalence=phantoms["prevalence"], seed=seed, fractions=dict(zip(SPLITS, phantoms["fractions"])),
        lesion_scale=phantoms["lesion_scale"], contrast_scale=phantoms["contrast_scale"],
        calcification_mask=phantoms["calcification_mask"], max_attempts=phantoms["max_attempts"],
        max_lesion_fraction=phantoms["max_lesion_fraction"],
    )
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")
    return datalist


def item_kinds(item: dict) -> list[str]:
    """Lesion kinds of a datalist item (``"lesion_kinds"``, written by generate_dataset)."""
    kinds = item.get("lesion_kinds")
    if not isinstance(kinds, str):
        raise BenchmarkError(f"{item.get('image')}: the datalist records no lesion_kinds (regenerate the phantoms)")
    return kinds.split()


def lesion_sizes(datalist: Path) -> dict[str, dict]:
    """Per lesion kind: lesion pixels / breast pixels (image > 0) over every phantom of every split."""
    from PIL import Image

    from glam_bundle.data.datalist import load_datalist

    ratios: dict[str, list[float]] = {kind: [] for kind in LESION_KINDS}
    for item in load_datalist(datalist):
        kinds = item_kinds(item)
        if not kinds:
            continue
        breast = int((np.asarray(Image.open(item["image"])) > 0).sum())
        for kind in kinds:  # at most one lesion per class in a phantom view, so the class mask is this lesion
            mask = np.asarray(Image.open(item[f"mask_{LESION_KINDS[kind]}"])) > 0
            ratios[kind].append(float(mask.sum()) / max(breast, 1))
    summary = {}
    for kind, values in ratios.items():
        v = np.asarray(values)
        summary[kind] = {
            "lesions": int(v.size),
            "median_fraction_of_breast": float(np.median(v)) if v.size else None,
            "min_fraction_of_breast": float(v.min()) if v.size else None,
            "max_fraction_of_breast": float(v.max()) if v.size else None,
            "share_at_most_1_percent": float((v <= 0.01).mean()) if v.size else None,
        }
    return summary


# ----------------------------------------------------------------------------------------- per-image evaluation


def stage2_patch_recall(cache_dir: Path) -> dict | None:
    """Patch recall of a method's stage 2 on its training images (appendix A), from the summary in its patch cache's
    ``index.json`` (glam_bundle.handlers.patch_selection); None for a method without patch selection (CAM)."""
    for index in sorted(cache_dir.glob("*/index.json")):
        try:
            record = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise BenchmarkError(f"cannot read the patch cache index {index} ({error})") from error
        summary = record.get("summary", {})
        if "recall" in summary:
            keys = ("lesions", "lesions_hit", "recall", "recall_at_1", "recall_at_3")
            return {"index": str(index), "num_patches": record.get("parameters", {}).get("num_patches"),
                    **{k: summary.get(k) for k in keys}}
    return None


def per_image_pass(
    config_files: list[str], overrides: dict, figure_names: set[str], kinds_of: dict[str, list[str]]
) -> dict:
    """Run the evaluation config in this process and keep per-image values.

    Returns {"images": {name: {"dice": [b, m], "image_pxap": [b, m], "y": [b, m]}}, "histograms": {kind: (2, bins)
    pixel-score histograms (negative, positive) of the kind's class over the images with that kind},
    "figure": {name: {"image": (H, W), "mask": (2, H, W), "saliency": (2, H, W)}}}; NaN where a class has no
    lesion. ``kinds_of``: image file name -> its lesion kinds.
    """
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    from glam_bundle.visualize import display_step
    from glam_bundle.metrics.localisation import (
        ScoreBinning, compute_image_pxap, compute_pixel_histograms, compute_soft_dice, resize_to_mask,
    )

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / f) for f in config_files])
    parser.update(overrides)
    binning = ScoreBinning()
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("validate#evaluator")
    result: dict = {"images": {}, "histograms": {}, "figure": {}}

    def collect(engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        if not isinstance(output, dict) or "pred" not in output or "mask" not in output:
            return  # a batch of failed cases
        mask = torch.as_tensor(output["mask"]).detach().float().cpu()
        saliency = resize_to_mask(torch.as_tensor(output["pred"]["saliency"]).detach().float().cpu(), mask.shape[-2:])
        truth = mask > 0.5
        dice, pxap = compute_soft_dice(saliency, truth), compute_image_pxap(saliency, truth)
        y = torch.as_tensor(output["pred"]["y_global"]).detach().float().cpu()
        names = batch["image"].meta["filename_or_obj"]
        names = [names] if isinstance(names, str) else list(names)
        for i, name in enumerate(names):
            key = Path(str(name)).name
            result["images"][key] = {"dice": dice[i].tolist(), "image_pxap": pxap[i].tolist(), "y": y[i].tolist()}
            kinds = kinds_of.get(key, [])
            if kinds:  # summed per kind as they come: one image's histograms are 2 x 2 x 655361 counts
                histograms = compute_pixel_histograms(saliency[i : i + 1], truth[i : i + 1], binning).numpy()
                for kind in kinds:
                    c = CLASS_NAMES.index(LESION_KINDS[kind])
                    result["histograms"][kind] = result["histograms"].get(kind, 0) + histograms[c]
            if key in figure_names:  # every step-th pixel, as the inference figure shows a 2944-row frame
                step = display_step(int(mask.shape[-2]))
                result["figure"][key] = {
                    "image": torch.as_tensor(batch["image"][i]).detach().float().cpu().numpy()[0, ::step, ::step],
                    "mask": truth[i].numpy()[:, ::step, ::step], "saliency": saliency[i].numpy()[:, ::step, ::step],
                }

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
    logging.disable(logging.INFO)  # the evaluation's metric log was printed by the evaluate command already
    try:
        evaluator.run()
    finally:
        logging.disable(logging.NOTSET)
    return result


def _auc(positive: list[float], negative: list[float]) -> float | None:
    """ROC AUC (Mann-Whitney, ties counted half); None without both classes."""
    if not positive or not negative:
        return None
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def per_kind_figures(per_image: dict, histograms: dict, items: dict[str, dict]) -> dict[str, dict]:
    """Soft Dice and image-level PxAP (mean, std, n), dataset-level PxAP and AUC per lesion kind.

    A kind's images are the test images with a lesion of that kind; its maps and masks are those of the kind's
    class. AUC: ŷ_g of the kind's class on the images with that kind against the images without a lesion of the
    class.
    """
    from glam_bundle.metrics.localisation import average_precision_from_histograms

    figures = {}
    for kind, cls in LESION_KINDS.items():
        c = CLASS_NAMES.index(cls)
        names = [n for n in per_image if kind in item_kinds(items[n])]
        dice = [per_image[n]["dice"][c] for n in names]
        pxap = [per_image[n]["image_pxap"][c] for n in names]
        hist = histograms.get(kind)
        negatives = [per_image[n]["y"][c] for n in per_image if not int(items[n].get(cls, 0))]
        figures[kind] = {
            "n": len(names),
            "dice": _finite(float(np.mean(dice))) if names else None,
            "dice_std": _finite(float(np.std(dice))) if names else None,
            "image_pxap": _finite(float(np.mean(pxap))) if names else None,
            "image_pxap_std": _finite(float(np.std(pxap))) if names else None,
            "dataset_pxap": None if hist is None else _finite(average_precision_from_histograms(hist[0], hist[1])),
            "auc": _auc([per_image[n]["y"][c] for n in names], negatives),
        }
    return figures


# ------------------------------------------------------------------------------------------------------ reports


def table1_figures(metrics: dict) -> dict:
    """{dice|image_pxap|dataset_pxap|auc: {class: value}} (+ std) of the S_c row of an evaluation's metrics.json."""
    sc = metrics["localisation"]["S_c"]
    return {
        "dice": {c: sc["dice"][c]["mean"] for c in CLASS_NAMES},
        "dice_std": {c: sc["dice"][c]["std"] for c in CLASS_NAMES},
        "image_pxap": {c: sc["image_pxap"][c]["mean"] for c in CLASS_NAMES},
        "image_pxap_std": {c: sc["image_pxap"][c]["std"] for c in CLASS_NAMES},
        "dataset_pxap": {c: sc["dataset_pxap"][c]["ap"] for c in CLASS_NAMES},
        "auc": {c: metrics["classification_auc"][c] for c in CLASS_NAMES},
        "lesion_images": {c: sc["dice"][c]["count"] for c in CLASS_NAMES},
        "num_images": metrics["num_images"],
    }


def _f(value, std=None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def write_markdown(path: Path, report: dict) -> None:
    config, methods = report["config"], report["methods"]
    quick = config["preset"] == "quick"
    lines = [
        "# Localisation benchmark: CAM, GMIC and GLAM on phantoms",
        "",
    ]
    if quick:
        lines += [
            "> **Preset `quick`: a smoke test of the pipeline (40 phantoms, epochs 2 / 1 / 1), not a benchmark "
            "result.**",
            "> Its numbers say nothing about the methods; the benchmark is the default preset (command below).",
            "",
        ]
    lines += [
        f"Made by `{config['command']}` (`scripts/benchmark_localization.py`) on {config['date']}: preset "
        f"`{config['preset']}` ({config['preset_description']}).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| phantoms | {config['n_images']} at {config['phantoms']['height']}x{config['phantoms']['width']}, seed "
        f"{config['seed']}, lesion_scale {config['phantoms']['lesion_scale']}, max_lesion_fraction "
        f"{config['phantoms'].get('max_lesion_fraction')}, contrast_scale "
        f"{config['phantoms']['contrast_scale']}, calcification_mask {config['phantoms']['calcification_mask']}, split "
        f"{' / '.join(str(f) for f in config['phantoms']['fractions'])} (test: {config['test_images']} images) |",
        f"| config presets | {', '.join(config['config_presets']) or 'none (the configs defaults: paper sizes)'} |",
        f"| epochs | global {config['epochs']['global']}, local {config['epochs']['local']}, joint "
        f"{config['epochs']['joint']} (CAM: the global stage's {config['epochs']['global']}) |",
        f"| training seed | {config['training_seed']} (the configs' `seed`) |",
        f"| machine | {config['machine']} |",
        f"| wall time | {config['wall_time_s']:.0f} s in all |",
        "",
        "## Table 1 layout (S_c: the map each method is evaluated by)",
        "",
        "| Method | Dice malignant | Dice benign | Image-level PxAP malignant | Image-level PxAP benign | "
        "Dataset-level PxAP malignant | Dataset-level PxAP benign | AUC malignant | AUC benign |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = ("malignant", "benign")
    for name, m in methods.items():
        cells = [_f(m["dice"][c], m["dice_std"][c]) for c in order]
        cells += [_f(m["image_pxap"][c], m["image_pxap_std"][c]) for c in order]
        cells += [_f(m["dataset_pxap"][c]) for c in order] + [_f(m["auc"][c]) for c in order]
        lines.append(f"| {METHOD_LABELS[name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± population std over the test images with a lesion of the class (from each method's "
        "`evaluate/metrics.json`, written by `configs/evaluate.json`); AUC of ŷ_g. CAM's map is its class "
        "activation map, GMIC's is S_g, GLAM's S_c = ½ S_g + ½ S_l (docs/baselines.md).",
        "",
        "## Per lesion kind",
        "",
        "| Method | lesion kind | images | Dice | Image-level PxAP | Dataset-level PxAP | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        for kind, k in m["per_kind"].items():
            lines.append(
                f"| {METHOD_LABELS[name]} | {KIND_LABELS[kind]} | {k['n']} | {_f(k['dice'], k['dice_std'])} | "
                f"{_f(k['image_pxap'], k['image_pxap_std'])} | {_f(k['dataset_pxap'])} | {_f(k['auc'])} |"
            )
    lines += [
        "",
        "From a second pass of the same evaluation config in the script, keeping each image's values (the bundle's "
        "metric functions): a kind's images are the test images with a lesion of that kind, scored on its class's "
        "map and mask; AUC is ŷ_g of that class on them against the images without a lesion of the class. "
        "Calcification clusters are outlined as a disk here; on masks of the specks alone a map of 64-px cells "
        "(CAM's and GMIC's maps) could not exceed a soft Dice of about 0.27, so the pooled malignant figure "
        "alone would favour GLAM's finer maps by construction.",
        "",
        "## Patch selection (stage 2, training images)",
        "",
        "| Method | patches per image | lesions | recall benign | recall malignant | first patch benign | first patch "
        "malignant | first 3 malignant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        r = m.get("patch_recall")
        if r is None:
            lines.append(f"| {METHOD_LABELS[name]} | none (no local module) | | | | | | |")
            continue
        lines.append(
            f"| {METHOD_LABELS[name]} | {r['num_patches']} | {r['lesions'].get('overall')} | "
            f"{_f(r['recall'].get('benign'))} | {_f(r['recall'].get('malignant'))} | "
            f"{_f(r['recall_at_1'].get('benign'))} | {_f(r['recall_at_1'].get('malignant'))} | "
            f"{_f(r['recall_at_3'].get('malignant'))} |"
        )
    lines += [
        "",
        "Share of the training images' lesions hit by at least one of the patches that stage 2 selects on the trained "
        "global module's map (appendix A; from the patch cache's `index.json`): the local module of GMIC and GLAM "
        "learns only from these patches, and evaluation (M = 1) looks at the first one.",
        "",
        "## Lesion size",
        "",
        "| lesion kind | lesions (all splits) | median lesion / breast area | min | max | share <= 1 % |",
        "|---|---|---|---|---|---|",
    ]
    for kind, s in config["lesion_size"].items():
        lines.append(
            f"| {KIND_LABELS[kind]} | {s['lesions']} | {_pct(s['median_fraction_of_breast'])} | "
            f"{_pct(s['min_fraction_of_breast'])} | {_pct(s['max_fraction_of_breast'])} | "
            f"{_pct(s['share_at_most_1_percent'])} |"
        )
    lines += [
        "",
        "Lesion pixels / breast pixels (image > 0) of every phantom. Each lesion is drawn to cover at most "
        f"{_pct(config['phantoms'].get('max_lesion_fraction'))} of its breast (a larger draw is drawn again, "
        "smaller).",
        "",
        "## Budget and wall time",
        "",
        "Equal budget: every method gets the same data, the same config presets (learning rate, ℓ1 weight, t, breast "
        "mask: no method-specific search) and the same epochs per stage; CAM has only the global stage and trains "
        "it for the global stage's epochs.",
        "",
        "| Method | training | evaluation | per-image pass | training command |",
        "|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        t = m["wall_time_s"]
        lines.append(f"| {METHOD_LABELS[name]} | {t['train']:.0f} s | {t['evaluate']:.0f} s | {t['per_image']:.0f} s "
                     f"| `{m['commands']['train']}` |")
    lines += [
        "",
        "## Presets",
        "",
        "| preset | flag | what |",
        "|---|---|---|",
    ]
    for name, flag in (("default", "(none)"), ("quick", "`--quick`"), ("full", "`--full`")):
        lines.append(f"| {name} | {flag} | {PRESETS[name]['description']} |")
    lines += [
        "",
        "The benchmark itself is the default preset on 2 CPU cores: `python scripts/benchmark_localization.py` "
        "(phantoms, checkpoints, logs and caches in `outputs/benchmark_localization`, or `--work_dir`); `--full` "
        "is for a GPU machine. Every training and evaluation command is in the JSON file (`methods.*.commands`) "
        "and each run's log in `<work_dir>/<method>/train.log` and `evaluate.log`.",
        "",
        f"![S_c maps of the three methods on the same test images]({config['figure']})",
        "",
        f"`{config['figure']}`: the same test images (one per lesion kind) with their lesion outlined, and each "
        "method's map of the lesion's class on the fixed 0-1 scale.",
        "",
    ]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")


def write_figure(path: Path, figure_data: dict[str, dict], items: dict[str, dict], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glam_bundle import figure_style as fs
    from glam_bundle.visualize import _alpha_ramp, save_figure_png

    names = [n for n in names if all(n in figure_data[m] for m in figure_data)]
    if not names:
        return
    columns = ["image", *figure_data]
    fig, axes = plt.subplots(len(names), len(columns), figsize=(2.0 * len(columns), 2.9 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        kinds = item_kinds(items[name])
        c = CLASS_NAMES.index(LESION_KINDS[kinds[-1]]) if kinds else 1
        first = figure_data[next(iter(figure_data))][name]
        for col, column in enumerate(columns):
            ax = axes[row][col]
            ax.imshow(first["image"], cmap=fs.IMAGE_CMAP)
            if column != "image":
                # the inference figure's overlay: transparent at 0, the class colour at 1 (fixed 0-1 scale)
                ax.imshow(figure_data[column][name]["saliency"][c], cmap=_alpha_ramp(fs.CLASS_COLOUR_MAPS[c]),
                          vmin=fs.SALIENCY_RANGE[0], vmax=fs.SALIENCY_RANGE[1], interpolation="nearest")
            if first["mask"][c].any():
                ax.contour(first["mask"][c], levels=[0.5], colors=[fs.CLASS_COLOURS[c]], linewidths=0.8)
            title = (", ".join(KIND_LABELS[k] for k in kinds) or "no lesion") if column == "image" else \
                f"{METHOD_LABELS[column]} ({CLASS_NAMES[c]})"
            ax.set_title(title, fontsize=fs.PANEL_TITLE_SIZE,
                         color=fs.CLASS_COLOURS[c] if column != "image" else "black")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("S_c of CAM, GMIC and GLAM on the same test phantoms", fontsize=fs.TITLE_SIZE)
    fig.tight_layout()
    save_figure_png(fig, path)
    plt.close(fig)


def pick_figure_images(items: dict[str, dict], count: int = 3) -> list[str]:
    """One test image per lesion kind (single-lesion images first), in datalist order."""
    chosen = []
    for kind in LESION_KINDS:
        candidates = [n for n, item in items.items() if kind in item_kinds(item)]
        candidates.sort(key=lambda n: len(item_kinds(items[n])))
        if candidates:
            chosen.append(candidates[0])
    return chosen[:count] or list(items)[:count]


def check_work_dir(work_dir: Path, settings: dict, seed: int) -> None:
    """Record the run's settings in ``work_dir``; refuse a folder that holds a run with other settings (its
    finished or resumable training stages would be taken up on the new data)."""
    record = work_dir / "benchmark_settings.json"
    wanted = json.loads(json.dumps({**settings, "seed": seed}))
    if record.is_file():
        try:
            found = json.loads(record.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            found = None
        if found != wanted:
            raise BenchmarkError(f"--work_dir {work_dir} holds a run with other settings (its checkpoints would be "
                                 "resumed): delete it or pass another --work_dir")
        return
    if work_dir.is_dir() and any(work_dir.iterdir()):
        raise BenchmarkError(f"--work_dir {work_dir} is not empty and holds no benchmark run: pass an empty or new "
                             "folder")
    work_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")


def machine_text() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores (OMP_NUM_THREADS {threads}), "
            f"{device}, Python {platform.python_version()}, torch {torch.__version__}")


# --------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke preset: 40 phantoms, epochs 2/1/1 (tests)")
    size.add_argument("--full", action="store_true", help="paper sizes (2944x1920, 512 patches, epochs 50/20/5; GPU)")
    parser.add_argument("--n_images", type=int, default=None, help="phantoms (default: the preset's, 732)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (training uses the configs' seed 123)")
    parser.add_argument("--epochs", type=int, nargs=3, metavar=("GLOBAL", "LOCAL", "JOINT"),
                        help="epochs per stage instead of the preset's (CAM gets GLOBAL)")
    parser.add_argument("--num_workers", type=int, default=None, help="data loader workers (default: the configs')")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "outputs" / REPORT_NAME,
                        help="phantoms, checkpoints, logs and caches (default outputs/benchmark_localization)")
    parser.add_argument("--report_dir", type=Path, default=REPO_ROOT / "docs",
                        help="where benchmark_localization.md/.json/.png go (default docs)")
    return parser.parse_args(argv), parser


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_args(argv)
    try:
        return run(args, argv)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    preset = "quick" if args.quick else "full" if args.full else "default"
    settings = dict(PRESETS[preset])
    if args.n_images is not None:
        if args.n_images < 10:
            raise BenchmarkError(f"--n_images must be at least 10, got {args.n_images}")
        settings["n_images"] = args.n_images
    if args.epochs is not None:
        if min(args.epochs) < 1:
            raise BenchmarkError(f"--epochs must be positive, got {' '.join(map(str, args.epochs))}")
        settings["epochs"] = dict(zip(("global", "local", "joint"), args.epochs))
    if args.num_workers is not None:
        if args.num_workers < 0:
            raise BenchmarkError(f"--num_workers must be >= 0, got {args.num_workers}")
        settings["num_workers"] = args.num_workers
    work_dir, report_dir = args.work_dir.absolute(), args.report_dir.absolute()
    if work_dir.exists() and not work_dir.is_dir():
        raise BenchmarkError(f"--work_dir {work_dir} is a file, not a folder")
    if report_dir.exists() and not report_dir.is_dir():
        raise BenchmarkError(f"--report_dir {report_dir} is a file, not a folder")
    check_work_dir(work_dir, settings, args.seed)
    shown_argv = sys.argv[1:] if argv is None else argv
    command = "python scripts/benchmark_localization.py" + "".join(" " + _quote(a) for a in shown_argv)
    start = time.monotonic()

    frame = f"{settings['phantoms']['height']}x{settings['phantoms']['width']}"
    print(f"== 1/4 phantoms: {settings['n_images']} at {frame} "
          f"-> {work_dir / 'phantoms'}", flush=True)
    datalist = make_phantoms(work_dir / "phantoms", settings["n_images"], args.seed, settings["phantoms"])
    from glam_bundle.data.datalist import load_datalist

    test_items = {Path(item["image"]).name: item for item in load_datalist(datalist, "test")}
    sizes = lesion_sizes(datalist)
    for kind, s in sizes.items():
        print(f"   {KIND_LABELS[kind]}: {s['lesions']} lesions, median {_pct(s['median_fraction_of_breast'])} of the "
              f"breast, {_pct(s['share_at_most_1_percent'])} of them <= 1 %", flush=True)
    figure_names = pick_figure_images(test_items)

    methods, figure_data = {}, {}
    for index, method in enumerate(METHODS):
        dirs = {"root": work_dir / method, "models": work_dir / method / "models", "cache": work_dir / method / "cache"}
        commands = method_commands(method, settings, dirs, datalist.parent)
        label = METHOD_LABELS[method]
        print(f"== 2/4 {label}: training ({dirs['root'] / 'train.log'})", flush=True)
        train_s = run_logged(commands["train"], dirs["root"] / "train.log", f"{label} training")
        print(f"   {train_s:.0f} s; evaluation ({dirs['root'] / 'evaluate.log'})", flush=True)
        eval_s = run_logged(commands["evaluate"], dirs["root"] / "evaluate.log", f"{label} evaluation")
        metrics_path = dirs["root"] / "evaluate" / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise BenchmarkError(f"{label}: cannot read {metrics_path} ({error})") from error
        print(f"== 3/4 {label}: per-image values on the test split", flush=True)
        pass_start = time.monotonic()
        config_files = ast.literal_eval(commands["evaluate"][commands["evaluate"].index("--config_file") + 1])
        overrides = {"dataset_dir": str(datalist.parent), "ckpt_dir": str(dirs["models"]),
                     "cache_dir": str(dirs["cache"]), "output_dir": str(dirs["root"] / "evaluate_per_image")}
        if settings["num_workers"] is not None:
            overrides["num_workers"] = settings["num_workers"]
        per_image = per_image_pass(config_files, overrides, set(figure_names),
                                   {name: item_kinds(item) for name, item in test_items.items()})
        missing = sorted(set(per_image["images"]) - set(test_items))
        if missing:
            raise BenchmarkError(f"{label}: evaluated images not in the test split: {', '.join(missing[:3])}")
        figure_data[method] = per_image["figure"]
        methods[method] = {
            **table1_figures(metrics),
            "per_kind": per_kind_figures(per_image["images"], per_image["histograms"], test_items),
            "patch_recall": stage2_patch_recall(dirs["cache"]),
            "wall_time_s": {"train": round(train_s, 1), "evaluate": round(eval_s, 1),
                            "per_image": round(time.monotonic() - pass_start, 1)},
            "commands": {k: shell_text(v) for k, v in commands.items()},
            "metrics_json": str(metrics_path),
        }
        m = methods[method]
        print(f"   Dice malignant {_f(m['dice']['malignant'])}, benign {_f(m['dice']['benign'])}; "
              + ", ".join(f"{KIND_LABELS[k]} {_f(v['dice'])}" for k, v in m["per_kind"].items()), flush=True)

    print(f"== 4/4 report -> {report_dir / REPORT_NAME}.md/.json/.png", flush=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    figure = report_dir / f"{REPORT_NAME}.png"
    write_figure(figure, figure_data, test_items, figure_names)
    report = {
        "config": {
            "command": command, "preset": preset, "preset_description": settings["description"],
            "seed": args.seed, "training_seed": TRAINING_SEED, "n_images": settings["n_images"],
            "test_images": len(test_items), "phantoms": settings["phantoms"],
            "config_presets": settings["config_presets"], "epochs": settings["epochs"],
            "config_overrides": settings_overrides(settings),
            "budget_rule": "same data, config presets and epochs per stage for every method; CAM (one stage) "
                           "trains the global stage's epochs",
            "machine": machine_text(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_time_s": round(time.monotonic() - start, 1), "lesion_size": sizes,
            "figure": figure.name, "figure_images": figure_names,
        },
        "methods": methods,
    }
    with atomic_output(report_dir / f"{REPORT_NAME}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    write_markdown(report_dir / f"{REPORT_NAME}.md", report)
    print(f"done in {report['config']['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
