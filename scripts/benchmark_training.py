"""Training benchmark: step time, images/s and peak memory of each training stage and preset, per precision.

    python scripts/benchmark_training.py --out docs/benchmark_training                    # demo + default, ~15 min
    python scripts/benchmark_training.py --presets demo --out /tmp/bench/training          # demo only, ~1 min
    python scripts/benchmark_training.py --quick --out /tmp/bench/training                 # tiny network, seconds

What is measured is one training step as the stage's trainer runs it: ``GLAMTrainer._iteration`` (MONAI's
``SupervisedTrainer`` iteration: ``prepare_batch``, the inferer's forward, the loss, backward and the optimizer
step) with the network, loss, optimizer, inferer and ``prepare_batch`` parsed by ``monai.bundle.ConfigParser`` from
the stage's configs (``glam_bundle.staged_training.STAGE_CONFIGS``: ``global`` = train_global.json, ``local`` =
train_global.json + train_local.json, ``joint`` = train_global.json + train_joint.json) with the preset's files
merged after them, the stage's ``trainable_modules`` frozen as its ``initialize`` does. Weights are the seed-123
random initialisation (``init_checkpoint`` null): the arithmetic does not depend on them.

Presets:

- ``demo``: configs/presets/demo.json + configs/presets/demo_training.json (368x240, 64x64 patches, the narrow
  local network, batch 8);
- ``default``: the configs as they are (2944x1920, 512x512 patches, ResNet-34 local module); the global stage at
  the config's batch 2, the local and joint stages (K = 6 patches of 512x512 per image, minutes per step on a
  CPU: 75-99 s float32, 38-42 s bfloat16 on 2 cores) at batch 1 with ``--heavy_steps`` (2) measured steps per
  mode and no warm-up step (``--heavy_warmup``, 0: the first round is the process's first steps; the one-off costs
  of a first step, oneDNN primitives and the optimizer's state, are well under 1 % of a step this long), which
  keeps the whole default run (both presets) under 15 minutes on 2 cores;
- ``quick`` (``--quick``): the demo preset at 184x120 with 32x32 patches and a narrow network, one step (a smoke
  test).

Batches: synthetic phantoms (``glam_bundle.data.phantom.generate_dataset`` at the preset's frame) run once through
the stage config's ``train#preprocessing`` (window noise and all), collated to the batch size; the local stage's
patch batches (N, K, 1, P, P) are K crops of those images at seeded random locations
(``glam_bundle.networks.patch_selection.random_patch_locations`` / ``crop_patches``, as stage 2 does for lesion-free
images; the content does not change the arithmetic).

Precision modes (the switches of ``glam_bundle.precision``): ``float32`` (the trainer as configured on a CPU);
``bfloat16``: the stage's inferer wrapped in ``glam_bundle.precision.AutocastInferer`` (``torch.autocast`` of
bfloat16 around the forward; the losses cast to float32 and run with autocast off, as they always do); on a GPU
also ``amp_float16``: MONAI's ``amp=True`` (CUDA float16 autocast with a GradScaler, what the configs use where
CUDA exists). A mode that fails is reported with its error instead of numbers.

Each (preset, stage) runs in a fresh process. The machine is shared and noisy, so the modes alternate within it:
one warm-up step per mode (not for the default preset's local and joint stages, see above), then rounds A B,
B A, ...; a mode's step time is the median over its measured steps
and its ratio to float32 the median over rounds of (its step / float32's step in the same round). images/s =
batch / step time. Peak memory: the resident set size high-water mark (VmHWM of /proc/self/status), reset
(``echo 5 > /proc/self/clear_refs``) before every step and read after it; a mode's figure is the smallest of its
measured steps' peaks (the allocator may keep memory freed by the other mode's step, which can only raise a
peak), leaving out the process's first step (the optimizer's state does not exist before it), next to the RSS before the first step (torch, MONAI, the network and the batches). On a GPU: also
``torch.cuda.max_memory_allocated`` per step. The results go to ``OUT.json`` and ``OUT.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from anywhere without installing
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from glam_bundle.constants import TINY_NETWORK  # noqa: E402
from benchmark_inference import (  # noqa: E402
    current_rss_mib, peak_rss_mib, report_header, timed_log, write_report,
)

CONFIGS = REPO_ROOT / "configs"
STAGES = ("global", "local", "joint")

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "files": ["presets/demo.json", "presets/demo_training.json"],
        "overrides": {},
        "image_size": [368, 240],
        "batch": {"global": None, "local": None, "joint": None},  # None: the config's batch_size
        "heavy": False,
    },
    "default": {
        "files": [],
        "overrides": {},
        "image_size": [2944, 1920],
        "batch": {"global": None, "local": 1, "joint": 1},
        "heavy": True,  # local and joint: batch 1, --heavy_steps measured steps
    },
    "quick": {
        "files": ["presets/demo.json", "presets/demo_training.json"],
        "overrides": {
            "image_size": [184, 120],
            "crop_size": [32, 32],
            "geometry_scale": 0.0625,
            "max_crop_noise": [6, 6],
            "max_crop_size_noise": 6,
            **{f"network_def#{k}": v for k, v in TINY_NETWORK.items()},
            "batch_size": 2,
        },
        "image_size": [184, 120],
        "batch": {"global": None, "local": None, "joint": None},
        "heavy": False,
    },
}


def cpu_modes() -> list[str]:
    return ["float32", "bfloat16"]


def all_modes() -> list[str]:
    return cpu_modes() + (["amp_float16"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------------------------- configs and data


def stage_files(preset: str, stage: str) -> list[str]:
    from glam_bundle.staged_training import STAGE_CONFIGS

    return [str(CONFIGS / f) for f in STAGE_CONFIGS[stage]] + [str(CONFIGS / f) for f in PRESETS[preset]["files"]]


def make_parser(preset: str, stage: str, work: Path):
    """The stage's ConfigParser with the preset merged, every folder inside ``work``, no initial checkpoint."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(stage_files(preset, stage))
    overrides = {
        "bundle_root": str(work),
        "dataset_dir": str(work / f"data_{preset}"),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / f"outputs_{preset}_{stage}"),
        "cache_dir": str(work / "cache"),
        "cache": "none",
        "init_checkpoint": None,
        **PRESETS[preset]["overrides"],
    }
    for key, value in overrides.items():
        parser[key] = value
    return parser


def prepare_data(preset: str, work: Path, log) -> Path:
    """Phantoms at the preset's frame, through the global stage's ``train#preprocessing`` once; saved as one file
    of stacked tensors (image, label, breast_mask when kept) for the child processes."""
    from monai.utils import set_determinism

    from glam_bundle.data.datalist import load_datalist
    from glam_bundle.data.phantom import generate_dataset

    parser = make_parser(preset, "global", work)
    batches = [PRESETS[preset]["batch"][s] or int(parser["batch_size"]) for s in STAGES]
    n_images = max(max(batches), 2)
    height, width = PRESETS[preset]["image_size"]
    start = time.perf_counter()
    datalist = generate_dataset(work / f"data_{preset}", n_images=n_images, height=height, width=width, seed=0,
                                fractions={"training": 1.0, "validation": 0.0, "test": 0.0})
    items = load_datalist(datalist)
    set_determinism(seed=0)
    preprocessing = parser.get_parsed_content("train#preprocessing")
    outs = [preprocessing(item) for item in items]
    data = {"image": torch.stack([torch.as_tensor(o["image"]).float() for o in outs]),
            "label": torch.stack([torch.as_tensor(o["label"]).float() for o in outs])}
    if "breast_mask" in outs[0]:
        data["breast_mask"] = torch.stack([torch.as_tensor(o["breast_mask"]) for o in outs])
    data = {key: value.as_tensor() if hasattr(value, "as_tensor") else value for key, value in data.items()}
    path = work / f"batch_{preset}.pt"
    torch.save(data, path)
    log(f"{preset}: {n_images} phantoms at {height}x{width} generated and preprocessed in "
        f"{time.perf_counter() - start:.1f} s: image {tuple(data['image'].shape)}, labels "
        f"{data['label'].sum(0).tolist()} (benign, malignant), keys {sorted(data)}")
    return path


# ----------------------------------------------------------------------------------------------- child: one stage


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def stage_child(args: argparse.Namespace) -> None:
    """Build the stage from its configs, run the modes alternately, print the timings as JSON."""
    from monai.utils import set_determinism

    from glam_bundle.engines import GLAMTrainer
    from glam_bundle.networks import freeze_all_but
    from glam_bundle.networks.patch_selection import crop_patches, random_patch_locations
    from glam_bundle.precision import AutocastInferer, resolve_autocast

    if args.threads:
        torch.set_num_threads(args.threads)
    preset, stage, work = args.preset, args.stage, Path(args.work)
    parser = make_parser(preset, stage, work)
    batch_size = PRESETS[preset]["batch"][stage] or int(parser["batch_size"])
    device = parser.get_parsed_content("device")
    set_determinism(seed=int(parser["seed"]))
    network_def = parser.get_parsed_content("network_def")
    trainable = freeze_all_but(network_def, parser.get_parsed_content("trainable_modules"))
    network = parser.get_parsed_content("network")
    loss = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    inferer = parser.get_parsed_content("train#inferer")
    prepare_batch = parser.get_parsed_content("train#prepare_batch")

    data = torch.load(args.batch_file, weights_only=True)
    batch = {key: value[:batch_size] for key, value in data.items()}
    if stage == "local":
        crop_size = tuple(parser.get_parsed_content("crop_size"))
        k = int(parser.get_parsed_content("num_patches"))
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        locations = random_patch_locations(batch_size, tuple(batch["image"].shape[-2:]), crop_size, k)
        torch.random.set_rng_state(generator_state)
        batch = {"patches": crop_patches(batch["image"][:, :1], locations, crop_size), "label": batch["label"]}
    trainer = GLAMTrainer(device=device, max_epochs=1, train_data_loader=[batch], network=network,
                          optimizer=optimizer, loss_function=loss, inferer=inferer, prepare_batch=prepare_batch,
                          decollate=False, amp=torch.cuda.is_available())
    inferers = {"float32": inferer, "amp_float16": inferer,
                "bfloat16": AutocastInferer(inferer, resolve_autocast(device, "bfloat16"))}
    modes = [m for m in args.modes if m != "amp_float16" or torch.cuda.is_available()]
    n_params = sum(p.numel() for p in network_def.parameters())
    n_trainable = sum(p.numel() for p in network_def.parameters() if p.requires_grad)
    rss_before = current_rss_mib()
    can_reset = reset_peak()
    cuda = device.type == "cuda"

    def step(mode: str) -> dict[str, float]:
        trainer.inferer = inferers[mode]
        trainer.amp = mode == "amp_float16"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak()
        start = time.perf_counter()
        output = trainer._iteration(trainer, batch)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        value = float(output["loss"].detach())
        del output
        trainer.state.output = None
        record = {"s": seconds, "peak_rss_mib": peak_rss_mib(), "loss": value}
        if cuda:
            record["gpu_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return record

    warmup: dict[str, Any] = {}
    errors: dict[str, str] = {}
    steps: dict[str, list[dict[str, float]]] = {m: [] for m in modes}

    def guarded(mode: str) -> dict[str, float] | None:
        try:
            record = step(mode)
        except Exception as error:  # noqa: BLE001 - reported in the table
            errors[mode] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            optimizer.zero_grad(set_to_none=True)
            return None
        if not torch.isfinite(torch.tensor(record["loss"])):
            errors[mode] = f"loss is {record['loss']}"
        return record

    first = True
    for mode in modes:  # one warm-up step per mode, or (--warmup 0) the first round, measured and marked cold
        record = guarded(mode)
        if record is not None:
            record["first_of_process"] = first
            first = False
            (warmup if args.warmup else steps)[mode] = record if args.warmup else [record]
        print(f"LOG {'warm-up' if args.warmup else 'round 1 (cold)'} {mode}: "
              + (errors.get(mode) or f"{record['s']:.2f} s"), flush=True)
    working = [m for m in modes if m not in errors]
    steps = {m: steps[m] for m in working}
    for round_index in range(0 if args.warmup else 1, args.steps):
        order = working if round_index % 2 == 0 else working[::-1]
        for mode in order:
            steps[mode].append(step(mode))
        print(f"LOG round {round_index + 1}/{args.steps}: "
              + ", ".join(f"{m} {steps[m][-1]['s']:.2f} s" for m in working), flush=True)
    result = {
        "preset": preset, "stage": stage, "batch": batch_size, "device": str(device),
        "configs": [str(Path(f).relative_to(REPO_ROOT)) for f in stage_files(preset, stage)],
        "image_size": list(parser.get_parsed_content("image_size")),
        "crop_size": list(parser.get_parsed_content("crop_size")),
        "num_patches": int(parser.get_parsed_content("num_patches")) if stage == "local" else (
            None if stage == "global" else int(network_def.num_patches_train)),
        "input_shape": list(batch["patches" if stage == "local" else "image"].shape),
        "loss_function": type(loss).__name__, "optimizer": type(optimizer).__name__,
        "inferer": type(inferer).__name__, "prepare_batch": type(prepare_batch).__name__,
        "trainable_modules": sorted({name.split(".")[0] for name in trainable}),
        "parameters": n_params, "trainable_parameters": n_trainable,
        "rss_before_first_step_mib": rss_before, "peak_reset": can_reset, "threads": torch.get_num_threads(),
        "modes": modes, "warmup": warmup, "steps": steps, "errors": errors,
    }
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- parent


def summarise(raw: dict) -> dict[str, Any]:
    """Per mode: median step, images/s, paired ratio to float32, peak memory; or the error."""
    rows: dict[str, Any] = {}
    reference = raw["steps"].get("float32", [])
    for mode in raw["modes"]:
        if mode in raw["errors"]:
            rows[mode] = {"error": raw["errors"][mode]}
            continue
        steps = raw["steps"][mode]
        if not steps:  # --steps 0: the warm-up is all there is
            steps = [raw["warmup"][mode]]
        seconds = [s["s"] for s in steps]
        # the process's first step runs before the optimizer has its state: not a training step's peak
        memory_steps = [s for s in steps if not s.get("first_of_process")] or steps
        row = {
            "step_s": statistics.median(seconds),
            "step_all_s": seconds,
            "warmup_s": raw["warmup"][mode]["s"] if mode in raw["warmup"] else None,
            "images_per_s": raw["batch"] / statistics.median(seconds),
            "peak_rss_mib": min(s["peak_rss_mib"] for s in memory_steps),
            "peak_rss_all_mib": [s["peak_rss_mib"] for s in steps],
            "loss": [s["loss"] for s in steps],
        }
        if reference and len(reference) == len(raw["steps"][mode]) and mode != "float32":
            row["ratio_to_float32"] = statistics.median(s["s"] / r["s"] for s, r in zip(raw["steps"][mode], reference))
        elif mode == "float32":
            row["ratio_to_float32"] = 1.0
        if "gpu_max_allocated_mib" in steps[0]:
            row["gpu_max_allocated_mib"] = max(s["gpu_max_allocated_mib"] for s in steps)
        rows[mode] = row
    return rows


def run_child(argv: list[str], log, timeout: float = 3600) -> dict:
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("LOG "):
            log("  " + line[4:].rstrip())
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.wait(timeout=timeout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"child {argv} failed ({proc.returncode}): {stderr[-3000:]}")
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    lines = [
        "# Training benchmark",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['wall_s'] / 60:.1f} min).",
        "",
        f"Machine: {m['cpu']} ({flags}; torch CPU capability {m['cpu_capability']}), {m['cores_visible']} cores "
        f"visible, {result['settings']['threads']} torch threads, torch {m['torch']}, monai {m.get('monai', '?')}, "
        f"Python {m['python']}" + (f", GPU {m['gpu']}" if "gpu" in m else ", no GPU")
        + f". Load average at start {m['load_average_start'][0]:.1f}, at end {result['load_average_end'][0]:.1f} "
        "(the machine is shared: compare the ratios, measured alternately in one process, not absolute times "
        "from another run).",
        "",
        "One training step = `GLAMTrainer._iteration` (prepare_batch, forward, loss, backward, optimizer step) with "
        "the network, loss, optimizer, inferer and prepare_batch parsed from the stage's configs (random "
        "initialisation). Each (preset, stage) ran in a fresh process: one warm-up step per mode, then "
        f"alternating rounds ({result['settings']['steps']} measured steps per mode; default local and joint: batch "
        f"1, {'one warm-up step per mode and ' if result['settings'].get('heavy_warmup') else 'no warm-up step, '}"
        f"{result['settings']['heavy_steps']} measured steps). Step time: median (of two: their mean); × float32: "
        "median over rounds of the mode's step over float32's step in the same round. Peak RSS: VmHWM reset before "
        "each step, the smallest over the mode's measured steps except the process's first (before the optimizer "
        "state exists); `before` is the process's RSS before the first step (torch, MONAI, network, batches).",
        "",
        "| preset | stage | configs | batch | input | trainable params | mode | step (s) | × float32 | images/s "
        "| peak RSS (MiB) | RSS before (MiB) | loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        configs = " + ".join(Path(c).name for c in run["configs"])
        shape = "x".join(str(s) for s in run["input_shape"])
        head = (f"| {run['preset']} | {run['stage']} | {configs} | {run['batch']} | {shape} | "
                f"{run['trainable_parameters'] / 1e6:.2f} M |")
        for mode, row in run["summary"].items():
            if "error" in row:
                lines.append(f"{head} {mode} | failed: {row['error']} | - | - | - | - | - |")
                continue
            memory = f"{row['peak_rss_mib']:.0f}"
            if "gpu_max_allocated_mib" in row:
                memory += f" (GPU {row['gpu_max_allocated_mib']:.0f})"
            ratio = f"{row['ratio_to_float32']:.2f}" if "ratio_to_float32" in row else "-"
            lines.append(f"{head} {mode} | {row['step_s']:.3g} | {ratio} | {row['images_per_s']:.3g} | {memory} | "
                         f"{run['rss_before_first_step_mib']:.0f} | {statistics.median(row['loss']):.3g} |")
    lines += ["", "Every step's time and peak, the warm-up steps and the losses are in the JSON "
              "(`runs[].raw`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/benchmark_training", help="output path without suffix (.json, .md)")
    parser.add_argument("--presets", nargs="+", default=None, choices=sorted(PRESETS),
                        help="presets to run (default: demo default; --quick: quick)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--modes", nargs="+", default=None, help="precision modes (default: float32 bfloat16 and, "
                        "with a GPU, amp_float16)")
    parser.add_argument("--quick", action="store_true", help="the tiny 'quick' preset, one measured step")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per mode (default 3, quick 1)")
    parser.add_argument("--heavy_steps", type=int, default=2,
                        help="measured steps per mode of the default preset's local and joint stages")
    parser.add_argument("--heavy_warmup", type=int, default=0, choices=(0, 1),
                        help="warm-up step per mode before the default preset's local and joint steps (default 0: "
                        "their first measured round is also the first step, whose one-off costs are < 1 %% of it)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary one, removed after)")
    # internal: child processes
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.modes = args.modes or all_modes()
    if args.child:
        stage_child(args)
        return None
    torch.set_num_threads(args.threads)
    presets = args.presets or (["quick"] if args.quick else ["demo", "default"])
    args.steps = (1 if args.quick else 3) if args.steps is None else args.steps

    start = time.perf_counter()
    log = timed_log(start)
    result: dict[str, Any] = {
        **report_header("benchmark_training.py", argv),
        "settings": {"presets": presets, "stages": args.stages, "modes": args.modes, "steps": args.steps,
                     "heavy_steps": args.heavy_steps, "heavy_warmup": args.heavy_warmup, "threads": args.threads},
        "runs": [],
    }
    log(f"machine: {result['machine']}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="glam_train_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for preset in presets:
            batch_file = prepare_data(preset, work, log)
            for stage in args.stages:
                heavy = PRESETS[preset]["heavy"] and stage != "global"
                steps = args.heavy_steps if heavy else args.steps
                warmup = args.heavy_warmup if heavy else 1
                argv_child = ["--child", "--preset", preset, "--stage", stage, "--batch_file", str(batch_file),
                              "--work", str(work), "--steps", str(steps), "--threads", str(args.threads),
                              "--warmup", str(warmup), "--modes", *args.modes]
                log(f"{preset} / {stage}: {warmup} warm-up and {steps} measured step(s) per mode")
                stage_start = time.perf_counter()
                raw = run_child(argv_child, log)
                run = {key: raw[key] for key in raw if key not in ("warmup", "steps", "errors")}
                run["warmup_steps"], run["measured_steps"] = warmup, steps
                run["summary"] = summarise(raw)
                run["wall_s"] = time.perf_counter() - stage_start
                run["raw"] = {key: raw[key] for key in ("warmup", "steps", "errors")}
                result["runs"].append(run)
                log(f"{preset} / {stage} done in {run['wall_s']:.0f} s: " + ", ".join(
                    f"{mode} " + (f"failed ({row['error']})" if "error" in row else
                                  f"{row['step_s']:.2f} s/step, {row['images_per_s']:.3g} images/s, "
                                  f"x{row.get('ratio_to_float32', float('nan')):.2f}, {row['peak_rss_mib']:.0f} MiB")
                    for mode, row in run["summary"].items()))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["load_average_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - start
    write_report(result, args.out, markdown, log)
    return result


if __name__ == "__main__":
    main()
