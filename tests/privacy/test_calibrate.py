"""Calibration tests; golden z values from design/privacy.md §2.2 (T = 150, δ = 1e-5)."""

from __future__ import annotations

import itertools
import math

import pytest

from wsiseg.errors import PrivacyError
from wsiseg.privacy.accounting import compute_epsilon
from wsiseg.privacy.calibrate import calibrate_noise_multiplier, privacy_plan, rounds_within_budget

T, DELTA = 150, 1e-5


def _eps(z: float, q: float, method: str = "pld", rounds: int = T) -> float:
    return compute_epsilon(noise_multiplier=z, sample_rate=q, rounds=rounds, delta=DELTA, method=method)


@pytest.mark.parametrize(
    ("target", "q", "method", "expected"),
    [
        (8.0, 1.0, "pld", 7.35),
        (8.0, 1.0, "rdp", 7.81),
        (1.0, 1.0, "pld", 45.7),
        (3.0, 1.0, "rdp", 18.3),
        (8.0, 0.2, "rdp", 1.79),
        (8.0, 0.5, "pld", 3.77),
    ],
)
def test_calibration_hits_target_and_table(target, q, method, expected):
    z = calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, rounds=T, sample_rate=q, method=method)
    assert z == pytest.approx(expected, rel=3e-3)
    assert _eps(z, q, method) <= target
    assert _eps(0.99 * z, q, method) > target


def test_calibration_unreachable_and_meaningless_targets():
    with pytest.raises(PrivacyError, match="above"):
        calibrate_noise_multiplier(target_epsilon=1e-4, delta=1e-10, rounds=10_000, sample_rate=1.0)
    with pytest.raises(PrivacyError, match="protects nothing"):
        calibrate_noise_multiplier(target_epsilon=1e12, delta=DELTA, rounds=1, sample_rate=1.0)
    with pytest.raises(PrivacyError):
        calibrate_noise_multiplier(target_epsilon=-1.0, delta=DELTA, rounds=T, sample_rate=1.0)


@pytest.mark.parametrize(("z", "q"), [(2.0, 1.0), (2.0, 0.2)])
def test_rounds_within_budget_boundary(z, q):
    target = 20.0
    n = rounds_within_budget(target_epsilon=target, delta=DELTA, noise_multiplier=z, sample_rate=q, max_rounds=5000)
    assert 1 <= n < 5000
    assert _eps(z, q, rounds=n) <= target
    assert _eps(z, q, rounds=n + 1) > target


def test_rounds_within_budget_edges():
    kw = {"delta": DELTA, "sample_rate": 1.0}
    # One round at z = 0.05 already costs ~284.
    assert rounds_within_budget(target_epsilon=10.0, noise_multiplier=0.05, max_rounds=150, **kw) == 0
    assert rounds_within_budget(target_epsilon=1e5, noise_multiplier=0.05, max_rounds=150, **kw) == 150
    assert rounds_within_budget(target_epsilon=10.0, noise_multiplier=5.0, max_rounds=0, **kw) == 0


def test_privacy_plan_rows_paper_setting():
    rows = privacy_plan(
        noise_multiplier=0.05, clip=0.5, n_clients=5, sample_rate=1.0, rounds=150, delta=DELTA, n_params=55_400_000
    )
    assert [r["round"] for r in rows] == [1, *range(10, 151, 10)]
    assert rows[0]["epsilon_pld"] == pytest.approx(284.4, rel=2e-3)
    assert rows[-1]["epsilon_pld"] == pytest.approx(31_045, rel=1e-3)
    assert rows[-1]["epsilon_rdp"] == pytest.approx(33_112, rel=1e-3)
    assert all(a["epsilon_pld"] < b["epsilon_pld"] for a, b in itertools.pairwise(rows))
    assert rows[0]["noise_std_sum"] == pytest.approx(0.025)
    assert rows[0]["noise_std_mean"] == pytest.approx(0.005)
    assert rows[0]["noise_norm_mean"] == pytest.approx(0.005 * math.sqrt(55_400_000))  # ~37 (privacy.md §0)


def test_privacy_plan_sampled_uses_expected_cohort_and_odd_length():
    rows = privacy_plan(noise_multiplier=1.0, clip=2.0, n_clients=10, sample_rate=0.3, rounds=25, delta=DELTA)
    assert [r["round"] for r in rows] == [1, 10, 20, 25]
    assert rows[0]["noise_std_mean"] == pytest.approx(2.0 / 3.0)
    assert "noise_norm_mean" not in rows[0]
    assert rows[-1]["epsilon_pld"] == pytest.approx(_eps(1.0, 0.3, rounds=25), rel=1e-9)
