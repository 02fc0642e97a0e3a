"""Benchmark of the data pipeline: load + preprocess time per image, uncached and from the cache.

Makes ``--n`` synthetic 2944x1920 16-bit PNG mammograms (12-bit values, a breast-shaped phantom with zero
background) in a temporary folder and times, per image, :func:`glam_bundle.transforms.default_preprocessing`
through ``monai.data.Dataset`` (uncached), through :func:`glam_bundle.data.cache.make_cached_dataset` on
the first pass (computing and writing the cache) and on the second pass (reading it). Each phase runs in its
own process so its peak resident memory (``resource.getrusage``) is its own. Writes ``data_benchmark.json``
and ``data_benchmark.md`` into ``--output-dir`` (default ``docs/``), atomically.

Example::

    python scripts/benchmark_data.py --n 8 --output-dir docs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

HEIGHT, WIDTH = 2944, 1920


def synthetic_mammogram(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W) uint16 phantom: a half-ellipse breast on the left edge, 12-bit tissue texture, zero background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    centre = height * rng.uniform(0.45, 0.55)
    radius_rows, radius_cols = height * rng.uniform(0.38, 0.45), width * rng.uniform(0.55, 0.75)
    distance = ((rows - centre) / radius_rows) ** 2 + (cols / radius_cols) ** 2
    breast = distance < 1
    texture = rng.normal(0, 1, (height // 16, width // 16)).astype(np.float32)
    texture = np.kron(texture, np.ones((16, 16), dtype=np.float32))[:height, :width]
    values = 1500 + 1200 * (1 - distance) + 300 * texture
    return np.where(breast, np.clip(values, 1, 4095), 0).astype(np.uint16)


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _phase(name: str, items: list[dict], cache_dir: str, queue) -> None:
    """Run one benchmark phase in this (child) process and put its figures on ``queue``."""
    from monai.data import Dataset

    from glam_bundle.data.cache import make_cached_dataset
    from glam_bundle.transforms import default_preprocessing

    transform = default_preprocessing()
    if name == "uncached":
        dataset = Dataset(items, transform)
        passes = 1
    else:
        dataset = make_cached_dataset(items, transform, cache_dir)
        passes = 2
    baseline = _peak_rss_mib()
    times: list[list[float]] = []
    for _ in range(passes):
        pass_times = []
        for index in range(len(dataset)):
            start = time.perf_counter()
            item = dataset[index]
            pass_times.append(time.perf_counter() - start)
            assert tuple(item["image"].shape) == (1, HEIGHT, WIDTH)
        times.append(pass_times)
    queue.put({"name": name, "times": times, "peak_rss_mib": _peak_rss_mib(), "rss_after_import_mib": baseline})


def run_phase(name: str, items: list[dict], cache_dir: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_phase, args=(name, items, cache_dir, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"benchmark phase {name} failed with exit code {process.exitcode}")
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def summarise(results: dict[str, dict], cache_bytes: int, n: int) -> dict:
    uncached = float(np.mean(results["uncached"]["times"][0]))
    first = float(np.mean(results["cached"]["times"][0]))
    second = float(np.mean(results["cached"]["times"][1]))
    return {
        "images": n,
        "image_size": [HEIGHT, WIDTH],
        "seconds_per_image": {"uncached": uncached, "cache_first_pass": first, "cache_second_pass": second},
        "speedup_cached_vs_uncached": uncached / second,
        "peak_rss_mib": {"uncached": results["uncached"]["peak_rss_mib"], "cached": results["cached"]["peak_rss_mib"]},
        "rss_after_import_mib": results["uncached"]["rss_after_import_mib"],
        "cache_mib_per_image": cache_bytes / n / 2**20,
    }


def markdown(summary: dict, machine: dict) -> str:
    seconds = summary["seconds_per_image"]
    peak = summary["peak_rss_mib"]
    return "\n".join(
        [
            "# Data pipeline benchmark",
            "",
            f"{summary['images']} synthetic {HEIGHT}x{WIDTH} 16-bit PNGs, `default_preprocessing()` (inference chain).",
            "",
            "| path | seconds / image | peak RSS (MiB) |",
            "|---|---|---|",
            f"| uncached (`monai.data.Dataset`) | {seconds['uncached']:.3f} | {peak['uncached']:.0f} |",
            f"| `make_cached_dataset`, first pass (compute + write) | {seconds['cache_first_pass']:.3f} | {peak['cached']:.0f} |",
            f"| `make_cached_dataset`, second pass (read) | {seconds['cache_second_pass']:.3f} | (same process) |",
            "",
            f"Cached second pass is **{summary['speedup_cached_vs_uncached']:.1f}x** faster than uncached; "
            f"cache size {summary['cache_mib_per_image']:.1f} MiB per image; "
            f"RSS after imports {summary['rss_after_import_mib']:.0f} MiB.",
            "",
            f"Machine: {machine['platform']}, {machine['cpu_count']} CPU cores ({machine['processor']}), "
            f"Python {machine['python']}, torch {machine['torch']} ({machine['torch_threads']} threads).",
            "",
        ]
    )


def benchmark(n: int = 8, output_dir: str | os.PathLike = "docs", workdir: str | None = None) -> dict:
    """Run the benchmark and write ``data_benchmark.json`` / ``.md`` into ``output_dir``.

    Returns:
        the summary dict (also in the JSON, with the machine description).
    """
    from glam_bundle.atomic_io import save_png_atomic, write_text_atomic  # numpy and PIL only: no effect on the RSS baseline

    with tempfile.TemporaryDirectory(dir=workdir) as temp:
        temp = Path(temp)
        items = []
        for index in range(n):
            path = temp / f"synthetic_{index:03d}.png"
            save_png_atomic(synthetic_mammogram(index), path)
            items.append({"image": str(path), "view": "CC", "laterality": "L", "benign": 0, "malignant": 0})
        cache_dir = temp / "cache"
        results = {name: run_phase(name, items, str(cache_dir)) for name in ("uncached", "cached")}
        cache_bytes = sum(f.stat().st_size for f in cache_dir.glob("*.pt"))
    summary = summarise(results, cache_bytes, n)
    machine = machine_description()
    output_dir = Path(output_dir)
    write_text_atomic(json.dumps({**summary, "machine": machine}, indent=2) + "\n", output_dir / "data_benchmark.json")
    write_text_atomic(markdown(summary, machine), output_dir / "data_benchmark.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="number of synthetic images")
    parser.add_argument("--output-dir", default="docs", help="folder for data_benchmark.json / .md")
    parser.add_argument("--workdir", default=None, help="parent of the temporary image/cache folder")
    args = parser.parse_args(argv)
    summary = benchmark(args.n, args.output_dir, args.workdir)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
