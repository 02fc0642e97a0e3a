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

from glam_bundle.constants import SPLITS  # noqa: E402
from glam_bundle.data.datalist import load_datalist  # noqa: E402
from glam_bundle.data.phantom import generate_dataset  # noqa: E402


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
    parser.add_argument("--lesion_scale", type=float, default=1.0, help="lesion size relative to the default")
    parser.add_argument("--contrast_scale", type=float, default=1.0, help="lesion contrast relative to the default")
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"),
        help="training/validation/test shares of the patients (default 0.7 0.1 0.2)",
    )
    args = parser.parse_args(argv)
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
        lesion_scale=args.lesion_scale,
        contrast_scale=args.contrast_scale,
    )
    counts = ", ".join(f"{name} {len(load_datalist(path, name))}" for name in SPLITS)
    print(f"{path}: {counts} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
