"""Fixed-point arithmetic of secure aggregation, and the noise shares of distributed DP (pure functions).

Secure aggregation (Flower's SecAgg+, Bell et al. 2020) sums integer vectors modulo ``modulus_range``; each
site maps its float update onto a grid first. wsiseg chooses the grid so that the integer sum is exact:

- every value lies on the grid ``step * Z`` within ``[-clipping_range, clipping_range]``, where
  ``clipping_range`` and ``step = 2 * clipping_range / quantization_range`` are powers of two, so the
  float64 values, Flower's quantiser ``(x + clipping_range) / step`` and the decoding are exact;
- ``n_sites * quantization_range < modulus_range``, so the modular sum of up to ``n_sites`` vectors never
  wraps around (and ``quantization_range <= 2**30``, the range of Flower's int32 cast);
- ``clipping_range`` bounds a clipped, noised coordinate except with probability ``wrap_probability`` per
  round over all sites and coordinates (a coordinate above it is clamped and counted, never wrapped).

Each site rounds its update onto the grid stochastically with its own generator (:func:`to_grid`), so the sum
the server decodes differs from the sum of the unrounded values by less than ``k * step`` per coordinate for
``k`` contributors (:func:`quantisation_bound`).

Distributed DP (:func:`noise_share_std`, :func:`effective_multiplier`): each of the ``k`` contributing sites
adds ``N(0, sigma^2 C^2 / m)`` to its clipped update, so the sum carries ``sigma * C * sqrt(k / m)``, at least
the central amount whenever ``k >= m`` (``--min-clients``). The noise is drawn in floating point and rounded
to the nearest grid point; its std is ``10^5`` grid steps or more, where rounding is far below what the
accountant resolves (Kairouz, Liu and Steinke 2021 bound the discrete case), but it is an approximation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from wsiseg.errors import PrivacyError

__all__ = [
    "MODULUS_RANGE",
    "WRAP_PROBABILITY",
    "GridStats",
    "SecureSumRanges",
    "choose_ranges",
    "decode_sum",
    "effective_multiplier",
    "encode",
    "modular_sum",
    "noise_share_std",
    "quantisation_bound",
    "round_noise_to_grid",
    "to_grid",
]

Update = dict[str, np.ndarray]

#: The modulus of the masked sums (Flower's default and maximum, ``2**32``).
MODULUS_RANGE = 1 << 32
#: Chance per round, over all sites and coordinates, that a value leaves ``[-clipping_range, clipping_range]``.
WRAP_PROBABILITY = 1e-12
_MAX_QUANTIZATION = 1 << 30  # Flower casts the quantised values to int32


@dataclass(frozen=True)
class SecureSumRanges:
    """The grid every site's release is mapped onto before the masked sum (Flower's SecAgg+ settings).

    Attributes:
        clipping_range: Largest magnitude a coordinate may have (a power of two).
        quantization_range: Grid points across ``[-clipping_range, clipping_range]`` (a power of two).
        modulus_range: Modulus of the masked sums.
        n_sites: Most vectors the sum may hold without wrapping around.
    """

    clipping_range: float
    quantization_range: int
    modulus_range: int = MODULUS_RANGE
    n_sites: int = 1

    @property
    def step(self) -> float:
        """Grid spacing: ``2 * clipping_range / quantization_range``."""
        return 2.0 * self.clipping_range / self.quantization_range

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with the step)."""
        return {**asdict(self), "step": self.step}


@dataclass(frozen=True)
class GridStats:
    """What mapping one release onto the grid did: how many coordinates had to be clamped (normally none)."""

    clamped: int
    size: int


def _pow2_ceil(x: float) -> float:
    return float(2.0 ** math.ceil(math.log2(x)))


def choose_ranges(
    *, clip: float, noise_std: float, n_params: int, n_sites: int, wrap_probability: float = WRAP_PROBABILITY
) -> SecureSumRanges:
    """Grid and modulus for ``n_sites`` releases of ``n_params`` coordinates, clipped to ``clip`` plus noise.

    A clipped update has every coordinate within ``clip``; each site's noise is ``N(0, noise_std^2)`` per
    coordinate. ``clipping_range`` covers ``clip`` plus the Gaussian tail that all ``n_params * n_sites``
    coordinates stay inside with probability ``1 - wrap_probability`` (union bound), rounded up to a power of two.

    Raises:
        PrivacyError: Non-positive sizes, a bad probability, or more sites than the modulus can sum.
    """
    if n_params < 1 or n_sites < 1 or not clip > 0 or not noise_std >= 0 or not 0 < wrap_probability < 1:
        msg = (f"secure aggregation needs n_params, n_sites >= 1, clip > 0, noise std >= 0 and a wrap probability "
               f"in (0, 1); got {n_params}, {n_sites}, {clip}, {noise_std}, {wrap_probability}")  # fmt: skip
        raise PrivacyError(msg)
    quant = 1 << (math.floor(math.log2((MODULUS_RANGE - 1) / n_sites)))
    quant = min(quant, _MAX_QUANTIZATION)
    if quant < 1 << 16:
        msg = f"secure aggregation of {n_sites} sites leaves fewer than 2**16 grid points; use fewer sites a round"
        raise PrivacyError(msg)
    tail = -NormalDist().inv_cdf(wrap_probability / (2.0 * n_params * n_sites)) if noise_std > 0 else 0.0
    bound = clip + tail * noise_std
    crange = _pow2_ceil(bound * (1 + 2.0 / quant))  # leaves room for one grid step of rounding
    return SecureSumRanges(clipping_range=crange, quantization_range=quant, n_sites=n_sites)


def to_grid(update: Update, ranges: SecureSumRanges, rng: np.random.Generator) -> tuple[Update, GridStats]:
    """Round every coordinate stochastically onto the grid (unbiased; values already on it stay unchanged).

    Coordinates beyond ``clipping_range`` (probability at most ``WRAP_PROBABILITY`` with the ranges of
    :func:`choose_ranges`) are clamped to it and counted.

    Returns:
        ``(grid_update, stats)``: float64 arrays on the grid, and the number of clamped coordinates.
    """
    out: Update = {}
    clamped = size = 0
    lim = ranges.clipping_range
    for name, value in update.items():
        x = np.asarray(value, dtype=np.float64)
        clamped += int(np.count_nonzero(np.abs(x) > lim))
        size += x.size
        y = np.clip(x, -lim, lim) / ranges.step
        low = np.floor(y)
        frac = y - low
        if np.any(frac):  # no draws for a tensor already on the grid
            low += rng.random(y.shape) < frac
        out[name] = low * ranges.step
    return out, GridStats(clamped, size)


def round_noise_to_grid(noise: Update, ranges: SecureSumRanges) -> Update:
    """Noise rounded to the nearest grid point (float64), so a noised grid update stays on the grid."""
    return {k: np.rint(np.asarray(v, dtype=np.float64) / ranges.step) * ranges.step for k, v in noise.items()}


def encode(update: Update, ranges: SecureSumRanges) -> list[np.ndarray]:
    """Grid values as Flower's SecAgg+ quantiser maps them: ``(x + clipping_range) / step`` in ``[0, quant]``.

    Raises:
        PrivacyError: A value off the grid or out of range (it would not survive the exact sum).
    """
    out = []
    for name, value in update.items():
        j = (np.asarray(value, dtype=np.float64) + ranges.clipping_range) / ranges.step
        ints = np.rint(j)
        if np.any(ints != j) or np.any(ints < 0) or np.any(ints > ranges.quantization_range):
            msg = f"secure aggregation: tensor {name} is not on the grid of step {ranges.step:g}; call to_grid first"
            raise PrivacyError(msg)
        out.append(ints.astype(np.int64))
    return out


def modular_sum(encoded: list[list[np.ndarray]], ranges: SecureSumRanges) -> list[np.ndarray]:
    """The sum of encoded vectors modulo ``modulus_range``: what unmasking a SecAgg+ round yields."""
    if not encoded:
        msg = "secure aggregation of zero vectors"
        raise PrivacyError(msg)
    total = [np.zeros_like(a) for a in encoded[0]]
    for vec in encoded:
        total = [(t + v) % ranges.modulus_range for t, v in zip(total, vec, strict=True)]
    return total


def decode_sum(total: list[np.ndarray], names: list[str], shapes: list[tuple[int, ...]], contributors: int,
               ranges: SecureSumRanges) -> Update:  # fmt: skip
    """The float sum of ``contributors`` grid vectors from their integer sum (exact: powers of two)."""
    if not 1 <= contributors <= ranges.n_sites:
        msg = f"secure aggregation: {contributors} contributors for ranges sized for {ranges.n_sites} sites"
        raise PrivacyError(msg)
    return {n: (np.asarray(t, dtype=np.float64).reshape(s) * ranges.step - contributors * ranges.clipping_range)
            for n, s, t in zip(names, shapes, total, strict=True)}  # fmt: skip


def quantisation_bound(ranges: SecureSumRanges, contributors: int, *, noise_rounded: bool) -> float:
    """Per-coordinate bound on |decoded sum - sum of the unrounded releases| for ``contributors`` sites.

    Stochastic rounding moves a coordinate by less than one step; rounding the noise to the nearest grid point
    (distributed DP) by at most half a step more.
    """
    return contributors * ranges.step * (1.5 if noise_rounded else 1.0)


def noise_share_std(noise_multiplier: float, clip: float, min_sites: int) -> float:
    """Each site's noise std, so that ``min_sites`` shares sum to ``sigma * C``."""
    if min_sites < 1:
        msg = f"distributed DP needs --min-clients >= 1, got {min_sites}"
        raise PrivacyError(msg)
    return noise_multiplier * clip / math.sqrt(min_sites)


def effective_multiplier(noise_multiplier: float, *, contributors: int, min_sites: int, colluders: int = 0,
                         sensitivity_inflation: float = 1.0) -> float:  # fmt: skip
    """The noise multiplier of a round's sum as it is: ``k`` shares present, ``colluders`` of them known.

    The sum holds ``k`` shares of std ``sigma C / sqrt(m)``: std ``sigma C sqrt(k / m)``. Sites that collude
    with the server can subtract their own shares, leaving ``k - colluders``. The rounded update's norm
    bound is ``C * sensitivity_inflation``.

    Raises:
        PrivacyError: No honest share left (the sum carries no noise the attacker does not know).
    """
    honest = contributors - colluders
    if honest < 1 or min_sites < 1 or not sensitivity_inflation >= 1:
        msg = f"distributed DP: {contributors} contributors with {colluders} colluding leave no unknown noise"
        raise PrivacyError(msg)
    return noise_multiplier * math.sqrt(honest / min_sites) / sensitivity_inflation
