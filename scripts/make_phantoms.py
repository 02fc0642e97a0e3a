"""Write a synthetic mammogram dataset (images, lesion masks, datalist JSON) for demos and tests.

Run from the repository root, e.g.::

    python scripts/make_phantoms.py --out_dir data/phantoms --n_images 8 --height 736 --width 480 --seed 0

Writes ``<out_dir>/images/*.png`` (16-bit, 12-bit values; ``.dcm`` with ``--format dicom``), ``<out_dir>/masks/*_<class>.png`` (0/255) and
``<out_dir>/datalist.json`` (patient-level training/validation/test split). See glam_bundle/data/phantom.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Scripts are run as files, so the repository root (holding glam_bundle) is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glam_bundle.constants import CLASS_NAMES, SPLITS  # noqa: E402
from glam_bundle.data.datalist import load_datalist  # noqa: E402
from glam_bundle.data.phantom import LESION_KINDS, generate_dataset  # noqa: E402


def parse_lesion_scale(values: list[str]) -> float | dict[str, float]:
    """``["2"]`` -> 2.0; ``["benign_mass=2", "malignant=4"]`` -> a mapping by kind or class."""
    if len(values) == 1 and "=" not in values[0]:
        return float(values[0])
    known = set(LESION_KINDS) | set(CLASS_NAMES)
    scales = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or name not in known:
            raise ValueError(f"{value!r} is not NUMBER or KIND=NUMBER with KIND one of {', '.join(sorted(known))}")
        scales[name] = float(number)
    return scales


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("--n_images", type=int, default=8)
    parser.add_argument("--height", type=int, default=2944)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benign", type=float, default=0.3, help="share of breasts with a benign lesion")
    parser.add_argument("--malignant", type=float, default=0.3, help="share of breasts with a malignant lesion")
    parser.add_argument("--two_views", action="store_true", help="image every breast in CC and MLO")
    parser.add_argument("--format", choices=("png", "dicom"), default="png", help="image file format (masks: PNG)")
    parser.add_argument(
        "--lesion_scale", nargs="+", default=["1"], metavar="SCALE",
        help="lesion size relative to the default: one number, or KIND=NUMBER per lesion kind or class "
        "(benign_mass, malignant_mass, calcification_cluster, benign, malignant)",
    )
    parser.add_argument(
        "--calcification_mask", choices=("specks", "cluster"), default="specks",
        help="mask of a calcification cluster: each speck plus 1 px, or the disk holding the specks",
    )
    parser.add_argument("--max_attempts", type=int, default=1, help="redraw a view whose lesions find no room")
    parser.add_argument("--contrast_scale", type=float, default=1.0, help="lesion contrast relative to the default")
    parser.add_argument(
        "--max_lesion_fraction", type=float, default=None, metavar="FRACTION",
        help="largest lesion mask as a share of its breast's area, e.g. 0.01 (larger lesions are drawn smaller)",
    )
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"),
        help="training/validation/test shares of the patients (default 0.7 0.1 0.2)",
    )
    args = parser.parse_args(argv)
    if args.max_lesion_fraction is not None and not 0.0 < args.max_lesion_fraction <= 1.0:
        parser.error(f"--max_lesion_fraction must be in (0, 1], got {args.max_lesion_fraction}")
    try:
        lesion_scale = parse_lesion_scale(args.lesion_scale)
    except ValueError as error:
        parser.error(f"--lesion_scale: {error}")
    try:
        path = generate_dataset(
            args.out_dir,
            n_images=args.n_images,
            height=args.height,
            width=args.width,
            prevalence={"benign": args.benign, "malignant": args.malignant},
            seed=args.seed,
            two_views=args.two_views,
            fractions=dict(zip(SPLITS, args.fractions)),
            image_format=args.format,
            lesion_scale=lesion_scale,
            contrast_scale=args.contrast_scale,
            calcification_mask=args.calcification_mask,
            max_attempts=args.max_attempts,
            max_lesion_fraction=args.max_lesion_fraction,
        )
    except (ValueError, OSError) as error:  # a setting the phantoms cannot meet, or an unwritable folder
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{name} {len(load_datalist(path, name))}" for name in SPLITS)
    print(f"{path}: {counts} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
