"""Checkpoint files: conversion of the original GLAM layout (nyukat/GLAM ``model_sep.ckpt`` /
``model_joint.ckpt``) to this bundle's GLAM state dict, and the check that a checkpoint to load exists.

Every checkpoint is read with ``torch.load(weights_only=True)``: a file whose pickle asks for anything but
tensors and plain containers (e.g. a ``__reduce__`` calling ``os.system``) is refused before any of it runs, with
one :class:`CheckpointError` line naming the file and what the pickle asked for. A checkpoint whose keys are
missing or wrongly shaped gets a :class:`CheckpointError` listing them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from glam_bundle.errors import UserError

logger = logging.getLogger(__name__)

# Keys listed in an error message before "... and N more".
_LISTED_KEYS = 20


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used: refused (its pickle asks for code), unreadable, or not matching the network.

    The message starts with the file (when known), e.g. ``"/m/x.pt: refused: the file's pickle asks for ...``.
    A ValueError, as the shape errors raised here before.

    Attributes:
        path: the checkpoint file ("" when not known); problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = os.fspath(path) if path else ""
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return self.__class__, (self.path, self.problem)


class CheckpointKeyError(CheckpointError, KeyError):
    """Keys the network needs are missing from the checkpoint (also a KeyError, as raised here before)."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """No checkpoint file where a setting points (also a FileNotFoundError, as raised here before).

    The message is one line: the setting, the path (with its absolute form when given relative) and what to do,
    e.g. ``"--ckpt_path ./models/model.pt: checkpoint not found (looked for /w/models/model.pt); ..."``.
    """

    def __init__(self, message: str):
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return self.__class__, (self.args[0],)


def _looked_for(path: str | os.PathLike) -> str:
    """``"<path>"``, plus ``" (looked for <absolute path>)"`` when ``path`` is relative, or what is there instead."""
    path = os.fspath(path)
    text = path if os.path.isabs(path) else f"{path} (looked for {os.path.abspath(path)})"
    if os.path.isdir(path):
        return f"{text}: a folder, not a checkpoint file"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"{text}: checkpoint not found (its folder {parent} does not exist)"
    return f"{text}: checkpoint not found"


def list_keys(keys: Sequence[str], limit: int = _LISTED_KEYS) -> str:
    """``"a, b, c"``, the first ``limit`` keys and ``"... and N more"``."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _named(path, exc: Exception) -> CheckpointError:
    """``exc`` of :func:`load_partial_state_dict` (KeyError / ValueError) as a one-line error naming ``path``."""
    message = re.sub(r"\s*\n\s*", " ", str(exc.args[0] if exc.args else exc))
    return (CheckpointKeyError if isinstance(exc, KeyError) else CheckpointError)(path, message)


def _unpickling_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its boilerplate (one line)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of its advice
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Please use|Check the documentation|$)", text, re.S)
    if detail and detail.group(1).strip():
        return re.sub(r"\s+", " ", detail.group(1)).strip().rstrip(".")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    kept = [p for p in paragraphs if not p.startswith(boilerplate)] or paragraphs[:1]
    reason = re.sub(r"\s+", " ", " ".join(kept)).strip()
    return reason.rstrip(".") or type(exc).__name__

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
    original: Mapping[str, torch.Tensor], network: nn.Module, source: str | os.PathLike | None = None
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map an original-layout state dict onto ``network`` (a GLAM).

    Every global- and local-module key of ``network`` must be present in ``original`` with the same shape.
    Parts the original release does not have (attention aggregation, fusion) keep ``network``'s current
    values, so the result loads strictly.

    Args:
        original: the original state dict; network: the GLAM to fill; source: the file it came from (named in
            errors).

    Returns:
        (state dict for ``network``, original keys that were ignored, bundle keys kept from ``network``).

    Raises:
        CheckpointError (a ValueError) listing every wrongly shaped key; CheckpointKeyError (also a KeyError)
        listing the missing ones.
    """
    target = network.state_dict()
    converted: dict[str, torch.Tensor] = {}
    ignored, mismatched = [], []
    for key, value in original.items():
        new_key = rename_original_key(key)
        if new_key is None or new_key not in target:
            ignored.append(key)
            continue
        if tuple(value.shape) != tuple(target[new_key].shape):
            mismatched.append(f"{key} {tuple(value.shape)} (expected {tuple(target[new_key].shape)} for {new_key})")
            continue
        converted[new_key] = value.to(target[new_key].dtype)
    if mismatched:
        raise CheckpointError(source, f"{len(mismatched)} keys have the wrong shape: {list_keys(mismatched)}")
    expected = [k for k in target if k.startswith(("global_module.", "local_module."))]
    missing = [k for k in expected if k not in converted]
    if missing:
        raise CheckpointKeyError(
            source,
            f"{len(missing)} expected keys are missing from the original checkpoint (bundle names): "
            f"{list_keys(missing)}",
        )
    kept = [k for k in target if k not in converted]
    return {**target, **converted}, ignored, kept


def safe_torch_load(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure one :class:`CheckpointError` line.

    A pickle asking for a global outside torch's weights-only allow-list (code to run) is refused before it runs:
    ``"<file>: refused: the file's pickle asks for <what torch reports>; only plain tensors are loaded
    (weights_only)"``. An empty, truncated or corrupt file is ``"<file>: unreadable checkpoint (...)"``.

    Raises:
        FileNotFoundError: no file at ``path``; CheckpointError: as above.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(path, "empty file (0 bytes); not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")  # hostile files use any protocol
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("Weights only load failed"):
            reason = _unpickling_reason(exc)
            named = re.search(r"GLOBAL\s+([\w.]+)", reason)
            what = named.group(1) if named else "what torch's weights-only unpickler refuses"
            problem = (
                f"refused: the file's pickle asks for {what} (torch: {reason}); only plain tensors are loaded "
                "(weights_only)"
            )
        else:
            problem = f"unreadable checkpoint ({type(exc).__name__}: {_unpickling_reason(exc)})"
        raise CheckpointError(path, problem) from None
    except Exception as exc:  # zip / storage errors of a truncated or corrupt file
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(path, f"unreadable checkpoint ({type(exc).__name__}: {first_line})") from None


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (:func:`safe_torch_load`, ``weights_only=True``): a state dict, or a dict holding
    one under "model" / "state_dict".

    Raises:
        FileNotFoundError: no file; CheckpointError: refused, unreadable or not a state dict of tensors.
    """
    checkpoint = safe_torch_load(path)
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(path, f"not a state dict of tensors (holds a {type(checkpoint).__name__})")
    not_tensors = [str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(path, f"not a state dict of tensors: {len(not_tensors)} entries are not tensors "
                                    f"({list_keys(not_tensors)})")
    return dict(checkpoint)


def require_checkpoint(path: str | os.PathLike, setting: str = "ckpt_path") -> str:
    """Return ``path`` as a string if it is a file; otherwise raise :class:`CheckpointNotFoundError` (a
    FileNotFoundError) naming the setting, the file it looked for and what to do.

    Used as ``CheckpointLoader``'s ``load_path`` so that evaluation stops before any image is processed,
    with one line instead of torch's bare "No such file or directory".
    """
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            f"--{setting} {_looked_for(path)}; train first (the training configs write models/*.pt) or pass "
            f"the weights with --{setting} <file.pt>"
        )
    return str(path)


def check_inference_checkpoint(path: str | os.PathLike | None, allow_random_weights: bool = False) -> bool:
    """Whether inference has weights to load from ``path``; refuses to go on without them unless asked.

    Returns True when ``path`` is a file. Without one, raises :class:`CheckpointNotFoundError` naming the file it
    looked for and the two ways on (a trained or converted checkpoint, or ``--allow_random_weights true``); with
    ``allow_random_weights`` it logs a warning and returns False (the caller then leaves the network's random
    initialisation: outputs are meaningless, useful only to try the pipeline).
    """
    if path and os.path.isfile(path):
        return True
    if isinstance(allow_random_weights, str):  # the command line gives "true" / "false" as strings
        allow_random_weights = allow_random_weights.strip().lower() in ("true", "1", "yes", "on")
    if not allow_random_weights:
        raise CheckpointNotFoundError(
            f"--ckpt_path {_looked_for(path or '')}; give the trained weights (--ckpt_path models/model.pt, or the "
            "authors' weights converted with scripts/import_original_checkpoint.py), or --allow_random_weights true "
            "to run with random weights (meaningless outputs)"
        )
    logger.warning("%s not found: running with randomly initialised weights (--allow_random_weights true); "
                   "the predictions and maps are meaningless", path)
    return False


def load_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Initialise ``network`` from the checkpoint of an earlier training stage; returns the network.

    The file is read with ``weights_only=True`` (a bare state dict, or one under "model"/"state_dict", as MONAI's
    CheckpointSaver writes). Entries the network lacks are ignored and its layers the file lacks keep their
    initialisation (stage 4 starts from stage-3 weights without attention or fusion); both are logged.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says to train the earlier stage first).
        CheckpointError: refused or unreadable file, or wrongly shaped keys (all listed).
    """
    from glam_bundle.networks.utils import load_partial_state_dict

    state_dict = load_original_checkpoint(require_checkpoint(path, setting="init_checkpoint"))
    try:
        loaded, initialised = load_partial_state_dict(network, state_dict, ignore_unexpected=True)
    except (KeyError, ValueError) as exc:
        raise _named(path, exc) from None
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

    Raises:
        FileNotFoundError: no file; CheckpointError: refused or unreadable file, wrongly shaped keys (all listed);
        CheckpointKeyError (also a KeyError): global-module keys missing (listed).
    """
    from glam_bundle.networks.utils import load_partial_state_dict

    path = Path(checkpoint_path)
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{_looked_for(path).replace('checkpoint not found', 'stage-1 checkpoint not found')}; train the global "
            "module first (stage 1: configs/train_global.json)"
        )
    state = load_original_checkpoint(path)
    global_state = {k: v for k, v in state.items() if k.startswith("global_module.")}
    expected = [k for k in network.state_dict() if k.startswith("global_module.")]
    missing = [k for k in expected if k not in global_state]
    if not global_state or missing:
        raise CheckpointKeyError(
            path,
            f"not a stage-1 GLAM checkpoint: {len(missing)} of the {len(expected)} global-module weights are "
            f"missing: {list_keys(missing)}",
        )
    try:
        loaded, _ = load_partial_state_dict(network, global_state)
    except (KeyError, ValueError) as exc:
        raise _named(path, exc) from None
    return loaded
