"""GLAM's staged training (paper section 3.3) as one workflow: the stage configs run in order, in one process.

Stage 1 trains the global module (``train_global.json``); stages 2 and 3 select the local module's patches with
the frozen global module and train the local module (``train_global.json`` + ``train_local.json``); stage 4 trains
everything jointly (``train_global.json`` + ``train_joint.json``). Each stage reads the best checkpoint of the one
before from ``ckpt_dir`` (``model_global.pt`` -> ``model_local.pt`` -> ``model.pt``), so the pipeline is the stage
configs run one after another; ``configs/train.json`` calls :func:`run_stages`. A stage that finished earlier
returns at once (its resume checkpoint says so), so rerunning the same command after a kill goes on where it
stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from glam_bundle.data.datalist import datalist_from_datastore
from glam_bundle.errors import ConfigError

__all__ = ["STAGE_CONFIGS", "run_stages"]

logger = logging.getLogger(__name__)

# Stage name -> config files merged in order (relative to the configs folder).
STAGE_CONFIGS: dict[str, tuple[str, ...]] = {
    "global": ("train_global.json",),
    "local": ("train_global.json", "train_local.json"),
    "joint": ("train_global.json", "train_joint.json"),
}


def run_stages(
    config_dir: str | os.PathLike,
    stages: Sequence[str] = tuple(STAGE_CONFIGS),
    presets: Sequence[str | os.PathLike] = (),
    settings: Mapping[str, Any] | None = None,
    stage_settings: Mapping[str, Mapping[str, Any]] | None = None,
    meta_file: str | os.PathLike | None = None,
    train_data: Sequence[Mapping[str, Any]] | None = None,
    validate_data: Sequence[Mapping[str, Any]] | None = None,
    epochs: int | None = None,
    datastore_datalist: str | os.PathLike = "outputs/datastore_datalist.json",
) -> list[str]:
    """Run the training stages in order.

    Args:
        config_dir: the bundle's ``configs`` folder.
        stages: names of :data:`STAGE_CONFIGS` to run, in order.
        presets: config files merged after each stage's files (e.g. ``configs/presets/demo.json``); relative
            paths are taken from the working directory, then from ``config_dir``'s parent (the bundle root).
        settings: overrides given to every stage (``dataset_dir``, ``ckpt_dir``, ``image_size``, ...).
        stage_settings: per stage name, overrides for that stage only (``max_epochs``, ``output_dir``, ...).
        meta_file: the bundle's metadata.json (default ``<config_dir>/metadata.json``).
        train_data, validate_data: item lists that replace the datalist file (MONAI Label's train task sets
            ``train#dataset#data`` / ``validate#dataset#data`` of ``configs/train.json``; ``{"image", "label"}``
            items with label images are converted by :func:`glam_bundle.data.datalist.datalist_from_datastore`,
            written to ``datastore_datalist``).
        epochs: the same number of epochs for every stage (MONAI Label's ``train#trainer#max_epochs``).

    Returns:
        the names of the stages run.
    """
    config_dir = Path(config_dir)
    unknown = [name for name in stages if name not in STAGE_CONFIGS]
    if unknown:
        raise ConfigError("stages", unknown, f"unknown stage(s); choose from {list(STAGE_CONFIGS)}")
    preset_files = [str(_find_preset(Path(p), config_dir.parent)) for p in presets]
    meta_file = str(meta_file or config_dir / "metadata.json")
    settings = dict(settings or {})
    if train_data is not None:
        settings["datalist"] = str(datalist_from_datastore(train_data, validate_data, datastore_datalist))
        logger.info("training on %d datastore items (datalist %s)", len(train_data), settings["datalist"])
    for name in stages:
        files = [str(config_dir / f) for f in STAGE_CONFIGS[name]] + preset_files
        override = {**settings, **(stage_settings or {}).get(name, {})}
        if epochs is not None:
            override["max_epochs"] = int(epochs)
        logger.info("stage %s: %s", name, " + ".join(Path(f).name for f in files))
        workflow = ConfigWorkflow(config_file=files, meta_file=meta_file, logging_file=False, **override)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    return list(stages)


def _find_preset(path: Path, bundle_root: Path) -> Path:
    for candidate in (path, bundle_root / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "presets", path, f"file not found (looked in the working directory and in {bundle_root}); give a preset file"
    )
