"""Checkpoint files: conversion of the original GLAM layout (nyukat/GLAM ``model_sep.ckpt`` /
``model_joint.ckpt``) to this bundle's GLAM state dict, and the check that a checkpoint to load exists."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# (original key prefix pattern, bundle key prefix); block-internal names are shared by both layouts.
ORIGINAL_KEY_RULES = (
    (r"^global_network\.downsampling_branch\.", "global_module.backbone."),
    (r"^global_network\.postprocess_module\.gn_conv_1\.", "global_module.heads.conv0."),
    (r"^global_network\.postprocess_module\.gn_conv_2\.", "global_module.heads.conv1."),
    (r"^global_network\.postprocess_module\.gn_conv_last\.", "global_module.heads.conv2."),
    (r"^global_network\.postprocess_module\.combine\.weight$", "global_module.heads.combine"),
    (r"^detection_network\.dn_resnet\.", "local_module.backbone."),
    (r"^detection_network\.gn_conv_last\.", "local_module.saliency_head."),
)


def rename_original_key(key: str) -> str | None:
    """Bundle key for an original key, or None for a key the bundle has no place for."""
    for pattern, replacement in ORIGINAL_KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def convert_original_state_dict(
    original: Mapping[str, torch.Tensor], network: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map an original-layout state dict onto ``network`` (a GLAM).

    Every global- and local-module key of ``network`` must be present in ``original`` with the same shape.
    Parts the original release does not have (attention aggregation, fusion) keep ``network``'s current
    values, so the result loads strictly.

    Returns:
        (state dict for ``network``, original keys that were ignored, bundle keys kept from ``network``).

    Raises:
        KeyError: when an expected key is missing; ValueError: on a shape mismatch.
    """
    target = network.state_dict()
    converted: dict[str, torch.Tensor] = {}
    ignored = []
    for key, value in original.items():
        new_key = rename_original_key(key)
        if new_key is None or new_key not in target:
            ignored.append(key)
            continue
        if tuple(value.shape) != tuple(target[new_key].shape):
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not match {new_key} {tuple(target[new_key].shape)}")
        converted[new_key] = value.to(target[new_key].dtype)
    expected = [k for k in target if k.startswith(("global_module.", "local_module."))]
    missing = [k for k in expected if k not in converted]
    if missing:
        raise KeyError(f"{len(missing)} expected keys are missing from the original checkpoint, e.g. {missing[:5]}")
    kept = [k for k in target if k not in converted]
    return {**target, **converted}, ignored, kept


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original checkpoint safely (``weights_only=True``): a state dict, or a dict holding one under
    "model" / "state_dict"."""
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(checkpoint)


def require_checkpoint(path: str | os.PathLike) -> str:
    """Return ``path`` as a string if it is a file; otherwise raise FileNotFoundError saying what to do.

    Used as ``CheckpointLoader``'s ``load_path`` so that evaluation stops before any image is processed,
    with a message that starts with the path instead of torch's bare "No such file or directory".
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: checkpoint not found; train first or pass the weights with --ckpt_path <file.pt>."
        )
    return str(path)


def load_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Initialise ``network`` from the checkpoint of an earlier training stage; returns the network.

    The file is read with ``weights_only=True`` (a bare state dict, or one under "model"/"state_dict", as MONAI's
    CheckpointSaver writes). Entries the network lacks are ignored and its layers the file lacks keep their
    initialisation (stage 4 starts from stage-3 weights without attention or fusion); both are logged.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says to train the earlier stage first).
    """
    from glam_bundle.networks.utils import load_partial_state_dict

    state_dict = load_original_checkpoint(require_checkpoint(path))
    loaded, initialised = load_partial_state_dict(network, state_dict, ignore_unexpected=True)
    logger.info("%s: loaded %d tensors into %s", path, len(loaded), type(network).__name__)
    if initialised:
        modules = sorted({key.rsplit(".", 2)[0] if key.count(".") > 1 else key for key in initialised})
        logger.info("%s: %d tensors keep their initialisation (%s)", path, len(initialised), ", ".join(modules))
    return network


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_global_module(network: nn.Module, checkpoint_path: str | os.PathLike) -> list[str]:
    """Load the ``global_module.*`` weights of a stage-1 checkpoint into ``network`` (a GLAM); nothing else.

    The checkpoint is what MONAI's ``CheckpointSaver`` writes for ``save_dict={"model": network}`` (a plain state
    dict of the whole GLAM), or a dict holding one under "model" / "state_dict". Its local, attention and fusion
    weights (untrained in stage 1) are ignored; every global-module weight of ``network`` must be in it with the
    same shape.

    Returns:
        the loaded keys.
    """
    from glam_bundle.networks.utils import load_partial_state_dict

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stage-1 checkpoint not found; train the global module first (stage 1)")
    state = load_original_checkpoint(path)
    global_state = {k: v for k, v in state.items() if k.startswith("global_module.")}
    expected = [k for k in network.state_dict() if k.startswith("global_module.")]
    missing = [k for k in expected if k not in global_state]
    if not global_state or missing:
        raise KeyError(
            f"{path}: not a stage-1 GLAM checkpoint: {len(missing)} of the {len(expected)} global-module weights are "
            f"missing, e.g. {missing[:5]}"
        )
    loaded, _ = load_partial_state_dict(network, global_state)
    return loaded
