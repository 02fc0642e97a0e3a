"""Numerical precision of inference: which autocast (if any) the evaluator runs the network under.

``precision`` settings (config key ``"precision"`` of configs/inference.json and configs/evaluate.json):

- ``"float32"``: no autocast, the network's own float32 arithmetic (the outputs the tests compare with the
  original implementation);
- ``"bfloat16"``: ``torch.autocast(device_type, dtype=torch.bfloat16)`` (CPU or GPU);
- ``"float16"``: ``torch.autocast("cuda", dtype=torch.float16)`` (GPU only; CPU float16 convolutions are slow);
- ``"auto"``: bfloat16 on a GPU that supports it (else float16), bfloat16 on a CPU with native bfloat16
  arithmetic (AVX-512 BF16 or AMX-BF16), float32 on any other CPU.

Reduced precision changes the outputs: docs/performance.md gives the measured differences against float32
(``scripts/benchmark_inference.py``) and why the configs keep ``"float32"``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_capabilities() -> dict[str, bool]:
    """{"avx512_bf16": ..., "amx_bf16": ...} of this CPU, from ``torch.cpu.get_capabilities()`` (cpuinfo) or, where
    that is missing, the flags of /proc/cpuinfo."""
    flags: dict[str, bool] = {}
    get = getattr(torch.cpu, "get_capabilities", None)
    if callable(get):
        try:
            caps = get()
            flags = {key: bool(caps.get(key, False)) for key in ("avx512_bf16", "amx_bf16")}
        except Exception:  # pragma: no cover - depends on the torch build
            flags = {}
    if not flags:
        try:
            with open("/proc/cpuinfo") as handle:
                words = set(handle.read().split())
        except OSError:
            words = set()
        flags = {key: key in words for key in ("avx512_bf16", "amx_bf16")}
    return flags


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX-BF16), where bfloat16 autocast pays."""
    return any(cpu_capabilities().values())


def _device_type(device: str | torch.device | None) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def resolve_precision(device: str | torch.device | None = None, setting: str = "auto") -> str:
    """The precision ("float32", "bfloat16" or "float16") that ``setting`` means on ``device``.

    Raises:
        ValueError: an unknown setting, or float16 on the CPU.
    """
    setting = str(setting).lower()
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {setting!r}")
    device_type = _device_type(device)
    if setting == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device_type == "cpu":
            return "bfloat16" if cpu_has_native_bf16() else "float32"
        return "float32"
    if setting == "float16" and device_type != "cuda":
        raise ValueError(f"precision 'float16' is for GPUs (device {device_type!r}): use 'bfloat16' or 'float32'")
    return setting


def resolve_autocast(device: str | torch.device | None = None, setting: str = "auto") -> dict[str, Any]:
    """Keyword arguments of ``torch.autocast`` for ``setting`` on ``device``:
    ``{"device_type": ..., "dtype": ..., "enabled": bool}`` (enabled False for float32)."""
    precision = resolve_precision(device, setting)
    device_type = _device_type(device)
    if precision == "float32":
        return {"device_type": device_type, "dtype": torch.float32, "enabled": False}
    return {"device_type": device_type, "dtype": _DTYPES[precision], "enabled": True}


def autocast_context(device: str | torch.device | None = None, setting: str = "auto") -> contextlib.AbstractContextManager:
    """A context manager running its body under the autocast that ``setting`` means (a no-op for float32)."""
    kwargs = resolve_autocast(device, setting)
    if not kwargs["enabled"]:
        return contextlib.nullcontext()
    return torch.autocast(**kwargs)


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` with every 4-D parameter and buffer in ``torch.channels_last``, in place (``Module.to`` refuses
    GLAM's 5-D gammas buffer). Loading a state dict later keeps the layout (``copy_`` writes into it)."""
    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            if param.ndim == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf is not None and buf.ndim == 4:
                setattr(sub, name, buf.contiguous(memory_format=torch.channels_last))
    return module


def resolve_channels_last(
    device: str | torch.device | None, precision_setting: str, setting: bool | str = "auto"
) -> bool:
    """Whether to run the network in ``torch.channels_last``: ``setting`` True/False, or "auto": with reduced
    precision only, where it was measured to help (bfloat16 on the CPU: 0.46× float32 against 0.51× without it;
    float32 within 3 % either way: docs/performance.md)."""
    if isinstance(setting, str):
        if setting.lower() != "auto":
            raise ValueError(f"channels_last must be true, false or 'auto', got {setting!r}")
        return resolve_precision(device, precision_setting) != "float32"
    return bool(setting)


def to_float32(value: Any) -> Any:
    """``value`` with every floating-point tensor (in dicts, lists, tuples) cast to float32, so that what follows the
    network (postprocessing, metrics, writers) sees the dtype of a float32 run."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, Mapping):
        return {key: to_float32(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_float32(v) for v in value)
    if isinstance(value, list):
        return [to_float32(v) for v in value]
    return value


class AutocastInferer(Inferer):
    """Runs another inferer under ``torch.autocast(**autocast)`` and returns its outputs in float32.

    Attributes of the wrapped inferer read through this one (e.g. ``global_only`` of ``GLAMInferer``).

    Args:
        inferer: the inferer to run (e.g. ``SimpleInferer``, ``GLAMInferer``).
        autocast: keyword arguments of ``torch.autocast`` (see :func:`resolve_autocast`).
        channels_last: hand a 4-D input to the inferer in ``torch.channels_last`` (for a network converted by
            :func:`to_channels_last`).
    """

    def __init__(self, inferer: Callable[..., Any], autocast: Mapping[str, Any], channels_last: bool = False) -> None:
        super().__init__()
        self.inferer = inferer
        self.autocast = dict(autocast)
        self.channels_last = bool(channels_last)

    def __getattr__(self, name: str) -> Any:
        if name == "inferer":  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**self.autocast):
            out = self.inferer(inputs, network, *args, **kwargs)
        return to_float32(out)


def describe(device: str | torch.device | None, setting: str) -> str:
    """One line for the log: the setting, what it resolved to and, for "auto", why."""
    precision = resolve_precision(device, setting)
    device_type = _device_type(device)
    text = f"precision {setting!r} on {device_type}: "
    text += "float32 (no autocast)" if precision == "float32" else f"{precision} autocast"
    if setting == "auto" and device_type == "cpu":
        flags = ", ".join(k for k, v in cpu_capabilities().items() if v) or "no native bfloat16"
        text += f" (CPU: {flags})"
    return text
