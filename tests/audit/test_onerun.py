"""The one-run audit's statistics: p-values against an independent binomial, and the bound's coverage and power
on simulated randomised response (a mechanism whose epsilon is known exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from wsiseg.audit.onerun import epsilon_lower_bound, guess_from_scores, p_value


@pytest.mark.parametrize(("r", "v", "eps"), [(50, 40, 0.0), (50, 50, 1.0), (200, 150, 0.7), (10, 3, 2.0)])
def test_p_value_without_delta_is_the_binomial_tail(r: int, v: int, eps: float) -> None:
    q = math.exp(eps) / (1 + math.exp(eps))
    assert p_value(1000, r, v, eps, 0.0) == pytest.approx(float(stats.binom.sf(v - 1, r, q)), rel=1e-9, abs=1e-15)


def test_delta_term_raises_the_p_value_and_lowers_the_bound() -> None:
    assert p_value(200, 50, 45, 1.0, 1e-3) > p_value(200, 50, 45, 1.0, 0.0)
    assert epsilon_lower_bound(200, 50, 50, delta=1e-3) < epsilon_lower_bound(200, 50, 50, delta=0.0)


def test_perfect_guesses_give_the_known_ceiling() -> None:
    # r correct of r at 95 %: q^r = 0.05, eps = log(q / (1 - q)); 50 guesses -> about 2.78
    q = 0.05 ** (1 / 50)
    assert epsilon_lower_bound(200, 50, 50, delta=0.0) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)


def test_coverage_and_power_on_randomised_response() -> None:
    """eps-DP randomised response: the 95 % bound stays below eps in >= 90 % of trials, and detects eps = 3."""
    rng = np.random.default_rng(7)
    r = 200
    for eps, check in ((1.0, "coverage"), (3.0, "power")):
        q = math.exp(eps) / (1 + math.exp(eps))
        bounds = [epsilon_lower_bound(r, r, int(rng.binomial(r, q)), delta=0.0) for _ in range(60)]
        if check == "coverage":
            assert np.mean([b <= eps for b in bounds]) >= 0.9
        else:
            assert np.median(bounds) > 2.0


def test_guesses_count_top_and_bottom_scores() -> None:
    scores = [0.9, 0.1, 0.8, 0.2, 0.5, 0.4]
    included = [True, False, False, False, True, True]
    g = guess_from_scores(scores, included, k_in=2, k_out=2)  # in: 0.9 (yes), 0.8 (no); out: 0.1 (yes), 0.2 (yes)
    assert (g.m, g.r, g.v) == (6, 4, 3)
    with pytest.raises(ValueError, match="inconsistent"):
        guess_from_scores(scores, included, k_in=4, k_out=3)
    with pytest.raises(ValueError, match="need 0 <= v"):
        p_value(10, 5, 6, 1.0, 0.0)
