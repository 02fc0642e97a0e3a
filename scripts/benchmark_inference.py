"""Inference benchmark: latency, throughput, peak memory, achieved GFLOP/s and output differences of each way to
run GLAM, plus the share of reading, preprocessing, network and writing end to end (configs/inference.json).

    python scripts/benchmark_inference.py --out docs/benchmark_inference           # paper size, minutes
    python scripts/benchmark_inference.py --quick --out /tmp/bench/benchmark        # tiny network, seconds

Network modes (the full model, M = 1, in evaluation mode; batch 1 for latency, ``--batch`` for images/s):

- ``float32_eager``: ``network(x)`` under ``torch.no_grad`` - the reference every ratio is taken against;
- ``float32_inference_mode``: under ``torch.inference_mode`` (what the evaluator does with ``precision`` float32);
- ``float32_channels_last``: inference mode, weights and input in ``torch.channels_last``;
- ``bfloat16_autocast`` / ``bfloat16_channels_last``: inference mode under ``torch.autocast("cpu", bfloat16)``;
- ``torchscript_float32``: ``networks.export_view(network, "export")`` traced with ``torch.jit.trace`` (as
  docs/export.md's ``ckpt_export``), run under inference mode;
- on a GPU (when ``torch.cuda.is_available()``): ``cuda_float32``, ``cuda_bfloat16``, ``cuda_float16`` (autocast).

The machine is shared and noisy, so the modes alternate within each round (A B C ... A B C ...), every time is a
median over the rounds after a warm-up, and every figure is also given as a ratio to ``float32_eager`` measured in
the same run: compare ratios, not absolute times from another run. Peak memory is the peak resident set size
(``ru_maxrss``) of a fresh process that builds the network and runs one warm-up and one timed batch-1 forward in
that mode (GPU: ``torch.cuda.max_memory_allocated``). FLOPs are counted once (``FlopCounterMode``, float32, batch
1); GFLOP/s = FLOPs / latency. Each reduced-precision (and layout/export) mode's S_c (``saliency``) and
prediction (``y_global``, the image-level output of inference) are compared with float32 eager on the same input
(max absolute difference) together with the selected patch.

End to end: ``configs/inference.json`` in a fresh process per run (float32 and bfloat16 alternating, two runs each)
on a folder of images, timed with Ignite events per image: data (reading + preprocessing in the loader), network
(``FORWARD_COMPLETED``), postprocessing (``MODEL_COMPLETED``) and writing (the writer's ``ITERATION_COMPLETED``);
reading alone is timed separately with the config's ``load_transforms``.

Weights and input at paper size: the original-format checkpoint of ../shared (random initialisation, converted as
``scripts/import_original_checkpoint.py`` does) and its golden preprocessed NYU image, or seed-0 random weights and
a random input when ../shared is absent; ``--quick`` uses a narrow network at 736x480 (the tests' small network).
The results go to ``OUT.json`` and ``OUT.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from anywhere without installing

from glam_bundle.atomic_io import write_text_atomic  # noqa: E402
from glam_bundle.constants import TINY_NETWORK  # noqa: E402
from glam_bundle.precision import cpu_capabilities, resolve_precision, to_channels_last  # noqa: E402

SHARED = REPO_ROOT.parent / "shared"
ORIGINAL_CKPT = SHARED / "reference" / "original_checkpoint" / "random_init_seed0.ckpt"
GOLDEN = SHARED / "reference" / "original_checkpoint" / "golden_0_L-CC.npz"
NYU_IMAGES = SHARED / "data" / "nyu_sample" / "images"
INFERENCE_CONFIG = REPO_ROOT / "configs" / "inference.json"
META = REPO_ROOT / "metadata.json"

PAPER = {
    "preset": "paper",
    "image_size": [2944, 1920],
    "crop_size": [512, 512],
    "network_args": {},
}
QUICK = {
    "preset": "quick",
    "image_size": [736, 480],
    "crop_size": [128, 128],
    "network_args": dict(TINY_NETWORK),
}

REFERENCE = "float32_eager"
CPU_MODES = (
    "float32_eager",
    "float32_inference_mode",
    "float32_channels_last",
    "bfloat16_autocast",
    "bfloat16_channels_last",
    "torchscript_float32",
)
GPU_MODES = ("cuda_float32", "cuda_bfloat16", "cuda_float16")


# ----------------------------------------------------------------------------------------------- set-up


def build_network(settings: dict, weights: str | None = None) -> tuple[torch.nn.Module, str]:
    """(GLAM in eval mode on the CPU, what its weights are)."""
    from glam_bundle.networks import GLAM

    torch.manual_seed(0)
    network = GLAM(crop_size=settings["crop_size"], **settings["network_args"])
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        source = f"{weights}"
    elif settings["preset"] == "paper" and ORIGINAL_CKPT.exists():
        from glam_bundle.checkpoint import convert_original_state_dict, load_original_checkpoint

        state, _, _ = convert_original_state_dict(load_original_checkpoint(ORIGINAL_CKPT), network, source=ORIGINAL_CKPT)
        network.load_state_dict(state, strict=True)
        source = f"{ORIGINAL_CKPT.name} (original format, random initialisation; attention/fusion seed 0)"
    else:
        source = "random initialisation, seed 0"
    return network.eval(), source


def make_input(settings: dict, batch: int = 1) -> tuple[torch.Tensor, str]:
    """(batch x 1 x H x W preprocessed input, what it is)."""
    if settings["preset"] == "paper" and GOLDEN.exists():
        image = torch.from_numpy(np.load(GOLDEN)["image"]).float()
        source = f"{GOLDEN.name} (NYU sample 0_L-CC, preprocessed by the original pipeline)"
    else:
        generator = torch.Generator().manual_seed(0)
        image = torch.randn(1, 1, *settings["image_size"], generator=generator)
        source = "standard normal noise, seed 0"
    return image.expand(batch, -1, -1, -1).contiguous(), source


def channels_last(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` in ``torch.channels_last`` (what the evaluator runs with reduced precision)."""
    return to_channels_last(copy.deepcopy(network))


def trace_export(network: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """The exported TorchScript network of docs/export.md (traced ``export_view``), without the trace check."""
    import warnings

    from glam_bundle.networks import export_view

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(export_view(network, "export"), example, check_trace=False)


class Runner:
    """One way to run the network: ``runner(x)`` -> (saliency, prediction, patch_locations) in float32."""

    def __init__(self, mode: str, network: torch.nn.Module, example: torch.Tensor, scripted_path: str | None = None):
        self.mode = mode
        self.device = torch.device("cuda" if mode.startswith("cuda") else "cpu")
        self.memory_format = torch.channels_last if mode.endswith("channels_last") else torch.contiguous_format
        if mode.startswith("torchscript"):
            self.network = torch.jit.load(scripted_path) if scripted_path else trace_export(network, example)
        elif self.memory_format == torch.channels_last:
            self.network = channels_last(network)
        else:
            self.network = network.to(self.device)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}
        self.autocast = next((d for key, d in dtype.items() if key in mode), None)

    def context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad() if self.mode == REFERENCE else torch.inference_mode())
        if self.autocast is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast))
        return stack

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.mode.startswith("torchscript") and x.shape[0] > 1:  # the file is traced for batch 1: one by one
            outs = [self(x[i : i + 1]) for i in range(x.shape[0])]
            return tuple(torch.cat(parts) for parts in zip(*outs))  # type: ignore[return-value]
        x = x.to(self.device).contiguous(memory_format=self.memory_format)
        with self.context():
            out = self.network(x)
        if isinstance(out, tuple):
            saliency, prediction, patches = out
        else:
            saliency, prediction, patches = out["saliency"], out["y_global"], out["patch_locations"]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return saliency.float().cpu(), prediction.float().cpu(), patches.cpu()

    def timed(self, x: torch.Tensor) -> tuple[float, tuple]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self(x)
        return time.perf_counter() - start, out


# ----------------------------------------------------------------------------------------------- measurements


def peak_rss_mib() -> float:
    """Peak resident set size of this process: VmHWM of /proc/self/status (this address space only; Linux keeps
    ``ru_maxrss`` across fork and exec, so a child would report its parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def count_flops(network: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """FLOPs of one float32 forward (batch of ``x``), in total and per top-level part of GLAM."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(x)
    per_module = counter.get_flop_counts()
    parts = {}
    for name in ("global_module", "local_module", "aggregation", "fusion"):
        key = next((k for k in per_module if k.split(".")[-1] == name and k.count(".") == 1), None)
        parts[name] = int(sum(per_module[key].values())) if key else 0
    total = int(counter.get_total_flops())
    parts["other (patch selection, S_c)"] = total - sum(parts.values())
    return {"total": total, "parts": parts}


def memory_child(args: argparse.Namespace) -> None:
    """Child process: build the network, run the mode twice at batch 1, print its peak memory as JSON."""
    settings = QUICK if args.quick else PAPER
    torch.set_num_threads(args.threads) if args.threads else None
    network, _ = build_network(settings, args.weights)
    x, _ = make_input(settings)
    after_load = current_rss_mib()
    runner = Runner(args.memory_child, network, x, scripted_path=args.scripted)
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        runner(x)
    result = {"mode": args.memory_child, "peak_rss_mib": peak_rss_mib(), "rss_after_load_mib": after_load}
    if runner.device.type == "cuda":
        result["gpu_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def run_child(argv: list[str], timeout: float = 1800) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {argv} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def network_benchmark(args: argparse.Namespace, settings: dict, modes: list[str], log) -> dict:
    network, weights_source = build_network(settings, args.weights)
    x1, input_source = make_input(settings, 1)
    xb, _ = make_input(settings, args.batch)
    log(f"network: {weights_source}; input: {input_source}")

    flops = count_flops(network, x1)
    log(f"FLOPs per image: {flops['total'] / 1e9:.1f} G ({ {k: round(v / 1e9, 2) for k, v in flops['parts'].items()} })")

    runners = {}
    scripted_path = None
    for mode in modes:
        start = time.perf_counter()
        runners[mode] = Runner(mode, network, x1)
        if mode.startswith("torchscript"):
            scripted_path = str(Path(args.tmp) / "model.ts")
            runners[mode].network.save(scripted_path)
            log(f"traced {mode} in {time.perf_counter() - start:.1f} s")

    # warm-up (two calls: the TorchScript profiling executor optimises on the second) and outputs to compare
    outputs = {}
    for mode in modes:
        for _ in range(2 if mode.startswith("torchscript") else 1):
            outputs[mode] = runners[mode](x1)
    ref = outputs[REFERENCE]

    latency: dict[str, list[float]] = {m: [] for m in modes}
    for round_index in range(args.reps):
        order = modes if round_index % 2 == 0 else modes[::-1]  # ABC CBA: no mode always follows the same one
        for mode in order:
            seconds, _ = runners[mode].timed(x1)
            latency[mode].append(seconds)
        log(f"latency round {round_index + 1}/{args.reps}: " + ", ".join(f"{m} {latency[m][-1]:.2f}" for m in modes))

    batch_times: dict[str, list[float]] = {m: [] for m in modes}
    if args.batch_reps > 0:
        for mode in modes:  # warm-up at the batch size
            runners[mode](xb)
        for round_index in range(args.batch_reps):
            order = modes if round_index % 2 == 0 else modes[::-1]
            for mode in order:
                seconds, _ = runners[mode].timed(xb)
                batch_times[mode].append(seconds)
            log(f"batch {args.batch} round {round_index + 1}/{args.batch_reps}: "
                + ", ".join(f"{m} {batch_times[m][-1]:.2f}" for m in modes))
    del runners

    memory = {}
    if not args.no_memory:
        for mode in modes if not args.quick else [m for m in modes if m in (REFERENCE, args.default_mode)]:
            argv = ["--memory_child", mode] + (["--quick"] if args.quick else [])
            argv += ["--weights", args.weights] if args.weights else []
            argv += ["--scripted", scripted_path] if mode.startswith("torchscript") and scripted_path else []
            argv += ["--threads", str(args.threads)] if args.threads else []
            memory[mode] = run_child(argv)
            log(f"memory {mode}: peak RSS {memory[mode]['peak_rss_mib']:.0f} MiB")

    rows = {}
    for mode in modes:
        median = statistics.median(latency[mode])
        row = {"latency_s": median, "latency_all_s": latency[mode], "gflops_per_s": flops["total"] / median / 1e9}
        if batch_times[mode]:
            batch_median = statistics.median(batch_times[mode])
            row.update(batch_s=batch_median, batch_all_s=batch_times[mode], images_per_s=args.batch / batch_median)
        if mode in memory:
            row.update({k: v for k, v in memory[mode].items() if k != "mode"})
        saliency, prediction, patches = outputs[mode]
        row.update(
            saliency_max_abs_diff=float((saliency - ref[0]).abs().max()),
            saliency_fraction_over_0_02=float(((saliency - ref[0]).abs() > 0.02).float().mean()),
            prediction_max_abs_diff=float((prediction - ref[1]).abs().max()),
            same_patch=bool(torch.equal(patches, ref[2])),
        )
        rows[mode] = row
    add_ratios(rows)
    return {"weights": weights_source, "input": input_source, "flops": flops, "modes": rows}


def add_ratios(rows: dict[str, dict]) -> None:
    """Ratios to float32 eager, paired by round: the median over the rounds of (mode's time / float32 eager's time in
    the same round), so that a change of the machine's load between rounds cancels (also "..._of_medians")."""
    ref = rows[REFERENCE]
    for row in rows.values():
        row["latency_ratio"] = statistics.median(t / r for t, r in zip(row["latency_all_s"], ref["latency_all_s"]))
        row["latency_ratio_of_medians"] = row["latency_s"] / ref["latency_s"]
        if row.get("batch_all_s") and ref.get("batch_all_s"):
            row["throughput_ratio"] = statistics.median(r / t for t, r in zip(row["batch_all_s"], ref["batch_all_s"]))


# ----------------------------------------------------------------------------------------------- end to end


def e2e_child(args: argparse.Namespace) -> None:
    """Child process: configs/inference.json on ``--images`` with ``precision``; per-image times as JSON."""
    import logging

    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.engines import IterationEvents
    from monai.transforms import Compose

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else PAPER
    overrides = {
        "dataset_dir": args.images,
        "output_dir": args.e2e_out,
        "ckpt_path": args.weights,
        "precision": args.e2e_child,
        **({} if args.e2e_writer == "config" else {"write_in_background": args.e2e_writer == "background"}),
        "image_size": settings["image_size"],
        "crop_size": settings["crop_size"],
        **{f"network_def#{k}": v for k, v in settings["network_args"].items()},
    }
    logging.disable(logging.WARNING)
    workflow = ConfigWorkflow(config_file=str(INFERENCE_CONFIG), meta_file=str(META), workflow_type="infer",
                              logging_file=False, **overrides)
    workflow.initialize()
    parser = workflow.parser
    evaluator = parser.get_parsed_content("evaluator")
    writer = parser.get_parsed_content("writer")
    writer_mode = "background" if writer.background else "foreground"
    writer_s: list[float] = []  # the time of each batch's files, in whichever thread writes them
    write_cases = writer._write_cases

    def timed_write_cases(cases):
        t0 = time.perf_counter()
        write_cases(cases)
        writer_s.append(time.perf_counter() - t0)

    writer._write_cases = timed_write_cases

    marks: list[dict[str, float]] = []

    def mark(name: str):
        def handler(_engine) -> None:
            if name == "get_batch_started":
                marks.append({})
            marks[-1][name] = time.perf_counter()
        return handler

    evaluator.add_event_handler(Events.GET_BATCH_STARTED, mark("get_batch_started"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, mark("get_batch_completed"))
    evaluator.add_event_handler(Events.ITERATION_STARTED, mark("iteration_started"))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, mark("forward_completed"))
    evaluator.add_event_handler(IterationEvents.MODEL_COMPLETED, mark("model_completed"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, mark("iteration_completed"))  # after the writer

    start = time.perf_counter()
    workflow.run()
    total = time.perf_counter() - start
    workflow.finalize()

    per_image = []
    for m, written in zip((m for m in marks if "iteration_completed" in m and "forward_completed" in m), writer_s):
        per_image.append({
            "writer_s": written,
            "data_s": m["get_batch_completed"] - m["get_batch_started"],
            "network_s": m["forward_completed"] - m["iteration_started"],
            "postprocessing_s": m["model_completed"] - m["forward_completed"],
            "writing_s": m["iteration_completed"] - m["model_completed"],
            "image_s": m["iteration_completed"] - m["get_batch_started"],
        })
    # reading alone: the config's load_transforms on each item
    reading = []
    load = Compose(parser.get_parsed_content("load_transforms"))
    for item in parser.get_parsed_content("data"):
        t0 = time.perf_counter()
        load(dict(item))
        reading.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"precision": args.e2e_child, "writer": writer_mode, "total_s": total,
                                  "per_image": per_image, "reading_s": reading, "peak_rss_mib": peak_rss_mib(),
                                  "resolved": resolve_precision("cpu", args.e2e_child)}))


def e2e_variants(config_precision: str) -> dict[str, tuple[str, str]]:
    """End-to-end runs: name -> (precision, writer). The config's defaults in float32 (writer "config": as
    ``write_in_background`` resolves on this machine: the engine's thread on a CPU), the same with the writer thread
    forced on, and bfloat16 where the CPU has it."""
    variants = {"float32": ("float32", "config"), "float32_writer_thread": ("float32", "background")}
    if resolve_precision("cpu", "auto") == "bfloat16":
        variants["bfloat16"] = ("bfloat16", "config")
    variants.setdefault(config_precision, (config_precision, "config"))
    return variants


def e2e_benchmark(args: argparse.Namespace, settings: dict, variants: dict[str, tuple], log) -> dict:
    tmp = Path(args.tmp)
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    if settings["preset"] == "paper" and NYU_IMAGES.exists():
        for copy_index in range(args.e2e_copies):
            for path in sorted(NYU_IMAGES.glob("*.png")):
                shutil.copy(path, images / f"{path.stem}_{copy_index}{path.suffix}")
        source = f"NYU sample 0_L-CC and 0_R-CC ({args.e2e_copies} copies each, PNG)"
    else:
        from glam_bundle.data.phantom import generate_dataset

        height, width = settings["image_size"]
        generate_dataset(tmp / "phantoms", n_images=2 * args.e2e_copies, height=height, width=width, seed=1)
        for path in sorted((tmp / "phantoms").rglob("*.png")):
            if "mask" not in path.name and "images" in str(path.parent):
                shutil.copy(path, images / path.name)
        source = f"synthetic phantoms {height}x{width}"
    weights = args.weights
    if not weights:
        network, _ = build_network(settings)
        weights = str(tmp / "model.pt")
        torch.save(network.state_dict(), weights)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(args.e2e_rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            precision, writer = variants[name]
            out = tmp / f"e2e_{name}_{round_index}"
            argv = ["--e2e_child", precision, "--e2e_writer", writer, "--images", str(images), "--e2e_out", str(out),
                    "--weights", weights]
            argv += (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])
            result = run_child(argv)
            runs[name].append(result)
            log(f"end to end {name} round {round_index + 1}: {result['total_s']:.1f} s, "
                f"{len(result['per_image'])} images, peak RSS {result['peak_rss_mib']:.0f} MiB")
            shutil.rmtree(out, ignore_errors=True)
    summary = {}
    for name, results in runs.items():
        # the first image of each process is its warm-up
        images_timed = [image for r in results for image in r["per_image"][1:]] or [
            image for r in results for image in r["per_image"]]
        row = {key: statistics.median(i[key] for i in images_timed)
               for key in ("image_s", "data_s", "network_s", "postprocessing_s", "writing_s", "writer_s")}
        row["precision"] = variants[name][0]
        row["writer"] = results[0]["writer"]
        # the whole run (first image included) per image: what a batch job sees
        row["run_s_per_image"] = statistics.median(r["total_s"] / max(len(r["per_image"]), 1) for r in results)
        row["reading_s"] = statistics.median(t for r in results for t in r["reading_s"])
        row["preprocessing_s"] = max(row["data_s"] - row["reading_s"], 0.0)
        row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
        row["images_timed"] = len(images_timed)
        row["resolved"] = results[0]["resolved"]
        summary[name] = row
    return {"images": source, "per_precision": summary, "runs": runs}


# ----------------------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model,
        "cpu_flags": cpu_capabilities(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def config_precision() -> str:
    with open(INFERENCE_CONFIG) as handle:
        return str(json.load(handle).get("precision", "float32"))


def default_mode(precision: str) -> str:
    """The network mode that the inference config's default ``precision`` amounts to on this machine's CPU."""
    return {"float32": "float32_inference_mode", "bfloat16": "bfloat16_channels_last"}[resolve_precision("cpu", precision)]


def targets(result: dict) -> list[dict[str, Any]]:
    modes = result["network"]["modes"]
    default = result["default_mode"]
    rows = [
        {"target": "default inference latency <= 0.5x float32 eager",
         "measured": f"{modes[default]['latency_ratio']:.2f}x ({default})",
         "met": modes[default]["latency_ratio"] <= 0.5},
        {"target": "float32 (inference mode) no slower than float32 eager",
         "measured": f"{modes['float32_inference_mode']['latency_ratio']:.2f}x",
         "met": modes["float32_inference_mode"]["latency_ratio"] <= 1.0},
    ]
    for mode, row in modes.items():
        if "bfloat16" in mode or "float16" in mode:
            rows.append({"target": f"{mode}: saliency max abs diff <= 0.02, predictions <= 0.01",
                         "measured": f"{row['saliency_max_abs_diff']:.4f}, {row['prediction_max_abs_diff']:.4f}",
                         "met": row["saliency_max_abs_diff"] <= 0.02 and row["prediction_max_abs_diff"] <= 0.01})
    if "peak_rss_mib" in modes[default]:
        rows.append({"target": "peak RSS < 1 GB, batch 1 (network, default mode)",
                     "measured": f"{modes[default]['peak_rss_mib']:.0f} MiB", "met": modes[default]["peak_rss_mib"] < 1024})
    e2e = result.get("end_to_end", {}).get("per_precision", {})
    precision = result["config_precision"]
    if precision in e2e:
        rows.append({"target": "peak RSS < 1 GB, batch 1 (end to end, default config)",
                     "measured": f"{e2e[precision]['peak_rss_mib']:.0f} MiB",
                     "met": e2e[precision]["peak_rss_mib"] < 1024})
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    net = result["network"]
    lines = [
        "# Inference benchmark",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['wall_s'] / 60:.1f} min).",
        "",
        f"Machine: {m['cpu']} ({flags}; torch CPU capability {m['cpu_capability']}), {m['cores_visible']} cores visible, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}, monai {m.get('monai', '?')}, Python {m['python']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else ", no GPU") + f". Load average at start {m['load_average_start'][0]:.1f}, "
        f"at end {result['load_average_end'][0]:.1f} (the machine is shared: compare the ratios, measured alternately in "
        "this one run, not absolute times from another run).",
        "",
        f"Preset `{result['settings']['preset']}`: input {result['settings']['image_size'][0]}x"
        f"{result['settings']['image_size'][1]}, patch {result['settings']['crop_size'][0]}, M = 1; weights: "
        f"{net['weights']}; input: {net['input']}. FLOPs per image (float32, FlopCounterMode): "
        f"{net['flops']['total'] / 1e9:.1f} G ("
        + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in net["flops"]["parts"].items()) + ").",
        "",
        f"The inference config's `precision` is `{result['config_precision']}`: on this CPU the evaluator runs "
        f"`{result['default_mode']}` (the default row).",
        "",
        f"## Network (latency: batch 1, median of {result['settings']['reps']} alternating rounds after warm-up; "
        f"throughput: batch {result['settings']['batch']}, median of {result['settings']['batch_reps']})",
        "",
        "Ratios are paired by round: the median over the rounds of the mode's time over float32 eager's time in the "
        "same round (the load of the shared machine changes between rounds, less within one).",
        "",
        "| mode | latency (s) | × float32 eager | GFLOP/s | images/s | × eager throughput | peak RSS (MiB) | S_c max abs diff | prediction max abs diff | same patch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in net["modes"].items():
        name = f"**{mode}** (default)" if mode == result["default_mode"] else mode
        memory = row.get("gpu_max_allocated_mib", row.get("peak_rss_mib"))
        lat = f"{row['latency_s']:.3g} | {row['latency_ratio']:.2f} | {row['gflops_per_s']:.0f}"
        thr = f"{row['images_per_s']:.3f} | {row['throughput_ratio']:.2f}" if "images_per_s" in row else "- | -"
        mem = f"{memory:.0f}" if memory is not None else "-"
        diff = (f"{row['saliency_max_abs_diff']:.2g} | {row['prediction_max_abs_diff']:.2g} | "
                f"{'yes' if row['same_patch'] else 'no'}")
        lines.append(f"| {name} | {lat} | {thr} | {mem} | {diff} |")
    lines += ["", "The TorchScript file is traced for batch 1 (docs/export.md): its batch runs image by image. "
              "Per-round latencies (s) are in the JSON (`network.modes.<mode>.latency_all_s`).", ""]
    e2e = result.get("end_to_end")
    if e2e:
        rerun = f" Measured again by `{e2e['command']}` ({e2e['date']})." if "command" in e2e else ""
        lines += [
            f"## End to end: configs/inference.json ({e2e['images']}; one process per run, "
            f"{result['settings']['e2e_rounds']} alternating runs per variant; the first image of each run is its "
            f"warm-up).{rerun}",
            "",
            "| variant | precision | writer | per image (s) | whole run per image (s) | reading | "
            "preprocessing | network | postprocessing | engine waits for the writer | writing (NIfTI, figure, CSV row) | "
            "peak RSS (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in e2e["per_precision"].items():
            total = row["image_s"]

            def share(key: str) -> str:
                return f"{row[key]:.2f} s ({100 * row[key] / total:.0f} %)"

            writer = row.get("writer", "foreground")
            written = f"{row['writer_s']:.2f} s" if "writer_s" in row else "-"
            if writer == "background":
                written += " (in the writer thread, beside the next image's network)"
            lines.append(f"| {name} | {row.get('precision', name)} | {writer} | {total:.2f} | "
                         f"{row.get('run_s_per_image', float('nan')):.2f} | {share('reading_s')} | "
                         f"{share('preprocessing_s')} | {share('network_s')} | {share('postprocessing_s')} | "
                         f"{share('writing_s')} | {written} | {row['peak_rss_mib']:.0f} |")
        lines += ["", "Reading is the config's `load_transforms` timed alone; preprocessing is the loader's time "
                  "minus reading. \"Engine waits for the writer\" is the engine's time from the network's output to "
                  "the end of the iteration: the whole writing with the foreground writer, the hand-over (and any wait "
                  "for the previous image's files) with the writer thread (`write_in_background`), whose "
                  "own writing time is the next column. The config writes in the thread on a GPU and in the engine's thread "
                  "on a CPU, where the writer and the network share the cores (docs/performance.md).", ""]
    lines += ["## Targets (issue 14)", "", "| target | measured | met |", "|---|---|---|"]
    for row in result["targets"]:
        lines.append(f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'no'} |")
    lines.append("")
    return "\n".join(lines)


def timed_log(start: float) -> Callable[[str], None]:
    """A print with the seconds since ``start`` (shared with scripts/benchmark_training.py)."""

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    return log


def report_header(script: str, argv: list[str] | None) -> dict[str, Any]:
    """The command, date and machine entries that open a benchmark's JSON report."""
    return {
        "command": f"python scripts/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
    }


def write_report(result: dict, out: str | Path, render: Callable[[dict], str], log: Callable[[str], None] = print) -> Path:
    """``<out>.json`` (``result``) and ``<out>.md`` (``render(result)``), each written atomically; a relative ``out``
    is taken from the working directory. Shared with scripts/benchmark_training.py."""
    out = Path(out)
    if not out.is_absolute():
        out = Path.cwd() / out
    write_text_atomic(json.dumps(result, indent=1) + "\n", out.with_suffix(".json"))
    write_text_atomic(render(result), out.with_suffix(".md"))
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return out


def rerun_end_to_end(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The end-to-end part of an earlier report measured again (``--e2e_only``): its network rows are kept, the
    end-to-end rows and the targets replaced; the report names both commands and dates."""
    if args.threads:
        torch.set_num_threads(args.threads)
    result = json.loads(Path(args.e2e_only).read_text())
    settings = dict(QUICK if result["settings"].get("preset") == "quick" else PAPER)
    args.quick = settings["preset"] == "quick"
    args.e2e_rounds = args.e2e_rounds or result["settings"]["e2e_rounds"]
    args.e2e_copies = args.e2e_copies or result["settings"]["e2e_copies"]
    result["settings"].update(e2e_rounds=args.e2e_rounds, e2e_copies=args.e2e_copies)
    log = timed_log(time.perf_counter())
    with tempfile.TemporaryDirectory(prefix="glam_bench_") as tmp:
        args.tmp = tmp
        result["end_to_end"] = e2e_benchmark(args, settings, e2e_variants(result["config_precision"]), log)
    result["end_to_end"].update({key: value for key, value in report_header("benchmark_inference.py", argv).items()
                                 if key in ("command", "date")})
    result["targets"] = targets(result)
    write_report(result, args.out, markdown, log)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/benchmark_inference", help="output path without suffix (.json, .md)")
    parser.add_argument("--quick", action="store_true", help="narrow network at 736x480 (smoke run, seconds)")
    parser.add_argument("--reps", type=int, default=None, help="latency rounds (default 5)")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the throughput measurement")
    parser.add_argument("--batch_reps", type=int, default=None, help="throughput rounds (default 3, quick 2; 0: none)")
    parser.add_argument("--modes", nargs="+", default=None, help=f"network modes (default: {' '.join(CPU_MODES)} "
                        "and, with a GPU, " + " ".join(GPU_MODES) + ")")
    parser.add_argument("--weights", default=None, help="GLAM state dict (default: see the docstring)")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-mode peak-memory processes (quick: "
                        "only float32 eager and the default mode)")
    parser.add_argument("--no_e2e", action="store_true", help="skip the end-to-end runs")
    parser.add_argument("--e2e_copies", type=int, default=None, help="copies of each end-to-end image (default 2, quick 1)")
    parser.add_argument("--e2e_rounds", type=int, default=None, help="end-to-end runs per precision (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    # internal: child processes
    parser.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scripted", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--e2e_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--e2e_writer", default="config", help=argparse.SUPPRESS)
    parser.add_argument("--images", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--e2e_out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--e2e_only", default=None, metavar="JSON",
                        help="re-measure only the end-to-end runs into this earlier report (its network rows kept) "
                             "and write OUT.json/.md")
    parser.add_argument("--render", default=None, help="re-write OUT.md (and the ratios and targets of OUT.json) "
                        "from this JSON of an earlier run, measuring nothing")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        add_ratios(result["network"]["modes"])
        result["targets"] = targets(result)
        write_report(result, args.out, markdown)
        return result
    if args.memory_child:
        memory_child(args)
        return None
    if args.e2e_only:
        return rerun_end_to_end(args, argv)
    if args.e2e_child:
        e2e_child(args)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = dict(QUICK if args.quick else PAPER)
    args.reps = args.reps or 5
    args.batch_reps = (2 if args.quick else 3) if args.batch_reps is None else args.batch_reps
    args.e2e_rounds = (1 if args.quick else 2) if args.e2e_rounds is None else args.e2e_rounds
    args.e2e_copies = (1 if args.quick else 2) if args.e2e_copies is None else args.e2e_copies
    modes = list(args.modes or (CPU_MODES + (GPU_MODES if torch.cuda.is_available() else ())))
    if REFERENCE not in modes:
        modes.insert(0, REFERENCE)
    precision = config_precision()
    default = args.default_mode = default_mode(precision)
    if default not in modes:
        modes.append(default)

    start = time.perf_counter()
    log = timed_log(start)
    result: dict[str, Any] = {
        **report_header("benchmark_inference.py", argv),
        "settings": {**settings, "reps": args.reps, "batch": args.batch, "batch_reps": args.batch_reps,
                     "e2e_rounds": args.e2e_rounds, "e2e_copies": args.e2e_copies},
        "config_precision": precision,
        "default_mode": default,
    }
    log(f"machine: {result['machine']}")
    with tempfile.TemporaryDirectory(prefix="glam_bench_") as tmp:
        args.tmp = tmp
        result["network"] = network_benchmark(args, settings, modes, log)
        if not args.no_e2e:
            result["end_to_end"] = e2e_benchmark(args, settings, e2e_variants(precision), log)
    result["load_average_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - start
    result["targets"] = targets(result)
    write_report(result, args.out, markdown, log)
    return result


if __name__ == "__main__":
    main()
