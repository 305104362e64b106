"""Aggregation maths for FedAvg and DP-FedAvg over ``dict[str, np.ndarray]`` updates (pure functions).

Updates are client deltas ``Δ_i = θ_i - θ_global`` of trainable parameters only (float32).

Two placements of the Gaussian noise are supported, both from FedDP eq. 11
``θ_{t+1} = θ_t + (1/k)·(Σ_i clip_C(Δ_i) + N(0, z²C²I))``:

- **central** (:func:`dp_fedavg_central`): the server clips every update, sums, adds ``N(0, z²C²)`` once
  and divides by ``k``. The released mean has per-coordinate noise std ``zC/k``. Protects the model
  against anyone who sees the *released* model, but not against the server, which sees raw updates.
- **local** (:func:`dp_client_update_local` + :func:`dp_fedavg_local_aggregate`): every client clips its
  own update and adds ``N(0, z²C²)`` before upload; the server takes the plain mean. Each upload is
  then a Gaussian mechanism with L2 sensitivity ``C`` (update present vs absent) seen by the server;
  the mean carries noise std ``zC/sqrt(k)``, i.e. ``sqrt(k)`` times more than central for the same ε.
  Distinguishing two *different* datasets of one client (replace-one) doubles the sensitivity to
  ``2C``, which is accounted as noise multiplier ``z/2``.

DP aggregation is deliberately **unweighted**: with weights ``w_i`` (e.g. by example count) one client
can move the weighted sum by ``w_max·C`` rather than ``C/k``, so the noise calibrated to ``C`` would be
silently too small. :func:`dp_fedavg_central` therefore takes no weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wsiseg.errors import ModelError, PrivacyError
from wsiseg.privacy.clipping import ClipInfo, ClipScope, clip_update, global_l2_norm, model_clip_factor
from wsiseg.privacy.noise import gaussian_noise_like, noise_std_sum
from wsiseg.privacy.parallel import map_ordered

__all__ = [
    "CentralDpStats",
    "apply_update",
    "dp_client_update_local",
    "dp_fedavg_central",
    "dp_fedavg_local_aggregate",
    "fedavg",
]

Update = dict[str, np.ndarray]


@dataclass(frozen=True)
class CentralDpStats:
    """Diagnostics of one central DP-FedAvg aggregation (log them every round).

    Attributes:
        n_clients: Number of client updates aggregated.
        denominator: What the noisy sum was divided by.
        pre_clip_norms: Each client's update L2 norm before clipping.
        fraction_clipped: Fraction of clients whose update was scaled down.
        noise_std_sum: Per-coordinate noise std on the sum, ``z * C``.
        noise_std_mean: Per-coordinate noise std on the mean, ``z * C / denominator``.
        clipped_mean_norm: L2 norm of the mean of the clipped updates, before noise.
        noise_norm: L2 norm of the noise on the mean.
        noise_to_signal: ``noise_norm / clipped_mean_norm`` (inf when the clipped mean is zero).
    """

    n_clients: int
    denominator: float
    pre_clip_norms: list[float] = field(default_factory=list)
    fraction_clipped: float = 0.0
    noise_std_sum: float = 0.0
    noise_std_mean: float = 0.0
    clipped_mean_norm: float = 0.0
    noise_norm: float = 0.0
    noise_to_signal: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the stats as a JSON-serialisable dict."""
        return asdict(self)


def _check_same_layout(updates: Sequence[Update]) -> None:
    if not updates:
        msg = "no client updates to aggregate; at least one client must return an update"
        raise ModelError(msg)
    ref = updates[0]
    for i, upd in enumerate(updates[1:], start=1):
        if list(upd) != list(ref) or any(np.shape(upd[k]) != np.shape(ref[k]) for k in ref):
            msg = (
                f"client update {i} has different parameter names or shapes than update 0; "
                "all clients must train the same model architecture"
            )
            raise ModelError(msg)


def _weighted_sum(updates: Sequence[Update], weights: Sequence[float]) -> Update:
    """``sum_i w_i * u_i`` accumulated in float64, returned in each tensor's original dtype.

    Each product ``w_i * u_i`` is formed in the tensor's own dtype (float32: relative error 6e-8) and
    added into the float64 accumulator; converting every update to float64 first was 5x slower. Tensors
    are summed on a thread pool when the updates are large; each tensor's sum is the same in any thread.
    """

    def one(name: str) -> np.ndarray:
        ref = np.asarray(updates[0][name])
        acc = np.zeros(ref.shape, dtype=np.float64)
        for upd, w in zip(updates, weights, strict=True):
            arr = np.asarray(upd[name])
            acc += arr * np.asarray(w, dtype=arr.dtype if arr.dtype.kind == "f" else np.float64)
        return acc.astype(ref.dtype)

    names = list(updates[0])
    coords = sum(np.size(v) for v in updates[0].values()) * len(updates)
    return dict(zip(names, map_ordered(one, names, coords=coords), strict=True))


def fedavg(updates: Sequence[Update], weights: Sequence[float] | None = None) -> Update:
    """Weighted mean of client updates (FedAvg, paper eq. 10/15); no privacy.

    Args:
        updates: Client updates with identical names and shapes.
        weights: Non-negative weights (e.g. example counts), normalised to sum 1; ``None`` for the
            unweighted mean.

    Returns:
        ``sum_i w_i u_i / sum_i w_i`` as new arrays in the updates' dtype.

    Raises:
        ModelError: If there are no updates or their layouts differ.
        PrivacyError: If weights have the wrong length, are negative or sum to zero.
    """
    _check_same_layout(updates)
    if weights is None:
        weights = [1.0] * len(updates)
    w = [float(x) for x in weights]
    if len(w) != len(updates) or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        msg = f"FedAvg weights must be {len(updates)} finite non-negative numbers with a positive sum, got {w}"
        raise PrivacyError(msg)
    total = sum(w)
    return _weighted_sum(updates, [x / total for x in w])


def dp_fedavg_central(
    updates: Sequence[Update],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    scope: ClipScope = "model",
    denominator: float | None = None,
) -> tuple[Update, CentralDpStats]:
    """Central DP-FedAvg (FedDP eq. 11): clip each update, sum, add ``N(0, z²C²I)`` once, divide.

    Args:
        updates: Raw client updates (not modified).
        clip_norm: ``C``.
        noise_multiplier: ``z`` (the paper's sigma); ``0`` gives clipping without noise.
        rng: Noise generator (see :func:`wsiseg.privacy.noise.make_generator`).
        scope: Clipping scope, ``"model"`` (paper) or ``"layer"``.
        denominator: Divide the noisy sum by this; ``None`` uses the number of updates, right when
            every client takes part every round. Under Poisson client sampling pass the *expected*
            cohort size ``q·K``: dividing by the realised count would leak it.

    Returns:
        ``(mean_update, stats)``: the noisy mean as float32 arrays and :class:`CentralDpStats`.

    Raises:
        ModelError: If there are no updates or their layouts differ.
        PrivacyError: If clip norm, noise multiplier or denominator are invalid.
    """
    _check_same_layout(updates)
    denom = float(len(updates) if denominator is None else denominator)
    if not (math.isfinite(denom) and denom > 0):
        msg = f"DP-FedAvg denominator must be positive, got {denominator!r}"
        raise PrivacyError(msg)
    if scope == "model":  # fold the clip factors into one weighted sum: no clipped copies of the updates
        factors, infos = zip(*(model_clip_factor(u, clip_norm) for u in updates), strict=True)
        clipped_mean = _weighted_sum(updates, [f / denom for f in factors])
    else:
        pairs = [clip_update(u, clip_norm, scope=scope) for u in updates]
        infos = tuple(i for _, i in pairs)
        clipped_mean = _weighted_sum([c for c, _ in pairs], [1.0 / denom] * len(pairs))
    std_sum = noise_std_sum(noise_multiplier, clip_norm)
    std_mean = std_sum / denom
    noise = gaussian_noise_like(clipped_mean, std_mean, rng)
    signal, noise_norm = global_l2_norm(clipped_mean), global_l2_norm(noise)
    mean_update = clipped_mean
    for k, v in mean_update.items():
        v += noise[k].astype(v.dtype, copy=False)  # in place: _weighted_sum returned fresh arrays
    stats = CentralDpStats(
        n_clients=len(updates),
        denominator=denom,
        pre_clip_norms=[i.pre_clip_norm for i in infos],
        fraction_clipped=sum(i.clipped for i in infos) / len(infos),
        noise_std_sum=std_sum,
        noise_std_mean=std_mean,
        clipped_mean_norm=signal,
        noise_norm=noise_norm,
        noise_to_signal=noise_norm / signal if signal > 0 else math.inf,
    )
    return mean_update, stats


def dp_client_update_local(
    update: Update,
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    scope: ClipScope = "model",
) -> tuple[Update, ClipInfo]:
    """Client side of *local* DP-FedAvg: clip to ``C`` and add ``N(0, z²C²I)`` before upload.

    Args:
        update: The client's raw update (not modified).
        clip_norm: ``C``.
        noise_multiplier: ``z``.
        rng: The client's own noise generator.
        scope: Clipping scope.

    Returns:
        ``(noised_update, clip_info)``.

    Raises:
        PrivacyError: If clip norm or noise multiplier are invalid.
    """
    std = noise_std_sum(noise_multiplier, clip_norm)
    if scope == "model":  # one pass: noise += factor * update, no clipped copy
        factor, info = model_clip_factor(update, clip_norm)
        noised = gaussian_noise_like(update, std, rng)
        for k, v in update.items():
            arr = np.asarray(v)
            noised[k] += arr * np.asarray(factor, dtype=arr.dtype)
        return {k: n.astype(np.asarray(update[k]).dtype, copy=False) for k, n in noised.items()}, info
    clipped, info = clip_update(update, clip_norm, scope=scope)
    noise = gaussian_noise_like(clipped, std, rng)
    return {k: (v + noise[k]).astype(v.dtype) for k, v in clipped.items()}, info


def dp_fedavg_local_aggregate(noised_updates: Sequence[Update]) -> Update:
    """Server side of local DP-FedAvg: the plain, unweighted mean of already-noised updates.

    Args:
        noised_updates: Outputs of :func:`dp_client_update_local`.

    Returns:
        Their unweighted mean (noise std ``zC/sqrt(k)`` per coordinate).

    Raises:
        ModelError: If there are no updates or their layouts differ.
    """
    return fedavg(noised_updates, None)


def apply_update(global_weights: Update, mean_update: Update) -> Update:
    """Return ``θ + Δ`` as new arrays; entries of ``θ`` absent from ``Δ`` (e.g. buffers) are copied.

    Args:
        global_weights: Current global parameters (not modified).
        mean_update: Aggregated update for a subset of those names.

    Returns:
        New global weights in ``global_weights``' dtypes.

    Raises:
        ModelError: If the update names a tensor the global model lacks or shapes differ.
    """
    for name, delta in mean_update.items():
        if name not in global_weights or np.shape(global_weights[name]) != np.shape(delta):
            msg = f"update tensor {name!r} does not match the global model; was it built for another model?"
            raise ModelError(msg)
    out: Update = {}
    for name, value in global_weights.items():
        arr = np.asarray(value)
        out[name] = (arr + mean_update[name]).astype(arr.dtype) if name in mean_update else arr.copy()
    return out
