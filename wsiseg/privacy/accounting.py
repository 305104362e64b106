"""Client-level privacy accounting for DP-FedAvg (pure functions; the run ledger is in ``ledger.py``).

What is accounted. One round releases ``(1/m)·(Σ_i clip_C(Δ_i) + N(0, z²C²I))`` (FedDP eq. 11). The unit of
privacy is **one client's whole dataset**, and neighbouring federations differ by **adding or removing one
client** (``NeighboringRelation.ADD_OR_REMOVE_ONE``): that moves the clipped sum by at most ``C``, so each
round is a Gaussian mechanism with noise multiplier ``z`` and ε depends on ``(z, q, rounds, δ)`` only, never
on ``C``. (Replace-one neighbours double the sensitivity: account them with ``z/2``.)

Client sampling. ``q`` is the probability that a client takes part in a round. ``q = 1`` (every client,
every round, the paper's setting) gives no amplification: ``T`` rounds are exactly one Gaussian mechanism
with noise multiplier ``(Σ_t 1/z_t²)^(-1/2)`` (μ-GDP with μ² = Σ T/z²), which is how full-participation
rounds are composed here, also when ``z`` changes. ``q < 1`` is accounted as **Poisson** sampling (each
client independently with probability ``q``) via ``PoissonSampledDpEvent``. If the server instead samples a
*fixed-size* subset of ``m = qK`` clients, Poisson accounting is an approximation that is common practice
but not a proven bound (fixed-size sampling is only analysed under replace-one neighbours); the federated
loop should sample Poisson-style when it claims amplification.

Methods. ``"pld"`` (the headline) uses dp_accounting's privacy-loss-distribution accountant with pessimistic
discretisation, so its ε is an upper bound, tight to ~1e-4 relative (about 1 absolute once ε is in the
thousands). The discretisation interval is ``2e-5 × ε_RDP`` (at least 1e-4) unless given; when ε_RDP exceeds
1e6 that RDP bound is returned, as no PLD grid is needed to say "no privacy". ``"rdp"`` (cross-check; Mironov
2017; Mironov, Talwar & Zhang 2019) uses dp_accounting's RDP accountant on the pinned order grid
:data:`RDP_ORDERS`; it is 3–8 % looser at ``q = 1`` and can be much looser under sampling at small ``z``, because
dp_accounting drops fractional orders whose series fails to converge (a conservative choice).

The paper's "ε = C/σ" (eq. 14) is not a privacy guarantee and is deliberately not computed anywhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

from wsiseg.errors import PrivacyError

__all__ = [
    "RDP_ORDERS",
    "AccountingMethod",
    "Segment",
    "compute_epsilon",
    "epsilon_for_history",
    "meaningful_warning",
    "validate_delta",
    "validate_rounds",
]

AccountingMethod = Literal["pld", "rdp"]

#: Rényi orders for the RDP accountant (dp_accounting's default grid, pinned here so results are stable).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)

_MEANINGFUL_EPSILON = 10.0
_PLD_RELATIVE_INTERVAL = 2e-5
_PLD_MIN_INTERVAL = 1e-4
_PLD_MAX_EPSILON = 1e6

#: One history segment: ``(noise_multiplier, sample_rate, rounds)``.
Segment = tuple[float, float, int]


def validate_rounds(noise_multiplier: float, sample_rate: float, rounds: int) -> None:
    """Check ``z >= 0``, ``0 < q <= 1`` and ``rounds >= 0``.

    Raises:
        PrivacyError: Naming the bad value.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        msg = f"noise multiplier must be a finite number >= 0, got {noise_multiplier!r}"
        raise PrivacyError(msg)
    if not (0 < sample_rate <= 1):
        msg = f"client sample rate q must be in (0, 1], got {sample_rate!r} (1 = all clients, every round)"
        raise PrivacyError(msg)
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
        msg = f"number of rounds must be a non-negative integer, got {rounds!r}"
        raise PrivacyError(msg)


def validate_delta(delta: float) -> None:
    """Check ``0 < delta < 1``.

    Raises:
        PrivacyError: With a usual choice of delta.
    """
    if not (0 < delta < 1):
        msg = f"delta must be in (0, 1), got {delta!r}; a common choice is 1e-5 or below 1/n_clients"
        raise PrivacyError(msg)


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """Silence dp_accounting's per-order 'failed to converge' warnings (those orders are dropped)."""
    logger = logging.getLogger("absl")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _events(history: Sequence[Segment]) -> list[dp_accounting.DpEvent]:
    """DP events for a history: full-participation rounds merged exactly, sampled ones self-composed."""
    inv_sq = 0.0
    sampled: dict[tuple[float, float], int] = {}
    for z, q, t in history:
        if t == 0:
            continue
        if q == 1:
            inv_sq += t / z**2
        else:
            sampled[(z, q)] = sampled.get((z, q), 0) + int(t)
    events: list[dp_accounting.DpEvent] = []
    if inv_sq > 0:
        events.append(dp_accounting.GaussianDpEvent(1.0 / math.sqrt(inv_sq)))
    for (z, q), t in sampled.items():
        one = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        events.append(dp_accounting.SelfComposedDpEvent(one, t))
    return events


def _rdp_epsilon(events: list[dp_accounting.DpEvent], delta: float) -> float:
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    with _quiet_absl():
        accountant.compose(dp_accounting.ComposedDpEvent(events))
        return float(accountant.get_epsilon(delta))


def _pld_epsilon(events: list[dp_accounting.DpEvent], delta: float, interval: float | None) -> float:
    if interval is None:
        scale = _rdp_epsilon(events, delta)
        if not scale <= _PLD_MAX_EPSILON:  # also inf/nan: RDP is an upper bound too; no PLD grid that wide
            return scale
        interval = max(_PLD_MIN_INTERVAL, _PLD_RELATIVE_INTERVAL * scale)
    accountant = pld.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


def epsilon_for_history(
    history: Sequence[Segment],
    *,
    delta: float,
    method: AccountingMethod = "pld",
    value_discretization_interval: float | None = None,
) -> float:
    """ε after composing a (possibly heterogeneous) history of DP-FedAvg rounds.

    Args:
        history: Segments ``(noise_multiplier, sample_rate, rounds)``; order does not matter.
        delta: Target δ of the (ε, δ) guarantee.
        method: ``"pld"`` (headline) or ``"rdp"`` (cross-check).
        value_discretization_interval: PLD grid step; ``None`` picks ``2e-5 × ε_RDP`` (at least 1e-4).

    Returns:
        ε (``0.0`` for an empty history, ``inf`` if any round had noise multiplier 0).

    Raises:
        PrivacyError: On invalid δ, noise multipliers, sample rates, round counts or method.
    """
    validate_delta(delta)
    for z, q, t in history:
        validate_rounds(z, q, t)
    if method not in ("pld", "rdp"):
        msg = f"unknown accounting method {method!r}; use 'pld' or 'rdp'"
        raise PrivacyError(msg)
    live = [(z, q, t) for z, q, t in history if t > 0]
    if not live:
        return 0.0
    if any(z == 0 for z, _, _ in live):
        return math.inf
    events = _events(live)
    if method == "rdp":
        return _rdp_epsilon(events, delta)
    return _pld_epsilon(events, delta, value_discretization_interval)


def compute_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    method: AccountingMethod = "pld",
    value_discretization_interval: float | None = None,
) -> float:
    """Client-level ε of ``rounds`` DP-FedAvg rounds with a fixed noise multiplier and sample rate.

    Neighbouring relation: add/remove one client. ``sample_rate`` is the Poisson probability of a
    client taking part in a round (``1`` = everyone, every round; see the module docstring for
    fixed-size cohorts).

    Args:
        noise_multiplier: ``z`` (the paper's sigma): noise std on the sum divided by the clip norm.
        sample_rate: ``q`` in (0, 1].
        rounds: Number of rounds released.
        delta: Target δ.
        method: ``"pld"`` or ``"rdp"``.
        value_discretization_interval: PLD grid step (``None``: automatic).

    Returns:
        ε at ``delta``.

    Raises:
        PrivacyError: On invalid arguments.

    Example:
        >>> round(compute_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=150, delta=1e-5), 1)
        126.4
    """
    return epsilon_for_history(
        [(noise_multiplier, sample_rate, rounds)],
        delta=delta,
        method=method,
        value_discretization_interval=value_discretization_interval,
    )


def meaningful_warning(epsilon: float) -> str | None:
    """A plain-language warning when ε is too large to mean anything, else ``None``.

    Args:
        epsilon: An accounted ε (never the paper's "C/σ").

    Returns:
        A one-line warning for ε above 10 (or infinite), otherwise ``None``.
    """
    if math.isinf(epsilon):
        return "epsilon is infinite: rounds without noise were released, so this run gives no formal privacy"
    if epsilon > _MEANINGFUL_EPSILON:
        return (
            f"epsilon = {epsilon:.4g} is above {_MEANINGFUL_EPSILON:g}: this run gives no meaningful formal "
            "privacy guarantee; raise --sigma, sample fewer clients a round or train fewer rounds"
        )
    return None
