"""Helpers for moving weights between the networks of the training stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def load_partial_state_dict(
    network: nn.Module, state_dict: Mapping[str, torch.Tensor], ignore_unexpected: bool = False
) -> tuple[list[str], list[str]]:
    """Load the entries of ``state_dict`` that ``network`` has, keep the network's own initialisation for the rest.

    For example a stage-3 checkpoint (concatenation aggregation, no fusion) into the stage-4 network (attention
    aggregation and fusion, paper section 3.3): the global and local modules are loaded, the attention and fusion
    layers keep their initialisation. Nothing is loaded when an error is raised.

    Args:
        network: the network to fill in place.
        state_dict: source weights (a plain ``state_dict``, keys as in ``network.state_dict()``).
        ignore_unexpected: accept keys that the network lacks (e.g. stage-4 weights into a stage-3 network);
            by default they are an error, since they usually mean a different key layout (a "module." prefix,
            an original GLAM checkpoint: convert those with ``glam_bundle.checkpoint`` first).

    Returns:
        (loaded_keys, initialised_keys), sorted: the network's keys taken from ``state_dict`` and those left
        as initialised.

    Raises:
        ValueError: a shared key has a different shape (all of them are listed).
        KeyError: ``state_dict`` has keys the network lacks and ``ignore_unexpected`` is False, or no key at all
            in common with the network.
    """
    own = network.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs network {tuple(own[key].shape)}"
        for key, value in state_dict.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    if mismatched:
        raise ValueError("shape mismatch between checkpoint and network:\n  " + "\n  ".join(mismatched))
    unexpected = sorted(key for key in state_dict if key not in own)
    if unexpected and not ignore_unexpected:
        raise KeyError(f"checkpoint keys the network does not have ({len(unexpected)}): {unexpected[:10]}")
    loaded = sorted(key for key in own if key in state_dict)
    if not loaded:
        raise KeyError("the checkpoint shares no key with the network")
    network.load_state_dict({key: state_dict[key] for key in loaded}, strict=False)
    return loaded, sorted(key for key in own if key not in state_dict)


def freeze_all_but(network: nn.Module, modules: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter outside the named child modules; returns the trainable names.

    A stage trains only part of GLAM (stage 1 the global module); the other parameters get no gradient, which
    DistributedDataParallel reports as an error unless they are frozen. Parameters already frozen (the original's
    unused ``combine`` weight, a ``freeze_global`` module) stay frozen.
    """
    prefixes = tuple(f"{name}." for name in modules)
    unknown = [name for name in modules if not any(n.startswith(f"{name}.") for n, _ in network.named_parameters())]
    if unknown:
        raise ValueError(f"freeze_all_but: {type(network).__name__} has no parameters under {unknown}")
    for name, parameter in network.named_parameters():
        if not name.startswith(prefixes):
            parameter.requires_grad_(False)
    return [name for name, parameter in network.named_parameters() if parameter.requires_grad]


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters that require a gradient (what a stage's optimizer updates)."""
    return [parameter for parameter in network.parameters() if parameter.requires_grad]
