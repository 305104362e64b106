"""Gaussian noise for model updates, always from an explicit ``np.random.Generator``.

The Gaussian mechanism of FedDP eq. 11 adds ``N(0, z**2 * C**2 I)`` to the *sum* of clipped client
updates, where ``z`` is the noise multiplier (the paper's sigma) and ``C`` the clip norm. After dividing by
the number of clients ``n``, the per-coordinate std on the *mean* is ``z * C / n``.

Randomness: production runs pass ``seed=None`` and get a generator seeded from OS entropy; tests and
reproductions pass an explicit seed, which is then recorded. numpy's PCG64 is a statistical, not a
cryptographic, generator, and the normals are floating-point samples; both are the usual practice for
DP research code but fall short of a hardened implementation (see Mironov 2012 on floating-point attacks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wsiseg.errors import PrivacyError

__all__ = [
    "add_noise",
    "gaussian_noise_like",
    "make_generator",
    "noise_std_mean",
    "noise_std_sum",
]

Update = dict[str, np.ndarray]


def make_generator(seed: int | None) -> tuple[np.random.Generator, dict[str, Any]]:
    """Build the generator used for DP noise.

    Args:
        seed: A non-negative integer for a reproducible run (tests, reproductions), or ``None`` to seed
            from OS entropy (production).

    Returns:
        ``(rng, seed_info)``. ``seed_info`` is JSON-serialisable and safe to log:
        ``{"source": "user-seed", "seed": seed}`` for an explicit seed, or ``{"source": "os-entropy"}``
        with OS entropy. The OS entropy itself is never recorded, since anyone holding it could
        regenerate and subtract the noise.

    Raises:
        PrivacyError: If ``seed`` is negative or not an integer.
    """
    if seed is None:
        sequence = np.random.SeedSequence()
        return np.random.Generator(np.random.PCG64(sequence)), {"source": "os-entropy"}
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        msg = f"noise seed must be a non-negative integer or None (OS entropy), got {seed!r}"
        raise PrivacyError(msg)
    sequence = np.random.SeedSequence(int(seed))
    return np.random.Generator(np.random.PCG64(sequence)), {"source": "user-seed", "seed": int(seed)}


def _check_std(std: float) -> None:
    if not (math.isfinite(std) and std >= 0):
        msg = f"noise std must be a finite number >= 0, got {std!r}"
        raise PrivacyError(msg)


def _noise_dtype(dtype: np.dtype) -> type[np.floating]:
    """float64 tensors get float64 noise; everything else gets float32 (numpy's fast normal path)."""
    return np.float64 if dtype == np.float64 else np.float32


def gaussian_noise_like(update: Update, std: float, rng: np.random.Generator) -> Update:
    """Draw i.i.d. ``N(0, std**2)`` noise shaped like ``update``.

    Tensors are visited in the update's key order, so a seeded generator and the same update layout
    give the same noise.

    Args:
        update: Template mapping of name to tensor (only shapes and dtypes are used).
        std: Per-coordinate standard deviation.
        rng: The generator to draw from (see :func:`make_generator`).

    Returns:
        A new dict of float32 arrays (float64 where the template is float64).

    Raises:
        PrivacyError: If ``std`` is negative or not finite.
    """
    _check_std(std)
    out: Update = {}
    for name, tensor in update.items():
        arr = np.asarray(tensor)
        dtype = _noise_dtype(arr.dtype)
        noise = rng.standard_normal(arr.shape, dtype=dtype)
        noise *= dtype(std)
        out[name] = noise
    return out


def add_noise(update: Update, std: float, rng: np.random.Generator) -> Update:
    """Return ``update + N(0, std**2 I)`` as new arrays; the input is not modified.

    Args:
        update: Mapping of name to floating tensor.
        std: Per-coordinate standard deviation.
        rng: The generator to draw from.

    Returns:
        A new dict with the tensors' dtype preserved (float32 stays float32).

    Raises:
        PrivacyError: If ``std`` is negative or not finite.
    """
    noise = gaussian_noise_like(update, std, rng)
    return {k: (np.asarray(v) + noise[k]).astype(np.asarray(v).dtype, copy=False) for k, v in update.items()}


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        msg = f"{name} must be a finite number >= 0, got {value!r}"
        raise PrivacyError(msg)


def noise_std_sum(noise_multiplier: float, clip_norm: float) -> float:
    """Per-coordinate noise std added to the *sum* of clipped updates: ``z * C``.

    Args:
        noise_multiplier: ``z`` (the paper's sigma), the ratio of noise std to L2 sensitivity.
        clip_norm: ``C``, the L2 sensitivity of the sum under add/remove-one-client.

    Returns:
        ``z * C``.

    Raises:
        PrivacyError: If either argument is negative or not finite.
    """
    _check_positive("noise multiplier", noise_multiplier)
    _check_positive("clip norm", clip_norm)
    return float(noise_multiplier * clip_norm)


def noise_std_mean(noise_multiplier: float, clip_norm: float, n_clients: int) -> float:
    """Per-coordinate noise std on the *mean* of ``n_clients`` clipped updates: ``z * C / n``.

    Args:
        noise_multiplier: ``z``.
        clip_norm: ``C``.
        n_clients: The denominator of the mean (clients released, or the expected cohort size
            under Poisson sampling).

    Returns:
        ``z * C / n``.

    Raises:
        PrivacyError: If ``n_clients < 1`` or the other arguments are invalid.
    """
    if n_clients < 1:
        msg = f"number of clients must be >= 1, got {n_clients}"
        raise PrivacyError(msg)
    return noise_std_sum(noise_multiplier, clip_norm) / n_clients
