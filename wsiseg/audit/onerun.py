"""The one-run audit's statistics: a lower bound on epsilon from canary guesses.

Steinke, Nasr and Jagielski, "Privacy auditing with one (1) training run", NeurIPS 2023, Theorem 3.1 and
Appendix D: from canaries that were each included with probability 1/2 and an
auditor's guesses, a lower bound on epsilon that holds with a chosen confidence.

If a mechanism is (eps, delta)-DP, the number of correct guesses out of ``r`` is stochastically dominated by
``Binomial(r, e^eps / (1 + e^eps))`` up to a delta term; observing ``v`` correct guesses therefore rejects
(eps, delta)-DP at level ``p`` when the tail probability is below ``p``. The largest eps rejected is the
empirical lower bound. Pure functions; written from the paper's statement, checked in the tests against a
direct Monte-Carlo of randomised response.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Guesses", "epsilon_lower_bound", "guess_from_scores", "p_value"]


def _log_pmf(k: np.ndarray, n: int, q: float) -> np.ndarray:
    lq, l1q = (math.log(q) if q > 0 else -math.inf), (math.log1p(-q) if q < 1 else -math.inf)
    comb = math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
    with np.errstate(invalid="ignore"):
        return comb + np.where(k > 0, k * lq, 0.0) + np.where(n - k > 0, (n - k) * l1q, 0.0)


def _pmf(k: np.ndarray, n: int, q: float) -> np.ndarray:
    return np.exp(_log_pmf(k, n, q))


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Probability of ``>= v`` correct guesses out of ``r`` under (eps, delta)-DP with ``m`` canaries.

    Args:
        m: Canaries, each included independently with probability 1/2.
        r: Guesses made (abstentions excluded).
        v: Correct guesses.
        eps: Epsilon of the null hypothesis.
        delta: Delta of the null hypothesis.

    Raises:
        ValueError: Counts out of order (``0 <= v <= r <= m``) or a negative epsilon / delta outside [0, 1].
    """
    if not (0 <= v <= r <= m) or eps < 0 or not (0 <= delta <= 1):
        msg = f"need 0 <= v <= r <= m, eps >= 0 and delta in [0, 1]; got m={m}, r={r}, v={v}, eps={eps}, delta={delta}"
        raise ValueError(msg)
    q = 1.0 / (1.0 + math.exp(-eps))
    ks = np.arange(0, r + 1)
    pmf = _pmf(ks, r, q)
    beta = float(pmf[v:].sum())
    if delta == 0 or v == 0:
        return min(1.0, beta)
    below = np.cumsum(pmf[:v][::-1])  # below[i-1] = P[v - i <= Binomial < v]
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """The largest eps such that (eps, delta)-DP is rejected at ``confidence`` (0 when nothing is rejected).

    A larger eps makes many correct guesses likelier, so the p-value grows with eps and the rejected set is
    ``[0, eps*)``; ``eps*`` is found by bisection.
    """
    p = 1.0 - confidence
    if not (0 < p < 1):
        msg = f"confidence must be in (0, 1), got {confidence}"
        raise ValueError(msg)
    if p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < p:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Guesses:
    """The auditor's guesses: ``r`` made, ``v`` correct, out of ``m`` canaries."""

    m: int
    r: int
    v: int


def guess_from_scores(scores: Sequence[float], included: Sequence[bool], *, k_in: int, k_out: int) -> Guesses:
    """Guess "in" for the ``k_in`` highest scores and "out" for the ``k_out`` lowest; abstain on the rest.

    ``k_in`` and ``k_out`` must be fixed before the scores are seen (the bound assumes it).
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or k_in + k_out > len(s) or k_in < 0 or k_out < 0:
        msg = f"{len(s)} scores, {len(inc)} membership bits, k_in={k_in}, k_out={k_out}: inconsistent"
        raise ValueError(msg)
    order = np.argsort(s, kind="stable")
    out_idx, in_idx = order[:k_out], order[len(s) - k_in :]
    v = int(inc[in_idx].sum() + (~inc[out_idx]).sum())
    return Guesses(len(s), k_in + k_out, v)
