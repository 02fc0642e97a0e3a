"""Inferers and batch preparation of the bundle."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.inferers import Inferer
from torch import nn


class GLAMInferer(Inferer):
    """Run GLAM on a batch, optionally only its global module (global training stage, global-only evaluation).

    MONAI's ``SimpleInferer`` cannot fix a keyword of the network's forward, hence this class. Extra positional
    and keyword arguments (e.g. ``labels`` from ``PrepareBatchWithLabels``) go to the network unchanged.

    Args:
        global_only: compute only the global module's outputs (no patch selection, no local module).
    """

    def __init__(self, global_only: bool = False) -> None:
        super().__init__()
        self.global_only = global_only

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.global_only:
            kwargs["global_only"] = True
        return network(inputs, *args, **kwargs)


class PrepareBatchWithKeys(PrepareBatch):
    """``prepare_batch`` for MONAI's trainers and evaluators that hands batch entries to the network as keywords.

    Returns ``(image, label, (), {keyword: batch[key] on device ...})`` for the ``keys`` mapping (network keyword ->
    batch key) whose batch key is present; MONAI's engines call ``inferer(image, network, **kwargs)`` with them.
    E.g. ``{"labels": "label"}`` (random patches for negatives in training, paper section 3.3) and
    ``{"breast_mask": "breast_mask"}`` (saliency restricted to the breast, kept by
    ``finish_transforms(keep_breast_mask=True)``). In a config: ``{"_target_":
    "glam_bundle.inferers.PrepareBatchWithKeys", "keys": {"breast_mask": "breast_mask"}}``.

    Args:
        keys: network keyword -> batch key.
    """

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys = dict(keys or {})

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict[str, Any]]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        extra = {}
        for keyword, key in self.keys.items():
            value = label if key == "label" else batchdata.get(key)
            if value is not None:
                extra[keyword] = value.to(device=device, non_blocking=non_blocking) if torch.is_tensor(value) else value
        return image, label, (), extra


class PrepareBatchWithLabels(PrepareBatchWithKeys):
    """``prepare_batch`` for MONAI's trainers that also hands the image-level labels to the network.

    MONAI's ``SupervisedTrainer`` calls ``inferer(inputs, network, *args, **kwargs)`` with the ``args`` and
    ``kwargs`` of a 4-tuple returned by ``prepare_batch``; this returns ``(image, label, (), {"labels": label})``
    so that ``GLAM.forward(x, labels=...)`` draws random patches for negative images while the local module
    trains (paper section 3.3). In a config: ``"prepare_batch": {"_target_":
    "glam_bundle.inferers.PrepareBatchWithLabels"}`` in the trainer, with ``GLAMInferer`` as its inferer.
    A batch without labels gives ``(image, None, (), {})``.

    Args:
        keyword: name of the network's keyword argument ("labels" for GLAM).
    """

    def __init__(self, keyword: str = "labels") -> None:
        super().__init__({keyword: "label"})
        self.keyword = keyword


class PreparePatchBatch(PrepareBatch):
    """``prepare_batch`` for local-module training on the stage-2 patch cache (paper section 3.3 step 3):
    ``(batch["patches"], batch["label"])`` moved to ``device``, e.g. patches (N, K, 1, P, P) and labels (N, 2) from
    ``glam_bundle.data.patch_cache.PatchCacheDataset``. Use with :class:`PatchInferer`.

    Args:
        patches_key: batch key of the patches.
        label_key: batch key of the labels (None: no target).
    """

    def __init__(self, patches_key: str = "patches", label_key: str | None = "label") -> None:
        self.patches_key = patches_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.patches_key not in batchdata:
            raise KeyError(f"the batch has no {self.patches_key!r}; keys: {sorted(batchdata)}")
        patches = batchdata[self.patches_key].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata.get(self.label_key) if self.label_key is not None else None
        if label is not None:
            label = label.to(device=device, non_blocking=non_blocking, **kwargs)
        return patches, label


class PatchInferer(Inferer):
    """Run GLAM on patches (N, K, 1, P, P) already cut out: the local module and the aggregation, no global module
    (``GLAM.forward(x, patches=True)``, i.e. ``GLAM.forward_patches``), for training the local module on the stage-2
    patch cache. Through ``forward`` so that ``DistributedDataParallel`` synchronises the gradients.
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return network(inputs, *args, patches=True, **kwargs)
