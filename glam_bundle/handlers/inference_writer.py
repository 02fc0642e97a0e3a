"""Handler writing the outputs of GLAM inference: predictions.csv, NIfTI saliency maps, figures, failures.csv."""

from __future__ import annotations

import atexit
import csv
import logging
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from glam_bundle import distributed
from glam_bundle.atomic_io import atomic_output, save_png_atomic, write_csv
from glam_bundle.data.failures import write_failures_csv
from glam_bundle.data.folder import OUTPUT_NAME_KEY, image_stem
from glam_bundle.data.samplers import wrapped_datasets
from glam_bundle.errors import AllCasesFailedError, is_disk_full
from glam_bundle.visualize import save_glam_figure

__all__ = ["PREDICTION_COLUMNS", "META_COLUMNS", "GLAMInferenceWriter"]

logger = logging.getLogger(__name__)

# Image meta keys written as columns when the preprocessing records them (empty otherwise).
META_COLUMNS = (
    "view", "view_source", "laterality", "laterality_source", "film", "film_source", "pixel_spacing_mm",
    "source_spacing_mm", "spacing_source", "inverted", "flipped", "flipped_vertically", "orientation_rule",
)
# The first six columns are those of 0.1.0, in their order; new columns come after them.
PREDICTION_COLUMNS = (
    "image", "benign_pred", "malignant_pred", "benign_label", "malignant_label", "patch_locations",
    "saliency_file", "figure_file", *META_COLUMNS,
)
_MISSING = {"", "none", "None", "nan"}


def _image_paths(batch: Mapping[str, Any], size: int) -> list[str]:
    meta = getattr(batch.get("image"), "meta", {}) or {}
    names = meta.get("filename_or_obj", [""] * size)
    return [str(names)] if isinstance(names, str) else [str(n) for n in names]


def _format_value(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return " ".join(_format_value(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):g}"
    text = str(value)
    return "" if text in _MISSING else text


def _batch_entry(value: Any, i: int, size: int) -> Any:
    """Entry ``i`` of a collated value: a list of ``size`` entries, a tensor of ``size`` rows, or a tuple of
    per-position tensors (how ``default_collate`` batches a pair such as a (row, column) spacing)."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value[i] if value.ndim >= 1 and value.shape[0] == size else value
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim >= 1 and v.shape[0] == size
                         for v in value):
            return [v[i] for v in value]
        if len(value) == size:
            return value[i]
    return value


def _case_value(batch: Mapping[str, Any], key: str, i: int, size: int) -> str:
    """``key`` of case ``i`` from the image meta, else from the batch (items' keys), as CSV text.

    A missing value (``"none"``, MONAI's placeholder) is written empty, except in the ``*_source`` columns,
    where ``none`` says that the preprocessing found no source (e.g. no pixel spacing). A zero spacing is a
    placeholder for an unknown one and is written empty too.
    """
    meta = getattr(batch.get("image"), "meta", {}) or {}
    for source in (meta, batch):
        if key not in source:
            continue
        value = _batch_entry(source[key], i, size)
        text = _format_value(value)
        if not text and key.endswith("_source") and isinstance(value, str) and value.lower() == "none":
            return "none"
        if key.endswith("spacing_mm") and text and all(float(v) <= 0 for v in text.split()):
            text = ""
        if text:
            return text
    return ""


def _same_path(path: str) -> str:
    """``path`` absolute and normalised, to compare an item's image with a row's."""
    return os.path.normpath(os.path.abspath(str(path)))


def _read_partial_rows(partial: Path, output_dir: Path) -> list[dict[str, str]]:
    """The rows of a killed run's ``predictions.csv.partial`` that are complete: a whole line (a kill can cut the
    last one), an image not seen before, and every output file it names present. [] without the file."""
    try:
        text = partial.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows, seen = [], set()
    for row in csv.DictReader(text.splitlines(keepends=True)):
        image = row.get("image") or ""
        files = [row.get(key) or "" for key in ("saliency_file", "figure_file")]
        if (not image or _same_path(image) in seen or None in row or None in row.values()
                or any(name and not (output_dir / name).is_file() for name in files)):
            continue
        seen.add(_same_path(image))
        rows.append({key: row.get(key) or "" for key in PREDICTION_COLUMNS})
    return rows


def _dataset_items(engine: Engine) -> tuple[Any, Any]:
    """(data loader, the innermost dataset holding a ``data`` list) of the engine; the dataset is None without one.
    The items are the ``data`` list of the dataset, found through wrappers' ``dataset`` attributes
    (``SkipBadCases`` around MONAI's ``Dataset``)."""
    loader = getattr(engine.state, "dataloader", None) or getattr(engine, "data_loader", None)
    datasets = wrapped_datasets(getattr(loader, "dataset", None))
    return loader, next((d for d in datasets if isinstance(getattr(d, "data", None), list)), None)


def _in_dataset_order(engine: Engine, records: list[dict[str, str]]) -> list[dict[str, str]]:
    """``records`` (dicts with an ``"image"``) sorted by their image's position in the engine's dataset, as a
    single process writes them; records of images not found keep their order at the end."""
    _, dataset = _dataset_items(engine)
    positions: dict[str, int] = {}
    for index, item in enumerate(dataset.data if dataset is not None else []):
        if isinstance(item, Mapping):
            positions.setdefault(_same_path(item.get("image", "")), index)
    return sorted(records, key=lambda record: positions.get(_same_path(record.get("image", "")), len(positions)))


def _skip_done_items(engine: Engine, done: set[str]) -> int | None:
    """Drop from the engine's dataset the items whose ``"image"`` is in ``done`` (normalised paths) and shorten
    the epoch to match (called at ``STARTED``, before the data loader's iterator is made). The items are the
    ``data`` list of the dataset, found through wrappers' ``dataset`` attributes (``SkipBadCases`` around MONAI's
    ``Dataset``). Returns how many items remain, or None when there is no such list."""
    loader, dataset = _dataset_items(engine)
    if dataset is None or not hasattr(loader, "__len__"):
        return None
    dataset.data = [item for item in dataset.data
                    if not (isinstance(item, Mapping) and _same_path(item.get("image", "")) in done)]
    engine.state.epoch_length = len(loader)
    return len(dataset.data)


def _label_text(value: float) -> str:
    return "" if value < 0 else str(int(round(value)))


class GLAMInferenceWriter:
    """Ignite handler writing the outputs of GLAM inference into ``output_dir``.

    Per image: ``<name>_saliency.nii.gz`` (float32 array 2×H×W: benign, malignant; identity affine) and
    ``<name>_figure.png`` (input with ground truth, selected patches, saliency overlays). ``<name>`` is the
    batch's ``"output_name"`` (set by :func:`glam_bundle.data.datalist.load_inference_data`: the path relative
    to the input folder without the image suffix, sub-folders joined by ``"__"``), else the file name without
    its image suffix (every other dot kept: ``1.2.840.1.dcm`` → ``1.2.840.1``); a name already written in the
    run gets ``_2``, ``_3``, ... For the run: ``predictions.csv`` (``PREDICTION_COLUMNS``: image,
    benign_pred, malignant_pred, labels when known, patch corners, then the output files relative to
    ``output_dir`` and, when the image meta holds them, view, laterality, film and pixel spacing with their
    sources, ``inverted`` and the orientation: ``META_COLUMNS``) and ``failures.csv`` (image, error) with the
    cases that could not be read or written. All files appear atomically; while the run goes on, rows are
    appended (and flushed) to ``predictions.csv.partial``, so a killed run keeps every finished prediction. At the
    end of the run, :meth:`log_summary` (the config's last run step) logs how many images failed and where they
    are listed; when every image failed the handler raises
    :class:`glam_bundle.errors.AllCasesFailedError` (one line ``error: all N images failed ...``, exit status 2).

    Under ``torchrun`` (``configs/multi_gpu_inference.json``: each rank gets its share of the images from a
    ``DistributedSampler``) every rank writes its images' files and its rows to ``predictions.rank<k>.csv.partial``;
    at the end each part becomes ``predictions.rank<k>.csv`` (atomically), rank 0 gathers the rows and failures of
    every rank and writes the one ``predictions.csv`` and ``failures.csv`` in dataset order, and the parts are
    removed. A killed run is not resumed under torchrun (its parts are left, the next run processes every image);
    the error for all images failing counts the images of all ranks.

    Expects the engine's ``state.output`` to hold "pred" (the network's dict, batched) and "label"
    (N, 2) with -1 for unknown, and ``state.batch`` to hold "image" (a MetaTensor with filenames) and,
    when available, "mask" (N, 2, H, W) and "has_mask" (N, 2).

    Args:
        output_dir: destination folder.
        write_saliency: write the NIfTI maps.
        write_figures: write the PNG figures.
        crop_size: patch size drawn on the figures.
        prediction_key: entry of the network output used for benign_pred / malignant_pred.
        label_transform: when given, also ``<name>_label.png``: the label map of S_c on the *input image's* pixels
            (uint8, 0 background, 1 benign, 2 malignant), made by this callable from ``{"pred": S_c (2, H, W)
            MetaTensor, "image": the case's preprocessed image}``; ``configs/inference.json`` gives the same
            ``Invertd`` + :class:`~glam_bundle.transforms.SaliencyToLabeld` steps as its MONAI Label
            post-processing (``--write_label true``). Not listed in ``predictions.csv``.
        background: write each batch's files in a writer thread while the network runs on the next batch
            (``configs/inference.json``: ``write_in_background``). At most one batch is in flight: the next
            iteration first waits for it, so memory stays bounded and a write error that stops the run (a full
            disk) is raised in the engine's thread; the rows keep the input order. The thread finishes its batch
            before the process exits, also when the engine stops on an error.
    """

    def __init__(
        self,
        output_dir: str | Path,
        write_saliency: bool = True,
        write_figures: bool = True,
        crop_size: Sequence[int] = (512, 512),
        prediction_key: str = "y_global",
        label_transform: Callable[[dict], dict] | None = None,
        background: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.background = background
        self.label_transform = label_transform
        self.write_saliency = write_saliency
        self.write_figures = write_figures
        self.crop_size = tuple(crop_size)
        self.prediction_key = prediction_key
        self.num_written = 0
        self.num_failed = 0
        self.write_failures: list[dict[str, str]] = []
        self._stems: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._exit_hook: Callable[[], Any] | None = None
        self._pending: Future | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_iteration)
        engine.add_event_handler(Events.COMPLETED, self.write_failures_file)

    @property
    def _partial_path(self) -> Path:
        if distributed.is_distributed():
            return self.output_dir / f"predictions.rank{distributed.get_rank()}.csv.partial"
        return self.output_dir / "predictions.csv.partial"

    def reset(self, engine: Engine) -> None:
        self.wait()
        self.num_written, self.num_failed, self.write_failures, self._stems = 0, 0, [], set()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if distributed.is_distributed():  # no resume under torchrun (see the class docstring)
            done = []
            if self._partial_path.exists() or (self.output_dir / "predictions.csv.partial").exists():
                logger.warning("inference: a killed run's partial predictions in %s are not resumed under torchrun; "
                               "every image is processed again", self.output_dir)
        else:
            done = _read_partial_rows(self._partial_path, self.output_dir)  # a killed run's finished images
        self._append_partial([], header=True)
        self._resume_done_images(engine, done)

    def _append_partial(self, rows: list[Mapping[str, Any]], header: bool = False) -> None:
        """Append rows to ``predictions.csv.partial`` (with ``header``: start it anew). The file is open only
        while it is written, so a run stopped by an error (a full disk) holds no handle of it."""
        with open(self._partial_path, "w" if header else "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(PREDICTION_COLUMNS))
            if header:
                writer.writeheader()
            writer.writerows(rows)

    def _resume_done_images(self, engine: Engine, rows: list[dict[str, str]]) -> None:
        """Resume a killed run: keep the rows of ``predictions.csv.partial`` whose outputs are complete (``rows``,
        rewritten into the new partial file, their names taken) and drop their images from the engine's dataset,
        so that only the images not yet done are processed. Without a dataset whose items can be dropped (see
        :func:`_skip_done_items`) the killed run's rows are discarded and every image is processed again."""
        if not rows:
            return
        skipped = _skip_done_items(engine, {_same_path(row["image"]) for row in rows})
        if skipped is None:
            logger.warning("inference: %s of a killed run discarded (this dataset's items cannot be skipped); "
                           "every image is processed again", self._partial_path)
            return
        self._append_partial(rows)
        for row in rows:
            stem = row.get("saliency_file") or row.get("figure_file") or ""
            for suffix in ("_saliency.nii.gz", "_figure.png"):
                stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
            if stem:
                self._stems.add(stem.lower())
        self.num_written = len(rows)
        logger.info("inference: resuming a killed run in %s: %d images already done are skipped, %d to go "
                    "(delete %s to process every image again)", self.output_dir, len(rows), skipped,
                    self._partial_path)

    def _unique_stem(self, image_path: str, name: str | None = None) -> str:
        stem = name or image_stem(Path(image_path).name) or "image"
        candidate, counter = stem, 1
        while candidate.lower() in self._stems:  # case-insensitive: unique on every file system
            counter += 1
            candidate = f"{stem}_{counter}"
        self._stems.add(candidate.lower())
        return candidate

    def write_iteration(self, engine: Engine) -> None:
        output = engine.state.output
        if not output:  # every case of the batch failed to load
            return
        cases = self._cases(output, engine.state.batch)
        if not self.background:
            self._write_cases(cases)
            return
        self.wait()  # one batch in flight at most
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glam-inference-writer")
            # a writer dropped after a run stopped by an error (a server goes on) takes its thread with it, so the
            # exit hook holds it weakly
            weakref.finalize(self, self._executor.shutdown, wait=False)
            writer = weakref.ref(self)
            self._exit_hook = lambda: writer() is not None and writer()._finish_quietly()
            # the one-line error exit (glam_bundle.errors) runs atexit functions, not the thread joins
            atexit.register(self._exit_hook)
        self._pending = self._executor.submit(self._write_cases, cases)

    def wait(self) -> None:
        """Wait for the batch the writer thread is writing, raising the error that stopped it (a full disk)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _close_thread(self) -> None:
        """End the writer thread once the run's files are written (a new run starts another)."""
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _finish_quietly(self) -> None:
        """At exit after an error: let the writer thread finish its batch (its error, if any, is already moot)."""
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - the run is ending on another error
            pass

    def _cases(self, output: Mapping, batch: Mapping) -> list[dict[str, Any]]:
        """What the files of each case of the batch are made from, on the CPU (taken in the engine's thread, so
        that the writer thread never touches the engine's state)."""
        pred = output["pred"]
        predictions = pred[self.prediction_key].detach().float().cpu().numpy()
        size = len(predictions)
        labels = output.get("label")
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.full_like(predictions, -1)
        cases = []
        for i, path in enumerate(_image_paths(batch, size)):
            name = _batch_entry(batch.get(OUTPUT_NAME_KEY), i, size)
            case = {
                "path": path,
                "name": str(name) if isinstance(name, str) and name else None,
                "prediction": predictions[i],
                "label": labels[i],
                "locations": pred["patch_locations"][i].detach().cpu().numpy(),
                "meta": {key: _case_value(batch, key, i, size) for key in META_COLUMNS},
            }
            if self.write_saliency or self.write_figures or self.label_transform is not None:
                case["saliency"] = pred["saliency"][i].detach().float().cpu()
            if self.write_figures:
                if "mask" in batch and "has_mask" in batch and bool(batch["has_mask"][i].any()):
                    case["mask"] = batch["mask"][i].detach().cpu().numpy()
                case["image"] = batch["image"][i, 0].detach().float().cpu().numpy()
                case["maps"] = {key: pred[key][i].detach().float().cpu().numpy()
                                for key in ("saliency_global", "saliency_local") if key in pred}
            if self.label_transform is not None:
                # indexing a batched MetaTensor gives the case's own meta and applied_operations (what Invertd undoes)
                case["label_item"] = {"image": batch["image"][i].detach().cpu()}
                if "breast_mask" in batch:  # kept by the chain with mask_saliency_to_breast
                    case["label_item"]["breast_mask"] = batch["breast_mask"][i].detach().cpu()
            cases.append(case)
        return cases

    def _write_cases(self, cases: list[dict[str, Any]]) -> None:
        for case in cases:
            try:
                self._write_case(case)
            except Exception as error:  # keep the batch job going; report the case
                if is_disk_full(error):  # every later case would fail the same way: stop with the disk's message
                    raise
                logger.exception("could not write outputs for %s", case["path"])
                self.write_failures.append({"image": case["path"], "error": f"writing outputs failed: {error}"})

    def _write_case(self, case: Mapping[str, Any]) -> None:
        path, prediction, label, locations = case["path"], case["prediction"], case["label"], case["locations"]
        stem = self._unique_stem(path, case["name"])
        saliency_file = f"{stem}_saliency.nii.gz" if self.write_saliency else ""
        figure_file = f"{stem}_figure.png" if self.write_figures else ""
        if self.write_saliency:
            with atomic_output(self.output_dir / saliency_file) as tmp:
                nib.save(nib.Nifti1Image(case["saliency"].numpy().astype(np.float32, copy=False), np.eye(4)), tmp)
        if self.label_transform is not None:
            self._write_label(stem, case["saliency"], case["label_item"])
        if self.write_figures:
            save_glam_figure(self.output_dir / figure_file, case["image"], case["saliency"].numpy(), locations,
                             self.crop_size, mask=case.get("mask"), title=Path(path).name,
                             predictions={self.prediction_key: prediction.tolist()}, labels=label.tolist(),
                             **case["maps"])
        self._append_partial([{
            "image": path,
            "benign_pred": f"{prediction[0]:.6f}",
            "malignant_pred": f"{prediction[1]:.6f}",
            "benign_label": _label_text(float(label[0])),
            "malignant_label": _label_text(float(label[1])),
            "patch_locations": ";".join(f"{int(r)} {int(c)}" for r, c in locations.reshape(-1, 2)),
            "saliency_file": saliency_file,
            "figure_file": figure_file,
            **case["meta"],
        }])
        self.num_written += 1

    def _write_label(self, stem: str, saliency: torch.Tensor, item: Mapping[str, Any]) -> None:
        """``<stem>_label.png``: the case's S_c (2, H, W) as a label map on its input image's pixels."""
        item = self.label_transform({**item, "pred": MetaTensor(saliency)})
        label = np.asarray(item["pred"])
        save_png_atomic(label[0].astype(np.uint8), self.output_dir / f"{stem}_label.png")

    def write_failures_file(self, engine: Engine) -> None:
        self.wait()
        self._close_thread()
        failures = [*getattr(engine.state, "failures", []), *self.write_failures]
        if distributed.is_distributed():
            failures = self._merge_ranks(engine, failures)
        else:
            write_failures_csv(failures, self.output_dir / "failures.csv")
            os.replace(self._partial_path, self.output_dir / "predictions.csv")
        self.num_failed = len(failures)
        logger.log(logging.INFO if distributed.get_rank() == 0 else logging.DEBUG,
                   "inference: %d images written, %d failures, outputs in %s", self.num_written, len(failures),
                   self.output_dir)
        if failures and not self.num_written:
            raise AllCasesFailedError(len(failures), self.output_dir / "failures.csv", failures[0])

    def _merge_ranks(self, engine: Engine, failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Under torchrun: this rank's part becomes ``predictions.rank<k>.csv`` (atomically), the rows and failures
        of every rank are gathered, and rank 0 writes them, in dataset order, to ``predictions.csv`` and
        ``failures.csv`` (atomically); then every rank removes its part. Sets ``num_written`` to the rows of all
        ranks and returns the failures of all ranks (a collective: every rank calls it)."""
        part = self.output_dir / f"predictions.rank{distributed.get_rank()}.csv"
        os.replace(self._partial_path, part)
        with open(part, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        failures = [{"image": str(f.get("image", "")), "error": str(f.get("error", ""))} for f in failures]
        gathered = distributed.all_gather_objects((rows, failures))
        rows = [row for part_rows, _ in gathered for row in part_rows]
        failures = [failure for _, part_failures in gathered for failure in part_failures]
        if distributed.get_rank() == 0:
            write_csv(self.output_dir / "predictions.csv", PREDICTION_COLUMNS, _in_dataset_order(engine, rows))
            write_failures_csv(_in_dataset_order(engine, failures), self.output_dir / "failures.csv")
        distributed.barrier()  # the merged files exist before any part goes
        part.unlink(missing_ok=True)
        self.num_written = len(rows)
        return failures

    def summary(self) -> str:
        """One line on the finished run: how many images were written and, when some failed, how many and where
        they are listed. Logged by :meth:`log_summary`."""
        if self.num_failed:
            return (f"inference: {self.num_failed} of {self.num_failed + self.num_written} images FAILED (listed in "
                    f"{self.output_dir / 'failures.csv'}); {self.num_written} written to {self.output_dir}")
        return f"inference: all {self.num_written} images written to {self.output_dir}"

    def log_summary(self) -> str:
        """Log :meth:`summary` (a warning when some images failed); configs call it as the run's last step, after
        the engine's own closing lines, so that it is the run's last line. Returns the line."""
        line = self.summary()
        if distributed.get_rank() != 0:  # every rank has the totals of the run; rank 0 says it once
            return line
        logger.log(logging.WARNING if self.num_failed else logging.INFO, line)
        return line

