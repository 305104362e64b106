"""Calibration and planning on top of :mod:`wsiseg.privacy.accounting` (pure functions).

- :func:`calibrate_noise_multiplier`: the smallest noise multiplier ``z`` whose ε after ``rounds`` rounds
  is within a target.
- :func:`rounds_within_budget`: how many rounds fit in a target ε at a given ``z`` (the training loop stops
  before a round would exceed it).
- :func:`privacy_plan`: the table printed by ``--dry-run``: ε by round plus noise std and noise norm.

ε is monotone: it rises with rounds and sample rate and falls with ``z``, which the searches rely on.
"""

from __future__ import annotations

import math
from typing import Any

from wsiseg.errors import PrivacyError
from wsiseg.privacy.accounting import AccountingMethod, compute_epsilon
from wsiseg.privacy.noise import noise_std_mean, noise_std_sum

__all__ = ["Z_MAX", "Z_MIN", "calibrate_noise_multiplier", "privacy_plan", "rounds_within_budget"]

#: Search range for the noise multiplier.
Z_MIN = 1e-3
Z_MAX = 1e4


def _check_target(target_epsilon: float) -> None:
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        msg = f"target epsilon must be a positive finite number, got {target_epsilon!r}"
        raise PrivacyError(msg)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sample_rate: float,
    method: AccountingMethod = "pld",
    tol: float = 1e-3,
) -> float:
    """Smallest noise multiplier ``z`` with ``ε(z) <= target_epsilon`` after ``rounds`` rounds.

    A cheap RDP calibration brackets the answer first (RDP is never tighter than PLD), then a
    geometric bisection narrows it until ``hi / lo - 1 <= tol``. The returned value is the upper end,
    so ``ε(z) <= target`` holds and ``ε(z / (1 + tol)) > target``.

    Args:
        target_epsilon: The ε budget.
        delta: Target δ.
        rounds: Planned number of rounds (>= 1).
        sample_rate: Client sampling probability ``q`` in (0, 1].
        method: ``"pld"`` (headline) or ``"rdp"``.
        tol: Relative precision of ``z``.

    Returns:
        The calibrated noise multiplier.

    Raises:
        PrivacyError: If the target cannot be met with ``z <= Z_MAX`` or is met even at ``Z_MIN``
            (a budget that large protects nothing), or on invalid arguments.
    """
    _check_target(target_epsilon)
    if rounds < 1 or not (0 < tol < 1):
        msg = f"calibration needs rounds >= 1 and 0 < tol < 1, got rounds={rounds!r}, tol={tol!r}"
        raise PrivacyError(msg)

    def eps(z: float, m: AccountingMethod) -> float:
        return compute_epsilon(noise_multiplier=z, sample_rate=sample_rate, rounds=rounds, delta=delta, method=m)

    if eps(Z_MAX, method) > target_epsilon:
        msg = (
            f"target epsilon {target_epsilon:g} at delta {delta:g} over {rounds} rounds (q={sample_rate:g}) "
            f"needs a noise multiplier above {Z_MAX:g}; raise the target, train fewer rounds or sample fewer clients"
        )
        raise PrivacyError(msg)
    if eps(Z_MIN, method) <= target_epsilon:
        msg = (
            f"target epsilon {target_epsilon:g} is met even with noise multiplier {Z_MIN:g}; "
            "such a budget protects nothing, choose a target of 10 or less"
        )
        raise PrivacyError(msg)
    lo, hi = Z_MIN, Z_MAX
    if method == "pld":  # RDP upper-bounds PLD, so its z is an upper bracket; halve for a lower one.
        hi = calibrate_noise_multiplier(
            target_epsilon=target_epsilon,
            delta=delta,
            rounds=rounds,
            sample_rate=sample_rate,
            method="rdp",
            tol=tol,
        )
        lo = hi / 2
        while lo > Z_MIN and eps(lo, method) <= target_epsilon:
            hi, lo = lo, max(Z_MIN, lo / 2)
    while hi / lo - 1 > tol:
        mid = math.sqrt(lo * hi)
        if eps(mid, method) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def rounds_within_budget(
    *,
    target_epsilon: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    max_rounds: int,
    method: AccountingMethod = "pld",
) -> int:
    """Largest ``T <= max_rounds`` with ``ε(T) <= target_epsilon`` (0 if even one round exceeds it).

    Args:
        target_epsilon: The ε budget.
        delta: Target δ.
        noise_multiplier: ``z``.
        sample_rate: ``q`` in (0, 1].
        max_rounds: Upper limit of the search (>= 0).
        method: ``"pld"`` or ``"rdp"``.

    Returns:
        The number of rounds that fit in the budget.

    Raises:
        PrivacyError: On invalid arguments.
    """
    _check_target(target_epsilon)
    if max_rounds < 0:
        msg = f"max_rounds must be >= 0, got {max_rounds!r}"
        raise PrivacyError(msg)

    def fits(t: int) -> bool:
        e = compute_epsilon(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, rounds=t, delta=delta, method=method
        )
        return e <= target_epsilon

    if max_rounds == 0 or not fits(1):
        return 0
    if fits(max_rounds):
        return max_rounds
    lo, hi = 1, max_rounds  # fits(lo) and not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _plan_rounds(rounds: int) -> list[int]:
    return sorted({1, rounds, *range(10, rounds + 1, 10)})


def privacy_plan(
    *,
    noise_multiplier: float,
    clip: float,
    n_clients: int,
    sample_rate: float,
    rounds: int,
    delta: float,
    n_params: int | None = None,
    sensitivity: float = 1.0,
) -> list[dict[str, Any]]:
    """Rows for ``--dry-run``: ε at round 1, every 10th round and the last, plus the noise scale.

    The noise std on the mean uses the expected cohort size ``q·K`` as the denominator (the number of
    clients when ``q = 1``).

    Args:
        noise_multiplier: ``z``.
        clip: Clip norm ``C``.
        n_clients: Number of clients ``K`` in the federation.
        sample_rate: ``q`` in (0, 1].
        rounds: Planned number of rounds (>= 1).
        delta: Target δ.
        n_params: Number of trainable parameters ``d``; adds ``noise_norm_mean ≈ sqrt(d)·std_mean``.
        sensitivity: L2 sensitivity of a round in units of ``C`` (2 for local DP under replace-one); ε is
            accounted with noise multiplier ``z / sensitivity``, the noise scales with ``z``.

    Returns:
        One dict per listed round with keys ``round``, ``epsilon_pld``, ``epsilon_rdp``,
        ``noise_std_sum``, ``noise_std_mean`` and, with ``n_params``, ``noise_norm_mean``.

    Raises:
        PrivacyError: On invalid arguments.
    """
    if rounds < 1 or n_clients < 1 or not sensitivity > 0:
        msg = f"a privacy plan needs rounds >= 1 and n_clients >= 1, got {rounds!r} and {n_clients!r}"
        raise PrivacyError(msg)
    std_sum = noise_std_sum(noise_multiplier, clip)
    std_mean = noise_std_mean(noise_multiplier, clip, 1) / (sample_rate * n_clients)
    rows: list[dict[str, Any]] = []
    for t in _plan_rounds(rounds):
        kw: dict[str, Any] = {
            "noise_multiplier": noise_multiplier / sensitivity,
            "sample_rate": sample_rate,
            "rounds": t,
            "delta": delta,
        }
        row: dict[str, Any] = {
            "round": t,
            "epsilon_pld": compute_epsilon(method="pld", **kw),
            "epsilon_rdp": compute_epsilon(method="rdp", **kw),
            "noise_std_sum": std_sum,
            "noise_std_mean": std_mean,
        }
        if n_params is not None:
            row["noise_norm_mean"] = math.sqrt(n_params) * std_mean
        rows.append(row)
    return rows
