"""A "TensorBoard screenshot" of a training run as one PNG, for docs and reports.

Reads every TensorBoard event file under LOG_DIR (sub-folders are runs; their name prefixes the tags) and draws
the scalar curves as small plots (the training loss first, then the loss terms of ``LossTermsLogger``, then the
validation metrics: Dice, AUC, PxAP, patch recall, whatever was logged), smoothed as TensorBoard does when a
curve is long, and below them the images of the last logged step (the ``GLAMTensorBoardImages`` figures of the
last validation). The PNG is written atomically.

Examples::

    python scripts/tensorboard_figure.py outputs/train_global docs/images/tensorboard_global.png
    python scripts/tensorboard_figure.py outputs/train_global out.png --smoothing 0 --max-images 4
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.figure_style import (  # noqa: E402
    CURVE_COLOUR,
    LABEL_SIZE,
    PANEL_FACE,
    PANEL_TITLE_SIZE,
    TICK_SIZE,
    TITLE_SIZE,
)

EVENT_PATTERN = "events.out.tfevents.*"


class NoEventsError(RuntimeError):
    """LOG_DIR holds no TensorBoard event file."""


def event_files(log_dir: str | Path) -> list[Path]:
    """Every event file under ``log_dir`` (recursively), sorted."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise NoEventsError(f"{log_dir} is not a folder")
    files = sorted(path for path in log_dir.rglob(EVENT_PATTERN) if path.is_file())
    if not files:
        raise NoEventsError(f"no TensorBoard event files ({EVENT_PATTERN}) under {log_dir}")
    return files


def read_events(log_dir: str | Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, bytes]]]]:
    """Scalars {tag: [(step, value)]} and images {tag: [(step, PNG bytes)]} of every event file under
    ``log_dir``, each list sorted by step (the last write of a step wins). Tags of files in a sub-folder are
    prefixed with its relative path."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    scalars: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    images: dict[str, dict[int, tuple[float, bytes]]] = defaultdict(dict)
    for path in event_files(log_dir):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        run = path.parent.relative_to(log_dir).as_posix()
        prefix = "" if run == "." else f"{run}/"
        tags = accumulator.Tags()
        for tag in tags.get("scalars", []):
            for event in accumulator.Scalars(tag):
                previous = scalars[prefix + tag].get(event.step)
                if previous is None or previous[0] <= event.wall_time:
                    scalars[prefix + tag][event.step] = (event.wall_time, float(event.value))
        for tag in tags.get("images", []):
            for event in accumulator.Images(tag):
                previous = images[prefix + tag].get(event.step)
                if previous is None or previous[0] <= event.wall_time:
                    images[prefix + tag][event.step] = (event.wall_time, event.encoded_image_string)
    return (
        {tag: [(step, value) for step, (_, value) in sorted(points.items())] for tag, points in scalars.items()},
        {tag: [(step, data) for step, (_, data) in sorted(points.items())] for tag, points in images.items()},
    )


def _order(tag: str) -> tuple[int, str]:
    """Training loss, loss terms, validation metrics, anything else."""
    low = tag.lower()
    if low.endswith("train_loss"):
        return 0, tag
    if "loss" in low:
        return 1, tag
    if any(word in low for word in ("dice", "auc", "pxap", "recall", "val")):
        return 2, tag
    return 3, tag


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: a debiased exponential moving average."""
    if weight <= 0 or len(values) < 2:
        return values
    out, last, count = np.empty_like(values), 0.0, 0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            out[i] = value
            continue
        count += 1
        last = last * weight + (1 - weight) * value
        out[i] = last / (1 - weight**count)
    return out


def last_images(images: dict[str, list[tuple[int, bytes]]], max_images: int) -> tuple[int | None, list]:
    """The images of the last step any image was logged at: (step, [(tag, PIL image)])."""
    if not images:
        return None, []
    step = max(points[-1][0] for points in images.values())
    chosen = []
    for tag in sorted(images):
        for point_step, data in images[tag]:
            if point_step == step:
                chosen.append((tag, Image.open(io.BytesIO(data)).convert("RGB")))
    return step, chosen[:max_images]


def tensorboard_figure(
    log_dir: str | Path,
    columns: int = 4,
    smoothing: float = 0.6,
    max_images: int = 4,
    image_columns: int = 2,
) -> Figure:
    """Build the screenshot figure of the run in ``log_dir`` (see the module docstring)."""
    scalars, images = read_events(log_dir)
    tags = sorted(scalars, key=_order)
    step, shown = last_images(images, max_images)
    scalar_rows = math.ceil(len(tags) / columns)
    image_rows = math.ceil(len(shown) / image_columns)
    width = 3.4 * columns
    image_height = 0.0
    if shown:
        aspect = max(image.height / image.width for _, image in shown)
        image_height = width / image_columns * aspect + 0.4
    height = 0.8 + 2.3 * scalar_rows + image_height * image_rows
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained", facecolor="white")
    fig.suptitle(f"TensorBoard: {Path(log_dir)}", fontsize=TITLE_SIZE + 2, x=0.01, ha="left", fontweight="bold")
    ratios = [2.3] * scalar_rows + [image_height] * image_rows
    if not ratios:
        ratios = [1.0]
    outer = fig.add_gridspec(len(ratios), 1, height_ratios=ratios)
    if not tags and not shown:
        ax = fig.add_subplot(outer[0])
        ax.set_axis_off()
        ax.text(0.5, 0.5, "the event files hold no scalars or images", ha="center", va="center")
    for row in range(scalar_rows):
        cells = outer[row].subgridspec(1, columns)
        for column in range(columns):
            index = row * columns + column
            if index >= len(tags):
                break
            tag = tags[index]
            steps = np.array([s for s, _ in scalars[tag]], dtype=float)
            values = np.array([v for _, v in scalars[tag]], dtype=float)
            ax = fig.add_subplot(cells[column])
            ax.set_facecolor(PANEL_FACE)
            if len(values) > 20 and smoothing > 0:
                ax.plot(steps, values, color=CURVE_COLOUR, alpha=0.3, lw=1)
                ax.plot(steps, smooth(values, smoothing), color=CURVE_COLOUR, lw=1.5)
            else:
                ax.plot(steps, values, color=CURVE_COLOUR, lw=1.5, marker="o" if len(values) < 20 else None,
                        markersize=3)
            last = values[-1]
            ax.set_title(f"{tag}\nlast {last:.4g} (step {int(steps[-1])})", fontsize=LABEL_SIZE, loc="left")
            ax.tick_params(labelsize=TICK_SIZE)
            ax.grid(True, color="white", lw=1)
            ax.set_xlabel("step", fontsize=TICK_SIZE)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for spine in ax.spines.values():
                spine.set_visible(False)
    for row in range(image_rows):
        cells = outer[scalar_rows + row].subgridspec(1, image_columns)
        for column in range(image_columns):
            index = row * image_columns + column
            if index >= len(shown):
                break
            tag, image = shown[index]
            ax = fig.add_subplot(cells[column])
            ax.imshow(np.asarray(image), interpolation="antialiased")
            ax.set_axis_off()
            ax.set_title(f"{tag}  (step {step})", fontsize=PANEL_TITLE_SIZE, loc="left")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", help="TensorBoard folder of the run (e.g. outputs/train_global)")
    parser.add_argument("output", help="PNG to write")
    parser.add_argument("--columns", type=int, default=4, help="scalar plots per row (4)")
    parser.add_argument("--smoothing", type=float, default=0.6, help="TensorBoard smoothing of long curves (0.6)")
    parser.add_argument("--max-images", type=int, default=4, help="images of the last step shown (4)")
    args = parser.parse_args(argv)
    try:
        fig = tensorboard_figure(args.log_dir, args.columns, args.smoothing, args.max_images)
    except NoEventsError as error:
        print(f"tensorboard_figure.py: error: {error}", file=sys.stderr)
        return 2
    with atomic_output(args.output) as tmp:
        fig.savefig(tmp, format="png")
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
