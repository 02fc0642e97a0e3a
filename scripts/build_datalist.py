"""Build a GLAM datalist JSON from a public dataset's annotation files (or a CSV / a plain folder).

Run from the repository root, e.g.::

    python scripts/build_datalist.py mias --info mini_mias/Info.txt --image_dir mini_mias/images --out data/mias.json
    python scripts/build_datalist.py nyu --exam_list sample_data/exam_list_before_cropping.pkl \\
        --image_dir sample_data/images --segmentation_dir sample_data/segmentation --out data/nyu.json
    python scripts/build_datalist.py cbis --csv mass_case_description_train_set.csv \\
        mass_case_description_test_set.csv --root CBIS-DDSM --out data/cbis.json
    python scripts/build_datalist.py vindr --csv finding_annotations.csv --root vindr/images --out data/vindr.json
    python scripts/build_datalist.py csv --csv my_list.csv --out data/mine.json
    python scripts/build_datalist.py folder --folder new_exams/ --out data/infer.json

Mask PNGs drawn by a builder go to ``--masks_dir`` (default: ``masks/`` next to the JSON). Splits are
patient-level: the dataset's own split when it has one (validation carved out of its training patients),
otherwise by ``--fractions`` with ``--seed``. Skipped files are listed on stderr. See docs/datalists.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Scripts are run as files, so the repository root (holding glam_bundle) is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glam_bundle.constants import SPLITS  # noqa: E402
from glam_bundle.data.builders import (  # noqa: E402
    BuildResult,
    build_cbis_ddsm_items,
    build_csv_items,
    build_mini_mias_items,
    build_nyu_items,
    build_vindr_items,
)
from glam_bundle.data.datalist import datalist_from_folder, write_datalist  # noqa: E402
from glam_bundle.data.splits import split_items  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, type=Path, help="datalist JSON to write")
    common.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    common.add_argument(
        "--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"),
        help="training/validation/test shares of the patients (default 0.7 0.1 0.2)",
    )
    common.add_argument(
        "--masks_dir", type=Path, default=None, help="where drawn masks go (default: <out folder>/masks)"
    )
    sub = parser.add_subparsers(dest="dataset", required=True)

    nyu = sub.add_parser("nyu", parents=[common], help="NYU exam list pickle")
    nyu.add_argument("--exam_list", required=True, type=Path)
    nyu.add_argument("--image_dir", required=True, type=Path)
    nyu.add_argument("--segmentation_dir", type=Path, default=None)
    nyu.add_argument("--image_suffix", default=".png")

    cbis = sub.add_parser("cbis", parents=[common], help="CBIS-DDSM case-description CSV(s)")
    cbis.add_argument("--csv", required=True, type=Path, nargs="+")
    cbis.add_argument("--root", required=True, type=Path, help="folder holding the CBIS-DDSM DICOM folders")

    vindr = sub.add_parser("vindr", parents=[common], help="VinDr-Mammo finding_annotations.csv")
    vindr.add_argument("--csv", required=True, type=Path)
    vindr.add_argument("--root", required=True, type=Path, help="folder holding <study_id>/<image_id>.dicom")
    vindr.add_argument("--image_suffix", default=".dicom")

    mias = sub.add_parser("mias", parents=[common], help="(mini-)MIAS Info.txt")
    mias.add_argument("--info", required=True, type=Path)
    mias.add_argument("--image_dir", required=True, type=Path)

    generic = sub.add_parser("csv", parents=[common], help="generic CSV (image, view, laterality, benign, ...)")
    generic.add_argument("--csv", required=True, type=Path)
    generic.add_argument("--root", type=Path, default=None, help="base of relative paths (default: the CSV's folder)")

    folder = sub.add_parser("folder", parents=[common], help="every image of a folder, unlabelled (for inference)")
    folder.add_argument("--folder", required=True, type=Path)
    folder.add_argument("--recursive", action="store_true")
    folder.add_argument("--split", default="test", choices=SPLITS, help="the one split to put the images in")
    return parser


def _build(args: argparse.Namespace, masks_dir: Path) -> BuildResult:
    if args.dataset == "nyu":
        return build_nyu_items(args.exam_list, args.image_dir, args.segmentation_dir, args.image_suffix)
    if args.dataset == "cbis":
        return build_cbis_ddsm_items(args.csv, args.root, masks_dir)
    if args.dataset == "vindr":
        return build_vindr_items(args.csv, args.root, masks_dir, args.image_suffix)
    if args.dataset == "mias":
        return build_mini_mias_items(args.info, args.image_dir, masks_dir)
    if args.dataset == "csv":
        return build_csv_items(args.csv, args.root)
    return BuildResult(datalist_from_folder(args.folder, args.recursive), [])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    masks_dir = args.masks_dir or args.out.parent / "masks"
    result = _build(args, masks_dir)
    if args.dataset == "folder":
        splits = {args.split: result.items}
    else:
        splits = split_items(result.items, dict(zip(SPLITS, args.fractions)), args.seed)
    path = write_datalist(splits, args.out)
    for line in result.skipped:
        print(f"skipped {line}", file=sys.stderr)
    counts = ", ".join(f"{name} {len(items)}" for name, items in splits.items())
    print(f"{path}: {counts} items; {len(result.skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
