"""Check a label map returned by MONAI Label for one synthetic mammogram (scripts/monailabel_smoke.sh).

Reads the returned label file, the original image and (optionally) the phantom's planted lesion masks, and
checks what a MONAI Label client (3D Slicer, OHIF) relies on:

- size and orientation: the label has the original image's (H, W) as a PNG viewer sees it (rows x columns),
  not the transposed (W, H);
- values: an integer map (uint8) holding only 0 background, 1 benign, 2 malignant;
- ``--mirror_of OTHER``: this label was returned for the left-right mirror image of OTHER's image. The bundle
  turns every breast to face the same way, so both images reach the network as the same model-frame image and
  the labels must be exact mirrors of each other, whatever the weights: this shows that the flip (and the crop and
  window around it) were undone in the right order;
- ``--all_breast`` (inference requested with threshold 0, so that every pixel with a saliency gets a class):
  the labelled pixels cover the breast of the original image (the threshold reaches the bundle); the share lying
  on the breast's bounding box is shown for information;
- lesions: the share of each planted lesion's pixels labelled with its class, compared with the same label
  flipped left-right and upside-down; required only with ``--require_lesions`` (a trained checkpoint).

Prints one line per check ("ok" / "FAIL") and exits 1 if any required check fails, 2 on unreadable input.

Example::

    python scripts/monailabel_check_label.py --label out/label.png --image studies/phantom_0002_L-CC.png \
        --mask malignant=phantoms/masks/phantom_0002_L-CC_malignant.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

CLASS_VALUES = {"benign": 1, "malignant": 2}


def read_2d(path: str) -> np.ndarray:
    """A 2-D array (rows, columns) of a PNG/JPEG/TIFF as PIL reads it (PNG's own row order), else via ITK."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.array(im)
    except Exception:  # not a PIL format (e.g. .nii.gz, .nrrd): ITK's array is (…, rows, columns) as well
        import itk

        arr = itk.array_from_image(itk.imread(path))
    return arr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True, help="label file returned by POST /infer/<model>?output=image")
    p.add_argument("--image", required=True, help="the original image the inference was asked for")
    p.add_argument("--mask", action="append", default=[], metavar="CLASS=PATH",
                   help="planted lesion mask of the phantom (0/255 PNG), CLASS benign or malignant; repeatable")
    p.add_argument("--mirror_of", metavar="OTHER_LABEL",
                   help="label returned for the image this one mirrors left-right: must be its exact mirror")
    p.add_argument("--min_mirror_agree", type=float, default=0.99,
                   help="--mirror_of: share of pixels that must equal the other label's mirror (default 0.99)")
    p.add_argument("--all_breast", action="store_true",
                   help="the label was requested with threshold 0: check it covers the breast and only the breast")
    p.add_argument("--min_breast_cover", type=float, default=0.95,
                   help="--all_breast: share of breast pixels that must be labelled (default 0.95)")
    p.add_argument("--min_on_breast", type=float, default=0.90,
                   help="--all_breast: share of labelled pixels expected within the breast's bounding box "
                        "widened by --margin (shown, not required; default 0.90)")
    p.add_argument("--margin", type=float, default=0.1,
                   help="--all_breast: widening of the breast's bounding box, as a share of the image size")
    p.add_argument("--require_lesions", action="store_true",
                   help="fail unless the planted lesions are labelled (needs a trained checkpoint)")
    p.add_argument("--min_lesion_hit", type=float, default=0.3,
                   help="--require_lesions: share of a lesion's pixels that must carry its class (default 0.3)")
    args = p.parse_args(argv)

    try:
        label = read_2d(args.label)
        image = read_2d(args.image)
        masks = {}
        for item in args.mask:
            name, _, path = item.partition("=")
            if name not in CLASS_VALUES or not path:
                p.error(f"--mask {item!r}: expected benign=PATH or malignant=PATH")
            masks[name] = read_2d(path) > 0
    except Exception as exc:  # noqa: BLE001 - report any unreadable input on one line
        print(f"FAIL cannot read input: {type(exc).__name__}: {exc}")
        return 2

    failures = []

    def check(ok: bool, text: str, required: bool = True) -> None:
        tag = "ok  " if ok else ("FAIL" if required else "info")
        print(f"{tag} {text}")
        if required and not ok:
            failures.append(text)

    image = np.squeeze(image)
    raw_shape = label.shape
    label = np.squeeze(label)
    print(f"label {args.label}: shape {raw_shape} dtype {label.dtype}; image {args.image}: shape {image.shape}")
    check(label.ndim == 2, f"label is 2-D (got shape {raw_shape})")
    if label.ndim != 2:
        return 1
    transposed = label.shape == image.shape[::-1] and label.shape != image.shape
    check(label.shape == image.shape,
          f"label size (H, W) = {label.shape} equals the image's {image.shape}"
          + (" [the label is TRANSPOSED: written in the reader's (H, W) order, MONAI Label writes (W, H)]"
             if transposed else ""))
    check(label.dtype == np.uint8, f"label dtype {label.dtype} is uint8")
    values = np.unique(label)
    shown = values[:10].tolist() + (["..."] if values.size > 10 else [])
    check(bool(np.isin(values, [0, 1, 2]).all()), f"label values {shown} are within {{0, 1, 2}}")
    counts = {int(v): int((label == v).sum()) for v in values[:10]}
    print(f"     pixel counts per value: {counts}")

    if label.shape != image.shape:
        print("FAIL: the geometry checks need the label at the image's size; skipped")
        return 1

    breast = image > 0
    labelled = label > 0
    if args.all_breast:
        rows, cols = np.nonzero(breast)
        if rows.size == 0:
            print("FAIL the image has no breast pixels (> 0)")
            return 2
        h, w = image.shape
        mr, mc = int(round(args.margin * h)), int(round(args.margin * w))
        box = np.zeros_like(breast)
        box[max(rows.min() - mr, 0): rows.max() + mr + 1, max(cols.min() - mc, 0): cols.max() + mc + 1] = True
        cover = labelled[breast].mean()
        cover_lr = np.fliplr(labelled)[breast].mean()
        on_box = box[labelled].mean() if labelled.any() else 0.0
        check(cover >= args.min_breast_cover,
              f"labelled pixels cover {cover:.1%} of the breast (>= {args.min_breast_cover:.0%}; "
              f"the label flipped left-right would cover {cover_lr:.1%})")
        check(on_box >= args.min_on_breast,
              f"{on_box:.1%} of the labelled pixels lie on the breast's bounding box +{args.margin:.0%} "
              f"(>= {args.min_on_breast:.0%} expected)", required=False)

    if args.mirror_of:
        try:
            other = np.squeeze(read_2d(args.mirror_of))
        except Exception as exc:  # noqa: BLE001
            print(f"FAIL cannot read --mirror_of {args.mirror_of}: {type(exc).__name__}: {exc}")
            return 2
        if other.shape != label.shape:
            check(False, f"mirror: the other label's shape {other.shape} differs from {label.shape}")
        else:
            agree = (label == np.fliplr(other)).mean()
            agree_plain = (label == other).mean()
            check(agree >= args.min_mirror_agree,
                  f"this label equals the mirror image of {args.mirror_of} on {agree:.2%} of the pixels "
                  f"(>= {args.min_mirror_agree:.0%}; unmirrored: {agree_plain:.2%})")

    for name, mask in masks.items():
        if mask.shape != image.shape:
            check(False, f"mask {name}: shape {mask.shape} differs from the image's {image.shape}")
            continue
        if not mask.any():
            print(f"info mask {name} is empty")
            continue
        value = CLASS_VALUES[name]
        hit = (label[mask] == value).mean()
        hit_any = labelled[mask].mean()
        hit_lr = (np.fliplr(label)[mask] == value).mean()
        hit_ud = (np.flipud(label)[mask] == value).mean()
        check(hit >= args.min_lesion_hit,
              f"planted {name} lesion ({int(mask.sum())} px): {hit:.1%} labelled {value} ({name}), "
              f"{hit_any:.1%} labelled non-zero; flipped left-right {hit_lr:.1%}, upside-down {hit_ud:.1%}",
              required=args.require_lesions)
        if args.require_lesions:
            check(hit >= max(hit_lr, hit_ud), f"{name}: the label lines up with the lesion at least as well as its flips")

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
