"""L2 clipping of model updates (the ``clip_C`` of FedDP eq. 11).

A model update is a ``dict[str, np.ndarray]`` (name -> float32 tensor) holding trainable parameters only;
BatchNorm buffers must not be part of it (they would count towards the norm and receive noise).

Two scopes are offered:

- ``"model"`` (the paper's eq. 11, DP-FedAvg of McMahan et al. 2018): the whole update is treated as one
  vector and scaled by ``min(1, C / ||Δ||)``, i.e. ``Δ / max(1, ||Δ|| / C)``.
- ``"layer"``: each of the ``L`` tensors is clipped on its own to ``C_l = C / sqrt(L)``. Since
  ``sum_l C_l**2 = C**2``, the whole update still has L2 norm at most ``C``; the L2 sensitivity of the sum
  over clients is therefore still ``C`` and the same accountant and the same noise std ``z * C`` apply.
  Layer scope clips more aggressively than model scope (a tensor is cut even when the total is below
  ``C``) but stops one huge tensor from eating the whole budget.

Functions here are pure: inputs are never modified in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wsiseg.errors import PrivacyError
from wsiseg.privacy.parallel import map_ordered

__all__ = ["ClipInfo", "ClipScope", "Update", "clip_update", "global_l2_norm", "model_clip_factor"]

Update = dict[str, np.ndarray]
ClipScope = Literal["model", "layer"]


@dataclass(frozen=True)
class ClipInfo:
    """What clipping did to one update.

    Attributes:
        pre_clip_norm: Global L2 norm of the update before clipping.
        post_clip_norm: Global L2 norm after clipping (``<= clip_norm`` up to float32 rounding).
        clipped: Whether any tensor was scaled down.
        scope: ``"model"`` or ``"layer"``.
    """

    pre_clip_norm: float
    post_clip_norm: float
    clipped: bool
    scope: str


def _tensor_norm(x: np.ndarray) -> float:
    """L2 norm of one tensor, accumulated in float64.

    ``einsum`` with a float64 accumulator avoids both a float64 copy of the tensor and BLAS's thread pool
    (``np.dot`` through OpenBLAS was 140x slower on a busy 2-core machine).
    """
    flat = np.asarray(x).ravel()
    return math.sqrt(float(np.einsum("i,i->", flat, flat, dtype=np.float64)))


def global_l2_norm(update: Update) -> float:
    """L2 norm of all tensors of an update taken together as one flat vector.

    Args:
        update: Mapping of parameter name to tensor.

    Returns:
        ``sqrt(sum over tensors of sum of squares)``, computed in float64.
    """
    tensors = list(update.values())
    norms = map_ordered(_tensor_norm, tensors, coords=sum(np.size(t) for t in tensors))
    return float(math.sqrt(sum(n**2 for n in norms)))  # summed in key order: thread count does not matter


def _check_clip_norm(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        msg = f"clip norm must be a positive finite number, got {clip_norm!r}; pass e.g. --clip 0.5"
        raise PrivacyError(msg)


def _scaled(x: np.ndarray, factor: float) -> np.ndarray:
    """A new array ``x * factor`` that keeps ``x``'s floating dtype (float32 stays float32)."""
    out = np.array(x, copy=True)
    if factor != 1.0:
        out *= np.asarray(factor, dtype=out.dtype)
    return out


def _validated_norm(update: Update, clip_norm: float) -> float:
    """Check ``clip_norm`` and the update (non-empty, floating, finite); return its global L2 norm."""
    _check_clip_norm(clip_norm)
    if not update:
        msg = "cannot clip an empty model update; the client returned no trainable parameters"
        raise PrivacyError(msg)
    for name, tensor in update.items():
        if not np.issubdtype(np.asarray(tensor).dtype, np.floating):
            msg = f"update tensor {name!r} has dtype {np.asarray(tensor).dtype}; send float parameters only"
            raise PrivacyError(msg)
    pre = global_l2_norm(update)
    if not math.isfinite(pre):
        msg = "model update contains NaN or inf; the client's local training diverged, lower its lr"
        raise PrivacyError(msg)
    return pre


def model_clip_factor(update: Update, clip_norm: float) -> tuple[float, ClipInfo]:
    """Whole-model clipping as a factor: ``min(1, C / ||Δ||)``, without copying the update.

    Lets an aggregator fold the factor into its weighted sum (``sum_i f_i Δ_i``) instead of materialising clipped
    copies of every update.

    Raises:
        PrivacyError: As :func:`clip_update`.
    """
    pre = _validated_norm(update, clip_norm)
    factor = min(1.0, clip_norm / pre) if pre > 0 else 1.0
    return factor, ClipInfo(pre_clip_norm=pre, post_clip_norm=pre * factor, clipped=factor < 1.0, scope="model")


def clip_update(update: Update, clip_norm: float, *, scope: ClipScope = "model") -> tuple[Update, ClipInfo]:
    """Clip an update to L2 norm at most ``clip_norm`` (FedDP eq. 11).

    Args:
        update: Mapping of parameter name to floating tensor; not modified.
        clip_norm: The bound ``C`` on the whole update's L2 norm.
        scope: ``"model"`` scales the whole update by ``min(1, C / ||Δ||)``; ``"layer"`` scales each
            tensor ``t`` by ``min(1, C_l / ||t||)`` with ``C_l = C / sqrt(n_tensors)``, so the whole
            update stays within ``C`` (see the module docstring).

    Returns:
        ``(clipped, info)``: a new dict of new arrays in the same order, and a :class:`ClipInfo`.

    Raises:
        PrivacyError: If ``clip_norm`` is not positive, the update is empty, has non-floating or
            non-finite values, or ``scope`` is unknown.
    """
    pre = _validated_norm(update, clip_norm)
    if scope == "model":
        factor = min(1.0, clip_norm / pre) if pre > 0 else 1.0
        clipped = {k: _scaled(v, factor) for k, v in update.items()}
        was_clipped = factor < 1.0
    elif scope == "layer":
        per_tensor = clip_norm / math.sqrt(len(update))
        clipped = {}
        was_clipped = False
        for k, v in update.items():
            n = _tensor_norm(v)
            factor = min(1.0, per_tensor / n) if n > 0 else 1.0
            was_clipped = was_clipped or factor < 1.0
            clipped[k] = _scaled(v, factor)
    else:
        msg = f"unknown clipping scope {scope!r}; use 'model' or 'layer'"
        raise PrivacyError(msg)
    post = pre * factor if scope == "model" else global_l2_norm(clipped)
    info = ClipInfo(pre_clip_norm=pre, post_clip_norm=post, clipped=was_clipped, scope=scope)
    return clipped, info
