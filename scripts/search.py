"""Random hyperparameter search of the GLAM paper's appendix F, through the bundle's real training configs.

Each trial draws the learning rate from 10^U[-5.5, -4], the ℓ1 weight λ from 10^U[-5.5, -3.5] and the top-t% of
the stage's pooling from {1, 2, 3, 5, 10, 20}% (seeded: trial i of seed s is always the same draw), trains the stage
with ``monai.bundle.ConfigWorkflow`` in its own folder, and records the best validation Dice and its epoch. The
results table is rewritten atomically after every trial (markdown and JSON), so a long search can be stopped and
read at any time.

    python scripts/search.py --stage global --trials 30 --out outputs/search \
        --dataset_dir outputs/synthetic --presets configs/presets/demo.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from anywhere without installing

from glam_bundle.atomic_io import write_text_atomic  # noqa: E402
from glam_bundle.staged_training import STAGE_CONFIGS  # noqa: E402

LEARNING_RATE_EXPONENTS = (-5.5, -4.0)
SPARSITY_EXPONENTS = (-5.5, -3.5)
TOP_T = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
# The pooling each stage trains: the global module's t in stages 1 and 4, the local module's in stage 3.
POOLING_KEY = {"global": "network_def#global_percent_t", "local": "network_def#local_percent_t",
               "joint": "network_def#global_percent_t"}


def draw_trial(seed: int, index: int, top_t: tuple[float, ...] = TOP_T) -> dict:
    """The hyperparameters of trial ``index`` (a function of (seed, index) and the t set only)."""
    rng = np.random.default_rng([seed, index])
    return {
        "learning_rate": float(10 ** rng.uniform(*LEARNING_RATE_EXPONENTS)),
        "sparsity_weight": float(10 ** rng.uniform(*SPARSITY_EXPONENTS)),
        "percent_t": float(rng.choice(top_t)),
    }


def run_trial(stage: str, params: dict, trial_dir: Path, presets: list[str], overrides: dict) -> dict:
    """Train one stage with ``params``; returns the best validation key metric and its epoch."""
    from monai.bundle import ConfigWorkflow

    files = [str(REPO_ROOT / "configs" / name) for name in STAGE_CONFIGS[stage]] + presets
    override = {
        **overrides,
        "learning_rate": params["learning_rate"],
        "sparsity_weight": params["sparsity_weight"],
        POOLING_KEY[stage]: params["percent_t"],
        "output_dir": str(trial_dir),
        "ckpt_dir": str(trial_dir / "models"),
    }
    workflow = ConfigWorkflow(config_file=files, meta_file=str(REPO_ROOT / "configs" / "metadata.json"),
                              logging_file=False, workflow_type="train", **override)
    start = time.perf_counter()
    workflow.initialize()
    workflow.run()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    result = {"best_dice": float(evaluator.state.best_metric), "best_epoch": int(evaluator.state.best_metric_epoch),
              "seconds": round(time.perf_counter() - start, 1)}
    workflow.finalize()
    return result


def markdown(stage: str, rows: list[dict], seed: int) -> str:
    lines = [
        f"# Random search, stage {stage} (seed {seed})",
        "",
        "Appendix F ranges: lr 10^[-5.5, -4], λ 10^[-5.5, -3.5], t in {1, 2, 3, 5, 10, 20}%. Sorted by validation Dice.",
        "",
        "| trial | lr | λ | t | best val Dice | epoch | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: -r["best_dice"] if math.isfinite(r["best_dice"]) else math.inf):
        lines.append(f"| {row['trial']} | {row['learning_rate']:.2e} | {row['sparsity_weight']:.2e} | "
                     f"{row['percent_t']:.0%} | {row['best_dice']:.4f} | {row['best_epoch']} | {row['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=sorted(STAGE_CONFIGS), default="global")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/search", help="folder of the trials and the results table")
    parser.add_argument("--presets", nargs="*", default=[], help="config files merged after the stage's configs")
    parser.add_argument("--dataset_dir", help="folder of datalist.json (default: the configs')")
    parser.add_argument("--max_epochs", type=int, help="epochs per trial (default: the configs')")
    parser.add_argument("--override", nargs="*", default=[], metavar="ID=JSON",
                        help="more config overrides, e.g. num_workers=0 'image_size=[736, 480]'")
    parser.add_argument("--top_t", nargs="+", type=float, default=list(TOP_T), metavar="T",
                        help="the t values to draw from (default: appendix F's 0.01 ... 0.2; CAM adds 1.0, i.e. GAP)")
    args = parser.parse_args(argv)
    if not all(0 < t <= 1 for t in args.top_t):
        parser.error(f"--top_t: every value must be in (0, 1], got {args.top_t}")

    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    if args.max_epochs:
        overrides["max_epochs"] = args.max_epochs
    out = Path(args.out)
    rows: list[dict] = []
    for index in range(args.trials):
        params = draw_trial(args.seed, index, tuple(args.top_t))
        result = run_trial(args.stage, params, out / f"trial_{index:03d}", args.presets, overrides)
        rows.append({"trial": index, **params, **result})
        print(f"trial {index}: lr {params['learning_rate']:.2e} λ {params['sparsity_weight']:.2e} "
              f"t {params['percent_t']:.0%} -> best val Dice {result['best_dice']:.4f} (epoch {result['best_epoch']})")
        write_text_atomic(json.dumps({"stage": args.stage, "seed": args.seed, "trials": rows}, indent=2) + "\n",
                          out / "search.json")
        write_text_atomic(markdown(args.stage, rows, args.seed), out / "search.md")
    print(f"results: {out / 'search.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
