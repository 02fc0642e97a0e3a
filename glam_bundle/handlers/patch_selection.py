"""Stage 2 of the staged training (paper section 3.3): the local module's training patches, chosen with the
frozen stage-1 global module and written to a disk cache (:mod:`glam_bundle.data.patch_cache`), with the patch
recall of appendix A.

In a config's ``run`` list (before the trainer, whose dataset is a lazy ``PatchCacheDataset``)::

    "patch_selection": {"_target_": "glam_bundle.handlers.PatchSelection", "network": "@network",
                        "dataset": "@select#dataset", "cache_dir": "@patch_cache_dir",
                        "checkpoint_path": "$@ckpt_dir + '/model_global.pt'", "num_patches": 6,
                        "crop_size": "@crop_size", "device": "@device", "log_dir": "@output_dir"},
    "run": ["$@patch_selection()", "$@train#trainer.run()"]

or as an Ignite handler (``attach`` runs it when the engine starts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose
from monai.utils import convert_to_tensor
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from glam_bundle.checkpoint import file_sha256, load_global_module
from glam_bundle.constants import CLASS_NAMES
from glam_bundle.data.cache import item_fingerprint, transform_fingerprint
from glam_bundle.data.failures import SkipBadCases, failure_message, is_failure
from glam_bundle.data.patch_cache import (
    FORMAT_VERSION,
    PATCH_DIR,
    class_flags,
    load_entry,
    read_index,
    save_entry,
    write_index,
)
from glam_bundle.data.samplers import datalist_items, wrapped_datasets
from glam_bundle.metrics.patch_recall import RECALL_AT, lesion_patch_hits, summarise_patch_recall
from glam_bundle.networks.patch_selection import breast_patch_locations, crop_patches, select_patch_locations

__all__ = ["PatchSelection"]

logger = logging.getLogger(__name__)

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _dataset_items(dataset: Any) -> Sequence | None:
    """The datalist items behind ``dataset`` (see ``datalist_items``), or None when it has none."""
    try:
        return datalist_items(dataset)
    except TypeError:
        return None


def _first(batch: Any) -> Any:  # DataLoader collate_fn of one item per batch (module level: picklable)
    return batch[0]


def _to_jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class PatchSelection:
    """Build the stage-2 patch cache with a frozen global module (paper section 3.3 step 2).

    For each item of ``dataset`` (index i): with the global module in eval mode under ``torch.inference_mode()``,

    - a *positive* image (any label 1) gets K patches by Algorithm 1 on S_g (``select_patch_locations``,
      selection "algorithm1");
    - a *negative* image (all labels 0) gets K random patches (selection "random", the global module is not run):
      corners drawn uniformly with replacement by ``breast_patch_locations`` from the patches with at least
      ``min_breast_fraction`` breast (``image > image.min()``), else from those touching the breast, else from
      all, with a generator seeded by ``(seed, i)``, so a rerun draws the same patches and images differ;
    - an image with an unknown label (-1 and no 1) and a bad case (a ``SkipBadCases`` failure record, or an
      exception) are skipped and listed in ``index.json``'s ``failures`` and the summary.

    The K crops ((K, 1, P, P) of the preprocessed image) are stored as ``storage_dtype``: float16 by default (half
    the disk; the relative rounding error 2^-11 of a standardised image is far below that of bfloat16 autocast in
    an ``amp=True`` stage 3; an entry that would overflow float16 is kept in float32). ``PatchCacheDataset``
    returns float32. See :mod:`glam_bundle.data.patch_cache` for the layout.

    The cache is reused (summary ``"cache": "hit"``, no image is read) when ``index.json`` names the same stage-1
    checkpoint sha256, the same parameters (``num_patches``, ``crop_size``, ``seed``, ``storage_dtype``,
    ``min_breast_fraction``, the fingerprint of the dataset's preprocessing) and the same items (datalist entries
    with their files' size and time, found through the dataset's ``.data``; else only the number of items is
    compared), and every patch file is there.
    Otherwise it is rebuilt (``"rebuilt"``); patch files of an interrupted build with the same key are reused,
    files no longer listed are deleted once the new ``index.json`` is written.

    Patch recall (appendix A): over positive images with an annotated lesion mask, the fraction of lesions
    (8-connected components of each class's mask) that a selected patch overlaps, per class and overall, with all
    K patches and with the first 1 and 3; logged, written to TensorBoard (``patch_recall/<class>``,
    ``patch_recall_at_1/<class>``, ``patch_recall_at_3/<class>``, class or "overall") when ``log_dir`` is given,
    stored in ``index.json`` and returned.

    The global module is loaded here from ``checkpoint_path`` (:func:`glam_bundle.checkpoint.load_global_module`: only the
    ``global_module.*`` weights, all of them required), so the weights used are those whose sha256 is recorded.
    ``network`` runs on ``device``; its device and train/eval mode are restored afterwards. When ``network`` is the
    stage-3 network itself, its (frozen) global module thereby holds the stage-1 weights, which its stage-3 checkpoints
    then carry on to stage 4.

    Args:
        network: a ``glam_bundle.networks.GLAM``.
        dataset: the training items through the deterministic (validation) chain, e.g.
            ``SkipBadCases(Dataset(items, default_preprocessing()))``: ``image`` (1, H, W), ``label`` (2,),
            ``mask`` (2, H, W), ``has_mask`` (2,).
        cache_dir: the cache folder.
        checkpoint_path: the stage-1 best model (``model_global.pt``).
        num_patches: K (paper: 6).
        crop_size: patch size (P, P); None takes ``network.crop_size`` (512×512 by default).
        seed: seed of the negative images' random patches.
        device: where the global module runs; None: where ``network`` is. The network goes back to its device
            afterwards.
        log_dir: TensorBoard folder for the patch-recall scalars (none when None).
        num_workers: DataLoader workers reading the items.
        storage_dtype: "float16" or "float32".
        min_breast_fraction: breast fraction a random negative patch should have (see above).
    """

    def __init__(
        self,
        network: nn.Module,
        dataset: Dataset,
        cache_dir: str | os.PathLike,
        checkpoint_path: str | os.PathLike,
        num_patches: int = 6,
        crop_size: Sequence[int] | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        log_dir: str | os.PathLike | None = None,
        num_workers: int = 0,
        storage_dtype: str = "float16",
        min_breast_fraction: float = 0.5,
    ) -> None:
        if num_patches < 1:
            raise ValueError(f"num_patches must be at least 1, got {num_patches}")
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")
        self.network = network
        self.dataset = dataset
        self.cache_dir = Path(cache_dir)
        self.checkpoint_path = Path(checkpoint_path)
        self.num_patches = int(num_patches)
        crop = getattr(network, "crop_size", (512, 512)) if crop_size is None else crop_size
        self.crop_size = (int(crop[0]), int(crop[1]))
        self.seed = int(seed)
        self.device = None if device is None else torch.device(device)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.num_workers = int(num_workers)
        self.storage_dtype = storage_dtype
        self._reported: tuple[str, str] | None = None  # (checkpoint sha256, items fingerprint) last reported
        self.min_breast_fraction = float(min_breast_fraction)

    # -- workflow entry points -----------------------------------------------------------------------------------

    def attach(self, engine: Engine) -> None:
        """Run patch selection when ``engine`` starts (a cache hit costs a few file checks)."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> dict[str, Any]:
        """Build or check the cache; under ``torch.distributed`` rank 0 does it while the other ranks wait."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.run()
        summary = self.run() if torch.distributed.get_rank() == 0 else {}
        torch.distributed.barrier()
        return summary

    def cache_parameters(self) -> dict[str, Any]:
        """The parameters a cache must have been built with to be reused."""
        return {
            "format_version": FORMAT_VERSION,
            "num_patches": self.num_patches,
            "crop_size": list(self.crop_size),
            "seed": self.seed,
            "storage_dtype": self.storage_dtype,
            "min_breast_fraction": self.min_breast_fraction,
            "positive_selection": "algorithm1",
            "negative_selection": "random",
            "preprocessing": self._preprocessing_fingerprint(),
        }

    def _preprocessing_fingerprint(self) -> str | None:
        """:func:`transform_fingerprint` of the dataset's transform (the patches are cut from its output, so a
        changed chain -- another window, film rule or bundle version -- must rebuild them); None without one."""
        for dataset in wrapped_datasets(self.dataset):
            transform = getattr(dataset, "transform", None)
            if transform is not None:
                transforms = transform.transforms if isinstance(transform, Compose) else transform
                return transform_fingerprint(transforms).decode()
        return None

    def run(self) -> dict[str, Any]:
        """Reuse or build the cache; returns the summary (``cache`` "hit"/"rebuilt", counts, patch recall)."""
        start = time.monotonic()
        checkpoint_sha = file_sha256(self.checkpoint_path)
        parameters = self.cache_parameters()
        item_keys = self._item_keys()
        fingerprint = hashlib.sha256(
            json.dumps([len(self.dataset), item_keys], default=str).encode("utf-8")
        ).hexdigest()
        index = read_index(self.cache_dir)
        if self._reusable(index, checkpoint_sha, parameters, fingerprint):
            summary = dict(index["summary"], cache="hit", seconds=round(time.monotonic() - start, 3))
            if self._reported == (checkpoint_sha, fingerprint):
                return summary  # a config's run step and the dataset's builder both call it: report once
            logger.info(
                "patch cache %s is up to date (stage-1 checkpoint sha256 %s)", self.cache_dir, checkpoint_sha[:12]
            )
        else:
            if index is not None:
                logger.info(
                    "patch cache %s is stale (checkpoint, parameters or items changed): rebuilding", self.cache_dir
                )
            summary = self._build(checkpoint_sha, parameters, fingerprint, item_keys)
            summary["seconds"] = round(time.monotonic() - start, 3)
        self._report(summary)
        self._reported = (checkpoint_sha, fingerprint)
        return summary

    # -- cache identity ------------------------------------------------------------------------------------------

    def _item_keys(self) -> list[str] | None:
        """Per item, a hash of its datalist entry with its files' size and time; None without ``.data``."""
        raw = _dataset_items(self.dataset)
        if raw is None or len(raw) != len(self.dataset):
            logger.warning(
                "patch selection: no datalist items found behind the dataset (.data); the cache is keyed on the "
                "number of items only"
            )
            return None
        return [
            item_fingerprint(item).decode()
            if isinstance(item, Mapping)
            else hashlib.sha256(repr(item).encode()).hexdigest()
            for item in raw
        ]

    def _reusable(self, index: Mapping | None, checkpoint_sha: str, parameters: Mapping, fingerprint: str) -> bool:
        if index is None:
            return False
        same = (
            index.get("format_version") == FORMAT_VERSION
            and index.get("checkpoint_sha256") == checkpoint_sha
            and index.get("parameters") == _to_jsonable(parameters)
            and index.get("dataset_fingerprint") == fingerprint
            and isinstance(index.get("summary"), Mapping)
        )
        return same and all((self.cache_dir / entry["file"]).is_file() for entry in index.get("entries", []))

    def _entry_file(self, position: int, checkpoint_sha: str, parameters: Mapping, item_key: str | None) -> str | None:
        if item_key is None:
            return None
        key = hashlib.sha256(
            json.dumps([checkpoint_sha, parameters, position, item_key], sort_keys=True, default=str).encode("utf-8")
        ).hexdigest()[:16]
        return f"{PATCH_DIR}/{position:06d}_{key}.pt"

    # -- building ------------------------------------------------------------------------------------------------

    def _build(
        self, checkpoint_sha: str, parameters: Mapping, fingerprint: str, item_keys: list[str] | None
    ) -> dict[str, Any]:
        network = self.network
        load_global_module(network, self.checkpoint_path)
        was_training = network.training
        home = next(network.parameters()).device
        device = home if self.device is None else self.device
        network.to(device)
        network.eval()
        n_items = len(self.dataset)
        files: list[str] = []
        stored: dict[int, dict[str, Any]] = {}
        todo: list[int] = []
        for position in range(n_items):
            item_key = None if item_keys is None else item_keys[position]
            name = self._entry_file(position, checkpoint_sha, parameters, item_key)
            files.append(name or f"{PATCH_DIR}/{position:06d}_{checkpoint_sha[:16]}.pt")
            path = self.cache_dir / files[-1]
            if name is not None and path.is_file():
                try:
                    stored[position] = self._describe(load_entry(path))
                    continue
                except Exception as exc:  # a damaged file of an interrupted build: compute it again
                    logger.warning("patch cache: recomputing unreadable %s (%s)", path, exc)
            todo.append(position)
        if stored:
            logger.info("patch cache: %d of %d entries kept from an interrupted build", len(stored), n_items)
        failures: dict[int, dict[str, Any]] = {}
        dataset = self.dataset if isinstance(self.dataset, SkipBadCases) else SkipBadCases(self.dataset)
        # Its own generator: the loader's worker seed must not come from torch's global RNG, or a rebuild and a
        # cache hit would leave the stage-3 training that follows with different random states.
        loader = DataLoader(
            Subset(dataset, todo), batch_size=1, shuffle=False, num_workers=self.num_workers, collate_fn=_first,
            generator=torch.Generator().manual_seed(self.seed),
        )
        progress_every = max(1, len(todo) // 10)
        try:
            for done, (position, item) in enumerate(zip(todo, loader), start=1):
                try:
                    result = self._process(position, item, checkpoint_sha, device)
                except Exception as exc:  # one bad case must not end the stage
                    result = {"failed": True, "image": str(item.get("image", "")) if isinstance(item, Mapping) else "",
                              "error": failure_message(exc)}
                    logger.warning(
                        "patch selection: skipping case %d (%s): %s", position, result["image"], result["error"]
                    )
                if is_failure(result):
                    failures[position] = {
                        "index": position, "image": result.get("image", ""), "error": result.get("error", "")
                    }
                else:
                    save_entry(self.cache_dir / files[position], result)
                    stored[position] = self._describe(result)
                if done % progress_every == 0 or done == len(todo):
                    logger.info("patch selection: %d/%d images", done, len(todo))
        finally:
            network.train(was_training)
            network.to(home)
        entries = [dict(stored[p], file=files[p]) for p in range(n_items) if p in stored]
        summary = {
            "cache": "rebuilt",
            "cache_dir": str(self.cache_dir),
            "checkpoint_sha256": checkpoint_sha,
            "num_entries": len(entries),
            "num_positive": sum(e["selection"] == "algorithm1" for e in entries),
            "num_negative": sum(e["selection"] == "random" for e in entries),
            "num_failures": len(failures),
            "failures": [failures[p] for p in sorted(failures)],
            **summarise_patch_recall([stored[p]["lesions"] for p in sorted(stored)], self.num_patches),
        }
        index = {
            "format_version": FORMAT_VERSION,
            "checkpoint_path": str(self.checkpoint_path),
            "checkpoint_sha256": checkpoint_sha,
            "parameters": _to_jsonable(parameters),
            "dataset_fingerprint": fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "entries": [{k: v for k, v in e.items() if k != "lesions"} for e in entries],
            "failures": summary["failures"],
            "summary": _to_jsonable(summary),
        }
        write_index(self.cache_dir, index)
        self._remove_stale_files({e["file"] for e in entries})
        return summary

    @staticmethod
    def _describe(entry: Mapping[str, Any]) -> dict[str, Any]:
        """The ``index.json`` fields of a patch entry (plus its lesion hits, for the recall summary)."""
        label = [float(v) for v in entry["label"]]
        return {
            "index": int(entry["index"]),
            "image": str(entry["image"]),
            "label": label,
            **class_flags(label),
            "selection": str(entry["selection"]),
            "locations": [[int(r), int(c)] for r, c in entry["locations"].tolist()],
            "lesions": {str(k): [int(v) for v in values] for k, values in dict(entry["lesions"]).items()},
        }

    def _process(self, position: int, item: Any, checkpoint_sha: str, device: torch.device) -> dict[str, Any]:
        if is_failure(item):
            return item
        image = convert_to_tensor(item["image"], track_meta=False, dtype=torch.float32)
        if image.ndim != 3:
            raise ValueError(f"expected an image (C, H, W), got shape {tuple(image.shape)}")
        label = convert_to_tensor(item["label"], track_meta=False, dtype=torch.float32).flatten().cpu()
        image_size = tuple(int(s) for s in image.shape[-2:])
        if (label == 1).any():
            selection, tier = "algorithm1", ""
            x = image[None, :1].to(device)
            breast_mask = item.get("breast_mask")  # kept only when the saliency is restricted to the breast
            if breast_mask is not None:
                breast_mask = convert_to_tensor(breast_mask, track_meta=False, dtype=torch.float32)[None].to(device)
            with torch.inference_mode():
                saliency = self.network(x, global_only=True, breast_mask=breast_mask)["saliency_global"]
                locations = select_patch_locations(saliency, image_size, self.crop_size, self.num_patches)[0]
        elif (label == 0).all():
            selection = "random"
            generator = torch.Generator().manual_seed(self._seed_for(position))
            locations, tier = breast_patch_locations(
                image[0], self.crop_size, self.num_patches, generator, self.min_breast_fraction
            )
        else:
            return {
                "failed": True,
                "image": self._image_path(item, position),
                "error": f"unknown image-level label {label.tolist()}: the local module needs 0/1 labels",
            }
        locations = locations.cpu().long()
        with torch.inference_mode():
            patches = crop_patches(image[None, :1], locations[None], self.crop_size)[0].contiguous()
        stored_patches = patches.to(STORAGE_DTYPES[self.storage_dtype])
        if not torch.isfinite(stored_patches).all() and torch.isfinite(patches).all():
            stored_patches = patches.float()  # beyond float16's range: keep this entry exact
        lesions: dict[str, list[int]] = {}
        if selection == "algorithm1" and "mask" in item:
            has_mask = convert_to_tensor(item.get("has_mask", torch.ones(len(CLASS_NAMES))), track_meta=False).flatten()
            counted = [c for c in range(len(CLASS_NAMES)) if float(has_mask[c]) > 0 and float(label[c]) == 1]
            if counted:
                mask = convert_to_tensor(item["mask"], track_meta=False)
                lesions = lesion_patch_hits(mask, locations, self.crop_size, counted)
        return {
            "format_version": FORMAT_VERSION,
            "patches": stored_patches.cpu(),
            "label": label,
            "locations": locations,
            "image": self._image_path(item, position),
            "selection": selection,
            "random_tier": tier,
            "checkpoint_sha256": checkpoint_sha,
            "num_patches": self.num_patches,
            "crop_size": list(self.crop_size),
            "image_size": list(image_size),
            "index": position,
            "seed": self.seed,
            "lesions": lesions,
        }

    def _seed_for(self, position: int) -> int:
        """The generator seed of item ``position``'s random patches, from (seed, position)."""
        return int(np.random.SeedSequence([self.seed, position]).generate_state(1, dtype=np.uint64)[0])

    def _image_path(self, item: Mapping, position: int) -> str:
        raw = _dataset_items(self.dataset)
        if raw is not None and position < len(raw) and isinstance(raw[position], Mapping) and "image" in raw[position]:
            return os.fspath(raw[position]["image"])
        meta = getattr(item.get("image"), "meta", None) or {}
        return str(meta.get("filename_or_obj", ""))

    def _remove_stale_files(self, keep: set[str]) -> None:
        folder = self.cache_dir / PATCH_DIR
        if not folder.is_dir():
            return
        for path in folder.glob("*.pt"):
            if f"{PATCH_DIR}/{path.name}" not in keep:
                path.unlink(missing_ok=True)

    # -- reporting -----------------------------------------------------------------------------------------------

    def _report(self, summary: Mapping[str, Any]) -> None:
        logger.info(
            "patch cache %s (%s): %d entries (%d positive, %d negative), %d skipped",
            self.cache_dir, summary["cache"], summary["num_entries"], summary["num_positive"],
            summary["num_negative"], summary["num_failures"],
        )
        for failure in summary.get("failures", []):
            logger.warning("patch selection skipped %s: %s", failure.get("image", ""), failure.get("error", ""))
        for name in (*CLASS_NAMES, "overall"):
            logger.info(
                "patch recall %s: %s of %s lesions hit by the %d patches (recall %.3f, @1 %.3f, @3 %.3f)",
                name, summary["lesions_hit"].get(name, 0), summary["lesions"].get(name, 0), self.num_patches,
                summary["recall"].get(name, math.nan), summary["recall_at_1"].get(name, math.nan),
                summary["recall_at_3"].get(name, math.nan),
            )
        if self.log_dir is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.log_dir))
        try:
            tags = (("patch_recall", "recall"), *((f"patch_recall_at_{k}", f"recall_at_{k}") for k in RECALL_AT))
            for tag, key in tags:
                for name, value in summary[key].items():
                    if value is not None and not math.isnan(float(value)):
                        writer.add_scalar(f"{tag}/{name}", float(value), 0)
        finally:
            writer.close()
