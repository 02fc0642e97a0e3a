"""Training losses of GLAM (paper section 3.3 and appendix B).

Every loss takes the output dict of ``GLAM.forward`` (or ``GlobalNetwork.forward``) and the image-level labels
(N, C) in {0, 1}, and returns a scalar. Notation: N images, C = 2 classes, K patches, λ the sparsity weight.
After each call a loss's ``terms`` attribute holds the terms of that call as floats (see :class:`LossTermsMixin`),
which ``glam_bundle.handlers.LossTermsLogger`` writes to TensorBoard.
Probabilities and maps are cast to float32 and the loss is computed with autocast disabled: under MONAI's
``amp=True`` the network runs in float16/bfloat16, where ``F.binary_cross_entropy`` refuses to autocast and the
1 − 1e-7 clamp would round to 1 (an infinite loss for a confident wrong prediction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glam_bundle.networks.global_network import NATIVE_SALIENCY_KEYS

# Probabilities are clamped to [EPS, 1 − EPS] before the BCE (they come from sigmoids and can saturate).
EPS = 1e-7


def _check_weight(value: float, name: str) -> float:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _target(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Labels (N, C) as float32, checked against a prediction (N, C)."""
    if target.shape != like.shape:
        raise ValueError(f"labels must have the prediction's shape {tuple(like.shape)}, got {tuple(target.shape)}")
    if (target < 0).any():
        raise ValueError("training needs known image-level labels; the batch holds -1 (unknown)")
    return target.float()


def _pred(pred: dict[str, torch.Tensor], key: str, hint: str = "") -> torch.Tensor:
    """``pred[key]`` as float32 (a cast, so gradients flow to the float16/bfloat16 original)."""
    if key not in pred:
        raise KeyError(f"the network output has no {key!r}{hint}; keys: {sorted(pred)}")
    return pred[key].float()


def bce(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of probabilities (N, C) against float labels (N, C), in float32, averaged over the
    batch and the classes."""
    return F.binary_cross_entropy(probabilities.float().clamp(EPS, 1.0 - EPS), target.float())


def l1_per_image(maps: torch.Tensor) -> torch.Tensor:
    """ℓ1 norm of non-negative maps (N, ...) summed over everything but the batch, then averaged over the batch."""
    return maps.float().abs().flatten(1).sum(dim=1).mean()


def native_keys(pred: dict[str, torch.Tensor], num_scales: int) -> list[str]:
    """The ``saliency_native_*`` keys of ``pred``; there must be one per scale of ``y_scales``."""
    keys = [key for key in NATIVE_SALIENCY_KEYS if key in pred]
    if len(keys) != num_scales:
        absent = [key for key in NATIVE_SALIENCY_KEYS if key not in pred]
        raise KeyError(f"the network output has {num_scales} scale(s) in 'y_scales' but native saliency maps "
                       f"{keys} (absent: {absent}); keys: {sorted(pred)}")
    return keys


class LossTermsMixin:
    """Keeps the terms of the last call of a loss, for logging.

    ``terms`` is a dict {name: float} of the last forward call ({} before the first); the tensors are stored
    detached and converted to floats only when ``terms`` is read, so a training step pays no device
    synchronisation unless something logs them. Each call makes a new dict, so a reader can tell a fresh one
    from a stale one by identity. ``total`` is always the returned value.
    """

    _terms: dict[str, torch.Tensor]

    def _keep_terms(self, **terms: torch.Tensor) -> None:
        self._terms = {name: value.detach() for name, value in terms.items()}
        self._terms_cache: dict[str, float] | None = None

    @property
    def terms(self) -> dict[str, float]:
        """Terms of the last call as floats (a new dict after each call)."""
        if not getattr(self, "_terms", None):
            return {}
        if self._terms_cache is None:
            self._terms_cache = {name: float(value) for name, value in self._terms.items()}
        return self._terms_cache


class GlobalModuleLoss(LossTermsMixin, nn.Module):
    """L_g = Σ_n [BCE(y, ỹ_n) + λ Σ_(i,j) |S_n(i, j)|] over the three scales n of the global module (eq. 1).

    Reductions: BCE(y, ỹ_n) is averaged over the batch and the classes; the ℓ1 term of each S_n is summed over
    the classes and the positions of S_n *at its own resolution* (184×120, 92×60, 46×30 for a 2944×1920 input,
    appendix B) and averaged over the batch; both are summed over the three scales. The ỹ_n are those of the
    released model (top-t% pooled on the 184×120 grid).

    Args:
        sparsity_weight: λ (the paper searches 10^[-5.5, -3.5]).

    Forward: pred, the GLAM/GlobalNetwork output dict with ``y_scales`` (N, 3, C) and ``saliency_native_0/1/2``
    (N, C, h_n, w_n); target (N, C) image-level labels in {0, 1} -> scalar (float32). A global module with fewer
    saliency levels (CAM, GMIC: ``y_scales`` (N, 1, C) and ``saliency_native_2`` only) gives the same sum over
    the scales it has.

    Terms (``terms`` after a call): ``bce_s0``, ``bce_s1``, ``bce_s2`` (BCE(y, ỹ_n)), ``l1`` (Σ_n ‖S_n‖₁, not
    weighted), ``sparsity`` (λ·l1, the term added to the loss), ``total``.
    """

    def __init__(self, sparsity_weight: float = 3e-5) -> None:
        super().__init__()
        self.sparsity_weight = _check_weight(sparsity_weight, "sparsity_weight")

    def forward(self, pred: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        y_scales = _pred(pred, "y_scales")
        with torch.autocast(device_type=y_scales.device.type, enabled=False):
            labels = _target(target, y_scales[:, 0])
            bces = [bce(y_scales[:, n], labels) for n in range(y_scales.shape[1])]
            loss = sum(bces)
            sparsity = sum(l1_per_image(_pred(pred, key)) for key in native_keys(pred, y_scales.shape[1]))
            total = loss + self.sparsity_weight * sparsity
            self._keep_terms(**{f"bce_s{n}": value for n, value in enumerate(bces)}, l1=sparsity,
                             sparsity=self.sparsity_weight * sparsity, total=total)
            return total


class LocalModuleLoss(LossTermsMixin, nn.Module):
    """L_l = BCE(y, ŷ_l) + λ Σ_k Σ_(i,j) |A_k(i, j)| (paper section 3.3, step 3).

    The paper writes the ℓ1 term on S_l; it is taken on the patch maps A_k (128×128 per 512×512 patch) from
    which S_l is pasted, so that it does not depend on the upsampling to the image or on patch overlaps.

    Reductions: the BCE is averaged over the batch and the classes; the ℓ1 term is summed over the K patches,
    the classes and the positions of each A_k, and averaged over the batch.

    Args:
        sparsity_weight: λ.

    Forward: pred, the GLAM output dict with ``y_local`` (N, C) and ``saliency_patches`` (N, K, C, a, b);
    target (N, C) labels in {0, 1} -> scalar (float32).

    Terms (``terms`` after a call): ``bce`` (BCE(y, ŷ_l)), ``l1`` (Σ_k ‖A_k‖₁, not weighted), ``sparsity``
    (λ·l1), ``total``.
    """

    def __init__(self, sparsity_weight: float = 3e-5) -> None:
        super().__init__()
        self.sparsity_weight = _check_weight(sparsity_weight, "sparsity_weight")

    def forward(self, pred: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        hint = " (run GLAM with global_only=False)"
        y_local = _pred(pred, "y_local", hint)
        with torch.autocast(device_type=y_local.device.type, enabled=False):
            loss = bce(y_local, _target(target, y_local))
            l1 = l1_per_image(_pred(pred, "saliency_patches", hint))
            total = loss + self.sparsity_weight * l1
            self._keep_terms(bce=loss, l1=l1, sparsity=self.sparsity_weight * l1, total=total)
            return total


class JointLoss(LossTermsMixin, nn.Module):
    """L_t = L_g + L_l + L_f with L_f = BCE(y, ŷ_f) (paper section 3.3, step 4: joint training with fusion).

    Reductions: L_g as ``GlobalModuleLoss``, L_l as ``LocalModuleLoss``; BCE(y, ŷ_f) is averaged over the batch
    and the classes.

    Args:
        sparsity_weight: λ of L_g.
        local_sparsity_weight: λ of L_l (None: the same λ, as the paper writes one).

    Forward: pred, the GLAM output dict (``use_fusion=True``); target (N, C) labels in {0, 1} -> scalar
    (float32).

    Terms (``terms`` after a call): ``global`` (L_g), ``local`` (L_l), ``fusion`` (L_f = BCE(y, ŷ_f)),
    ``total``, and the terms of L_g and L_l prefixed ``global_`` and ``local_`` (``global_bce_s0``, ...,
    ``local_sparsity``; their ``total`` is left out, it is ``global`` / ``local``).
    """

    def __init__(self, sparsity_weight: float = 3e-5, local_sparsity_weight: float | None = None) -> None:
        super().__init__()
        self.global_loss = GlobalModuleLoss(sparsity_weight)
        self.local_loss = LocalModuleLoss(sparsity_weight if local_sparsity_weight is None else local_sparsity_weight)

    def forward(self, pred: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        y_fusion = _pred(pred, "y_fusion", " (build GLAM with use_fusion=True)")
        with torch.autocast(device_type=y_fusion.device.type, enabled=False):
            fusion = bce(y_fusion, _target(target, y_fusion))
            global_loss = self.global_loss(pred, target)
            local_loss = self.local_loss(pred, target)
            total = global_loss + local_loss + fusion
            parts = {f"{prefix}_{name}": value
                     for prefix, loss in (("global", self.global_loss), ("local", self.local_loss))
                     for name, value in loss._terms.items() if name != "total"}
            self._keep_terms(**{"global": global_loss, "local": local_loss, "fusion": fusion, "total": total}, **parts)
            return total
