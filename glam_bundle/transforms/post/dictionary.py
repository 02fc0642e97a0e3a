"""Dictionary transforms on the network's output (MONAI's ``postprocessing`` of a workflow)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["SelectOutputsd"]


class SelectOutputsd(MapTransform):
    """Keep the listed entries of the network's output dict, detached and moved to the CPU (frees the
    device memory of the intermediate maps before the writers run).

    Args:
        keys: key of the network output dict (usually "pred").
        outputs: names of the entries to keep; missing ones are skipped (e.g. ``y_fusion`` without fusion).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        outputs: Sequence[str] = ("y_global", "y_local", "y_fusion", "saliency", "patch_locations"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.outputs = tuple(outputs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = {name: d[key][name].detach().cpu() for name in self.outputs if name in d[key]}
        return d
