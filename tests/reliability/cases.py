"""Fault cases shared by ``scripts/fault_suite.py`` and the tests in ``tests/reliability/``.

Builders of hostile files (images, datalists, checkpoints, pickles), the tiny settings under which the bundle's
real configs run in seconds, the runner of ``python -m monai.bundle`` with faults (:mod:`.bundle_driver`), and the
checks that read a run's outputs back. The huge-header writers come from ``test_reader_limits``, the hostile
checkpoint from ``test_hostile_checkpoints`` and the DICOM writer from ``tests/dicom_helpers``.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from glam_bundle.constants import TINY_NETWORK
from tests.conftest import REPO_ROOT
from tests.dicom_helpers import write_dicom
from tests.reliability.test_hostile_checkpoints import CreatesMarker, write_hostile
from tests.reliability.test_reader_limits import HOSTILE as BOMB_WRITERS
from tests.reliability.test_reader_limits import _png_chunk

__all__ = [
    "TINY", "TINY_TRAINING", "IMAGE_CASES", "ImageCase", "variant_image_cases", "make_phantoms", "build_image_cases",
    "tiny_args", "run_bundle", "inference_args", "one_line_error", "read_csv", "check_inference", "write_hostile",
    "CreatesMarker", "BOMB_WRITERS", "DATALIST_CASES", "hostile_exam_list", "load_every_pt", "temporary_leftovers",
]

INFERENCE_CONFIG = "configs/inference.json"
TRAIN_CONFIG = "configs/train_global.json"

# The demo preset's 368x240 frame (1/8 of the paper's) with a narrow network: a run takes seconds on one core.
TINY = {
    "image_size": [368, 240],
    "crop_size": [64, 64],
    "geometry_scale": 0.125,
    "num_workers": 0,
    **{f"network_def#{k}": v for k, v in TINY_NETWORK.items()},
}
TINY_TRAINING = {**TINY, "max_crop_noise": [12, 12], "max_crop_size_noise": 12, "cache": "none", "batch_size": 2}
H, W = 368, 240  # the phantoms' size, also that of the hand-made good images


def tiny_args(settings: dict) -> list[str]:
    """``--key value`` command-line arguments (values as JSON, which MONAI's parser reads)."""
    args = []
    for key, value in settings.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def make_phantoms(folder: Path, n_images: int = 3, seed: int = 1, fractions: dict | None = None) -> Path:
    """Phantom mammograms at the tiny frame; returns the datalist JSON."""
    from glam_bundle.data.phantom import generate_dataset

    return generate_dataset(folder, n_images=n_images, height=H, width=W, seed=seed, fractions=fractions,
                            prevalence={"benign": 0.5, "malignant": 0.5})


# ----------------------------------------------------------------------------------------------- hostile images
def _ramp(h: int = H, w: int = W, dtype=np.uint16) -> np.ndarray:
    return ((np.arange(h * w).reshape(h, w) * 7) % 4000 + 50).astype(dtype)


def _random_after_png_header(path: Path, good: Path) -> None:
    """A valid signature and IHDR (H x W, 16-bit gray), then random bytes."""
    ihdr = struct.pack(">IIBBBBB", W, H, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + np.random.default_rng(0).bytes(5000))


def _random_idat_png(path: Path, good: Path) -> None:
    """A well-formed PNG (chunks and CRCs valid) whose IDAT holds random bytes instead of zlib data."""
    ihdr = struct.pack(">IIBBBBB", W, H, 16, 0, 0, 0, 0)
    idat = np.random.default_rng(1).bytes(20000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def _random_after_dicom_preamble(path: Path, good: Path) -> None:
    path.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(2).bytes(4000))


def _random_dicom_pixels(path: Path, good: Path) -> None:
    """A valid DICOM header whose pixel data are random bytes of the right length: a noise image (it may load)."""
    pixels = np.frombuffer(np.random.default_rng(3).bytes(H * W * 2), dtype=np.uint16).reshape(H, W) % 4096
    write_dicom(path, pixels.copy(), bits_stored=12)


def _random_after_nifti_header(path: Path, good: Path) -> None:
    """A NIfTI-1 header declaring H x W uint16, then too few random bytes."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint16)
    header.set_data_shape((H, W))
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * (352 - handle.tell()) + np.random.default_rng(4).bytes(3000))


def _random_nifti_gz(path: Path, good: Path) -> None:
    """Gzip magic, then random bytes."""
    path.write_bytes(b"\x1f\x8b\x08\x00" + np.random.default_rng(5).bytes(3000))


def _truncated(source: Callable[[Path], None], keep: float = 0.5) -> Callable[[Path, Path], None]:
    def build(path: Path, good: Path) -> None:
        source(path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return build


def _good_png(path: Path) -> None:
    Image.fromarray(_ramp()).save(path)


def _good_jpeg(path: Path) -> None:
    Image.fromarray((_ramp() // 16).astype(np.uint8)).save(path, quality=90)


def _good_dicom(path: Path) -> None:
    write_dicom(path, _ramp() % 4096, bits_stored=12)


def _good_nifti_gz(path: Path) -> None:
    nib.save(nib.Nifti1Image(_ramp().astype(np.float32), np.eye(4)), path)


def _bomb(name: str) -> Callable[[Path, Path], None]:
    return lambda path, good: BOMB_WRITERS[name](path)


def _gzip_bomb_nifti(path: Path, good: Path) -> None:
    """A real compression bomb: a .nii.gz whose header declares 13,000 x 13,000 and whose gzip stream inflates
    to its 338 MB of zeros (about 330 KB on disk)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint16)
    header.set_data_shape((13000, 13000))
    raw = Path(str(path) + ".raw")
    with open(raw, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * (352 - handle.tell()))
    with gzip.open(path, "wb", compresslevel=9) as out, open(raw, "rb") as head:
        out.write(head.read())
        zeros = b"\0" * (1 << 22)
        for _ in range(13000 * 13000 * 2 // len(zeros) + 1):
            out.write(zeros)
    raw.unlink()


def _dicom_without_pixels(path: Path, good: Path) -> None:
    write_dicom(path, None, Laterality="L")


def _dicom_inconsistent_rows(path: Path, good: Path) -> None:
    """Rows/Columns say H x W; the pixel data hold a quarter of that."""
    write_dicom(path, _ramp(H // 2, W // 2) % 4096, bits_stored=12)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.Rows, ds.Columns = H, W
    ds.save_as(path)


def _three_channel(path: Path, good: Path) -> None:
    # colour content (a gray image stored as RGB is read as gray)
    gray = (_ramp() // 16).astype(np.uint8)
    Image.fromarray(np.stack([gray, gray // 2, np.zeros_like(gray)], axis=-1)).save(path)


def _one_pixel(path: Path, good: Path) -> None:
    Image.fromarray(np.full((1, 1), 1000, np.uint16)).save(path)


def _constant(path: Path, good: Path) -> None:
    Image.fromarray(np.full((H, W), 700, np.uint16)).save(path)


def _nifti_values(value: float) -> Callable[[Path, Path], None]:
    def build(path: Path, good: Path) -> None:
        pixels = _ramp().astype(np.float32)
        pixels[10:20, 10:20] = value
        nib.save(nib.Nifti1Image(pixels, np.eye(4)), path)
    return build


def _empty(path: Path, good: Path) -> None:
    path.write_bytes(b"")


def _copy_good(path: Path, good: Path) -> None:
    shutil.copyfile(good, path)


def _symlink_loop(path: Path, good: Path) -> None:
    other = path.with_name("loop_b.png")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def _directory(path: Path, good: Path) -> None:
    path.mkdir()


def _unreadable(path: Path, good: Path) -> None:
    """A good image with mode 000; the runs deny reading it (bundle_driver's GLAM_FAULT_DENY_READ), since root
    reads a mode-000 file."""
    shutil.copyfile(good, path)
    os.chmod(path, 0)


@dataclass
class ImageCase:
    """One hostile (or awkward but valid) input image.

    ``expect``: "fail" (must be listed in failures.csv with a message naming the file, and ``phrase`` in it),
    "ok" (must be processed: a row in predictions.csv and both output files), "either" (a valid image with odd
    content, e.g. random pixels: either is handled). ``name`` is the file name in the folder of cases;
    ``datalist_path`` overrides the path written in the datalist (relative to the data folder, may leave it).
    """

    fault: str
    name: str
    build: Callable[[Path, Path], None]
    expect: str = "fail"
    phrase: str = ""
    datalist_path: str | None = None
    tags: tuple = field(default_factory=tuple)


UNREADABLE_MARK = "unreadable"

IMAGE_CASES: list[ImageCase] = [
    ImageCase("random bytes behind a header", "random_after_header.png", _random_after_png_header),
    ImageCase("random bytes behind a header", "random_idat.png", _random_idat_png),
    ImageCase("random bytes behind a header", "random_after_preamble.dcm", _random_after_dicom_preamble),
    ImageCase("random bytes behind a header", "random_pixels.dcm", _random_dicom_pixels, expect="either"),
    ImageCase("random bytes behind a header", "random_after_header.nii", _random_after_nifti_header),
    ImageCase("random bytes behind a header", "random_after_gzip.nii.gz", _random_nifti_gz),
    ImageCase("truncated file", "truncated.png", _truncated(_good_png)),
    ImageCase("truncated file", "truncated.jpg", _truncated(_good_jpeg)),
    ImageCase("truncated file", "truncated.dcm", _truncated(_good_dicom, 0.6)),
    ImageCase("truncated file", "truncated.nii.gz", _truncated(_good_nifti_gz)),
    *[ImageCase("decompression bomb (header declares 13,000 x 13,000)", f"bomb{Path(n).suffix}", _bomb(n),
                phrase="declares 13000x13000") for n in sorted(BOMB_WRITERS)],
    ImageCase("decompression bomb (header declares 13,000 x 13,000)", "bomb_zeros.nii.gz", _gzip_bomb_nifti,
              phrase="declares 13000x13000", tags=("slow",)),
    ImageCase("DICOM without pixel data", "no_pixels.dcm", _dicom_without_pixels, phrase="no pixel data"),
    ImageCase("DICOM with inconsistent Rows/Columns", "inconsistent_rows.dcm", _dicom_inconsistent_rows),
    ImageCase("colour image", "colour.png", _three_channel, phrase="3 channels) in colour"),
    ImageCase("1-pixel image", "one_pixel.png", _one_pixel, phrase="smaller than"),
    ImageCase("constant image", "constant.png", _constant, phrase="constant image"),
    ImageCase("NaN/inf in NIfTI", "nan.nii.gz", _nifti_values(np.nan), phrase="non-finite"),
    ImageCase("NaN/inf in NIfTI", "inf.nii.gz", _nifti_values(np.inf), phrase="non-finite"),
    *[ImageCase("empty file", f"empty{suffix}", _empty, phrase="empty file (0 bytes)")
      for suffix in (".png", ".dcm", ".nii.gz", ".jpg")],
    ImageCase("path with spaces / non-ASCII name", "name with spaces.png", _copy_good, expect="ok"),
    ImageCase("path with spaces / non-ASCII name", "ünïcødé 乳房 ✓.png", _copy_good, expect="ok"),
    ImageCase("symlink loop", "loop_a.png", _symlink_loop, phrase="symbolic link that leads to no file"),
    ImageCase("unreadable permissions (simulated: root reads mode 000)", f"{UNREADABLE_MARK}.png", _unreadable,
              phrase="Permission denied"),
    ImageCase("missing file / folder as image", "missing.png", lambda path, good: None, phrase="file not found"),
    ImageCase("missing file / folder as image", "folder.png", _directory, phrase="is a directory"),
    ImageCase("datalist path outside the data root", "outside", lambda path, good: None,
              datalist_path="../outside_root/notes"),
]


def _random_after_png_header_seeded(seed: int) -> Callable[[Path, Path], None]:
    def build(path: Path, good: Path) -> None:
        ihdr = struct.pack(">IIBBBBB", W, H, 16, 0, 0, 0, 0)
        rng = np.random.default_rng(100 + seed)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rng.bytes(20000))
                         + _png_chunk(b"IEND", b""))
    return build


def _random_after_dicom_seeded(seed: int) -> Callable[[Path, Path], None]:
    def build(path: Path, good: Path) -> None:
        _good_dicom(path)
        data = path.read_bytes()
        keep = len(data) - H * W * 2  # the header and the pixel data element's tag; random pixel bytes after it
        path.write_bytes(data[:keep] + np.random.default_rng(200 + seed).bytes(H * W))
    return build


def _random_after_nifti_seeded(seed: int) -> Callable[[Path, Path], None]:
    def build(path: Path, good: Path) -> None:
        _random_after_nifti_header(path, good)
        data = path.read_bytes()
        path.write_bytes(data[:352] + np.random.default_rng(300 + seed).bytes(1000 + 997 * seed))
    return build


def variant_image_cases(n_seeds: int = 3, fractions: Sequence[float] = (0.05, 0.5, 0.95)) -> list[ImageCase]:
    """More cases of the same faults for the fault suite: random bytes behind PNG/DICOM/NIfTI headers with
    ``n_seeds`` seeds each, and every readable format truncated at each of ``fractions``."""
    cases = []
    for seed in range(n_seeds):
        cases += [
            ImageCase("random bytes behind a header", f"random_png_{seed}.png", _random_after_png_header_seeded(seed)),
            ImageCase("random bytes behind a header", f"random_dicom_{seed}.dcm", _random_after_dicom_seeded(seed)),
            ImageCase("random bytes behind a header", f"random_nifti_{seed}.nii", _random_after_nifti_seeded(seed)),
        ]
    writers = {".png": _good_png, ".jpg": _good_jpeg, ".dcm": _good_dicom, ".nii.gz": _good_nifti_gz}
    for fraction in fractions:
        for suffix, writer in writers.items():
            cases.append(ImageCase("truncated file", f"truncated_{int(fraction * 100)}{suffix}",
                                   _truncated(writer, fraction)))
    return cases


def build_image_cases(folder: Path, good_image: Path, cases: Sequence[ImageCase] = IMAGE_CASES,
                      skip_tags: Sequence[str] = ()) -> list[tuple[ImageCase, Path]]:
    """Write every case into ``folder`` (made from the good image ``good_image`` where they need one); returns
    (case, the path the datalist names)."""
    folder.mkdir(parents=True, exist_ok=True)
    built = []
    for case in cases:
        if set(case.tags) & set(skip_tags):
            continue
        path = folder / case.name
        case.build(path, good_image)
        if case.datalist_path is not None:
            path = Path(os.path.normpath(folder / case.datalist_path))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("root:x:0:0:root:/root:/bin/bash\n")  # a text file outside the data root
        built.append((case, path))
    return built


# --------------------------------------------------------------------------------------------------- running
def run_bundle(args: Sequence[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` from the repository root, through :mod:`.bundle_driver` (faults from
    ``env``: ``GLAM_FAULT_*``), one thread."""
    command = [sys.executable, "-m", "tests.reliability.bundle_driver", *args]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    full_env.pop("GLAM_DEBUG", None)
    return subprocess.run(command, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def inference_args(output_dir: Path, dataset_dir: Path | None = None, datalist: Path | None = None,
                   extra: dict | None = None) -> list[str]:
    args = ["run", "--config_file", INFERENCE_CONFIG, "--output_dir", str(output_dir), "--allow_random_weights",
            "true"]
    if datalist is not None:
        args += ["--datalist", str(datalist), "--dataset_dir", str(datalist.parent)]
    else:
        args += ["--dataset_dir", str(dataset_dir)]
    return args + tiny_args({**TINY, **(extra or {})})


# ----------------------------------------------------------------------------------------------- checking
def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def one_line_error(stderr: str) -> str:
    """The run's ``error: ...`` line ("" when there is none)."""
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    return lines[-1] if lines else ""


@dataclass
class CaseResult:
    fault: str
    name: str
    expect: str
    outcome: str  # "failed (named)", "processed", "failed (unnamed)", "absent"
    handled: bool
    message: str = ""


def check_inference(output_dir: Path, built: Sequence[tuple[ImageCase, Path]], good: Sequence[Path]) -> dict:
    """Read a finished inference run back: each case's outcome, and the good images' outputs.

    A failing case is handled when failures.csv lists its path with a one-line message that starts with the path
    (the reader's named error) and holds its ``phrase``; a processed case when predictions.csv has its row and
    both of its output files exist and load. Returns {"cases": [CaseResult], "good_lost": [paths of good images
    without complete outputs], "duplicates": [images with more than one row]}.
    """
    predictions = read_csv(output_dir / "predictions.csv") if (output_dir / "predictions.csv").exists() else []
    failures = read_csv(output_dir / "failures.csv") if (output_dir / "failures.csv").exists() else []
    rows = {os.path.normpath(r["image"]): r for r in predictions}
    failed = {os.path.normpath(r["image"]): r["error"] for r in failures}

    def complete(row: dict) -> bool:
        try:
            nib.load(output_dir / row["saliency_file"]).get_fdata()
            with Image.open(output_dir / row["figure_file"]) as figure:
                figure.load()
            return True
        except Exception:
            return False

    results = []
    for case, path in built:
        key = os.path.normpath(str(path))
        if key in failed:
            message = failed[key]
            named = message.startswith(f"{path}: ") and "\n" not in message and case.phrase in message
            outcome = "failed (named)" if named else "failed (unnamed)"
            handled = named and case.expect in ("fail", "either")
        elif key in rows:
            message = ""
            outcome = "processed" if complete(rows[key]) else "processed (outputs incomplete)"
            handled = outcome == "processed" and case.expect in ("ok", "either")
        else:
            message, outcome, handled = "", "absent", False
        results.append(CaseResult(case.fault, case.name, case.expect, outcome, handled, message))
    good_lost = [str(p) for p in good if os.path.normpath(str(p)) not in rows
                 or not complete(rows[os.path.normpath(str(p))])]
    images = [r["image"] for r in predictions]
    duplicates = sorted({i for i in images if images.count(i) > 1})
    return {"cases": results, "good_lost": good_lost, "duplicates": duplicates}


def load_every_pt(folder: Path) -> dict[str, str]:
    """Every ``*.pt`` file under ``folder`` (hidden ones too) -> "" when ``torch.load(weights_only=True)`` reads
    it, else the error."""
    import torch

    from glam_bundle.data.cache import allow_cached_meta

    allow_cached_meta()
    results = {}
    for path in sorted(folder.rglob("*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            results[str(path)] = ""
        except Exception as error:  # noqa: BLE001 -- any error means the file is unusable
            text = str(error).strip()
            results[str(path)] = f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"
    return results


def temporary_leftovers(folder: Path) -> list[str]:
    """Hidden temporary files (``atomic_output``'s ``.<stem>.<random><suffix>``, ignite's ``tmp*``) under ``folder``."""
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and (p.name.startswith(".") or
                                                                         p.name.startswith("tmp")))


# --------------------------------------------------------------------------------------- datalists and pickles
def _datalist_cases(root: Path, image: str) -> dict[str, tuple[object, str]]:
    """name -> (JSON content, phrase expected in the error)."""
    return {
        "item without \"image\"": ({"test": [{"benign": 0}]}, 'has no "image" path'),
        "\"image\" of the wrong type": ({"test": [{"image": 3}]}, 'has no "image" path'),
        "label of the wrong type": ({"test": [{"image": image, "benign": "yes"}]}, "must be 0 or 1"),
        "split of the wrong type": ({"test": {"image": image}}, "expected a list"),
        "top level a list": ([{"image": image}], "expected an object of splits"),
        "view of the wrong value": ({"test": [{"image": image, "view": "LAT"}]}, "must be CC or MLO"),
        "not JSON": ("{'test': [", "invalid JSON"),
    }


DATALIST_CASES = _datalist_cases


def write_datalist_case(folder: Path, name: str, content: object) -> Path:
    path = folder / (name.replace(" ", "_").replace('"', "") + ".json")
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def hostile_exam_list(folder: Path) -> tuple[Path, Path]:
    """An NYU-style exam-list pickle whose unpickling would create a marker file; (pickle, marker)."""
    marker = folder / "marker_exam_list_code_ran"
    path = folder / "exam_list_hostile.pkl"
    path.write_bytes(pickle.dumps([{"horizontal_flip": "NO", "L-CC": [CreatesMarker(marker)]}], protocol=2))
    return path, marker



# --- corrupt disk-cache entries ----------------------------------------------------------------------------------

def cached_one_image(folder: Path):
    """A disk-cached dataset of one small image in ``folder``: (dataset, its cache entry file, the entry's bytes,
    the image the item holds)."""
    import torch
    from monai.transforms import Compose, EnsureTyped, LoadImaged

    from glam_bundle.data.cache import make_cached_dataset
    from glam_bundle.data.readers import MammogramReader

    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "a.png"
    Image.fromarray(((np.arange(100 * 80).reshape(100, 80) * 7) % 4000 + 50).astype(np.uint16)).save(image)
    transform = Compose([LoadImaged(keys="image", reader=MammogramReader(min_size=0)), EnsureTyped(keys="image")])
    dataset = make_cached_dataset([{"image": str(image)}], transform, cache_dir=folder / "cache", cache="disk")
    expected = torch.as_tensor(dataset[0]["image"])
    entry = dataset._hashfile(dataset.data[0])
    return dataset, entry, entry.read_bytes(), expected


def corrupt_cache_entry(entry: Path, good: bytes, kind: str, marker: Path) -> None:
    """Overwrite a cache entry: "truncated", "truncated to 10 bytes", "garbage", "empty", "zeros" or "hostile" (a
    pickle whose loading would create ``marker``)."""
    import torch

    writers = {
        "truncated": lambda: entry.write_bytes(good[: len(good) // 2]),
        "truncated to 10 bytes": lambda: entry.write_bytes(good[:10]),
        "garbage": lambda: entry.write_bytes(np.random.default_rng(0).bytes(3000)),
        "empty": lambda: entry.write_bytes(b""),
        "zeros": lambda: entry.write_bytes(b"\0" * len(good)),
        "hostile": lambda: torch.save({"image": CreatesMarker(marker)}, entry),
    }
    writers[kind]()


CACHE_CORRUPTIONS = ("truncated", "truncated to 10 bytes", "garbage", "empty", "zeros", "hostile")
