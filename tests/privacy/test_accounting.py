"""Accounting tests pinned to design/privacy.md §2.2 (T = 150, δ = 1e-5, add/remove-one client)."""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings

import dp_accounting
import pytest

from wsiseg.errors import PrivacyError
from wsiseg.privacy.accounting import RDP_ORDERS, compute_epsilon, epsilon_for_history, meaningful_warning
from wsiseg.privacy.ledger import LEDGER_ROW_FIELDS, PrivacyLedger

T, DELTA = 150, 1e-5

# (z, q=1 RDP, q=1 PLD, q=1 exact, q=0.5 PLD, q=0.2 PLD) from privacy.md §2.2.
TABLE = [
    (0.05, 33_112, 31_045, 31_044, 20_145, 10_410),
    (0.15, 3_778, 3_682, 3_681, 2_204, 1_097),
    (0.25, 1_432, 1_409, 1_408, 769, 357),
    (0.35, 785, 761, 761, 381, 165),
    (0.5, 415, 404, 404, 185, 73.3),
    (1.0, 132, 126, 126, 52.5, 18.2),
    (2.0, 46.6, 44.1, 44.1, 18.4, 6.27),
]


def _eps(z: float, q: float, method: str = "pld", rounds: int = T) -> float:
    return compute_epsilon(noise_multiplier=z, sample_rate=q, rounds=rounds, delta=DELTA, method=method)


def _table_approx(value: float) -> object:
    # The table rounds to 3-5 significant figures; allow the rounding plus 0.1 %.
    return pytest.approx(value, rel=3e-3)


def test_rdp_order_grid_is_pinned():
    assert len(RDP_ORDERS) == 99 + 53 + 4
    assert RDP_ORDERS[0] == pytest.approx(1.1)
    assert RDP_ORDERS[98] == pytest.approx(10.9)
    assert RDP_ORDERS[99] == 11
    assert RDP_ORDERS[-1] == 1024
    assert list(RDP_ORDERS) == sorted(RDP_ORDERS)


@pytest.mark.parametrize(("z", "rdp1", "pld1", "exact1", "pld05", "pld02"), TABLE)
def test_full_participation_matches_table_and_closed_form(z, rdp1, pld1, exact1, pld05, pld02):
    pld = _eps(z, 1.0, "pld")
    # Second implementation: T Gaussian rounds = one Gaussian with multiplier z/sqrt(T) (Balle & Wang 2018).
    exact = dp_accounting.get_epsilon_gaussian(z / math.sqrt(T), DELTA)
    assert exact == _table_approx(exact1)
    # Pessimistic PLD is an upper bound, tight to ~1e-4 relative (~1 absolute once ε is in the thousands).
    assert exact <= pld <= exact * (1 + 2e-4) + 1.5
    assert pld == _table_approx(pld1)
    assert _eps(z, 1.0, "rdp") == _table_approx(rdp1)


@pytest.mark.parametrize(("z", "rdp1", "pld1", "exact1", "pld05", "pld02"), TABLE)
def test_sampled_pld_matches_table(z, rdp1, pld1, exact1, pld05, pld02):
    assert _eps(z, 0.5) == _table_approx(pld05)
    assert _eps(z, 0.2) == _table_approx(pld02)


def test_sampled_rdp_matches_table_where_dp_accounting_converges():
    # Opacus-RDP column of §2.2; dp_accounting agrees where its fractional orders converge.
    for z, q, value in [(0.05, 0.5, 31_968), (0.05, 0.2, 30_456), (0.15, 0.5, 2_760), (2.0, 0.2, 6.83)]:
        assert _eps(z, q, "rdp") == _table_approx(value)
    # Elsewhere dp_accounting drops orders and is looser (never tighter) than Opacus: 306.6 vs 196.
    assert _eps(0.5, 0.5, "rdp") >= 196


def test_single_release_values():
    # One round at the paper's z = 0.05 is already epsilon ~284; z = 0.5 once is ~10.
    assert _eps(0.05, 1.0, rounds=1) == pytest.approx(284.4, rel=2e-3)
    assert _eps(0.5, 1.0, rounds=1) == pytest.approx(10.0, rel=0.02)
    assert _eps(1.0, 1.0, rounds=0) == 0.0


def test_rdp_agrees_with_opacus_on_same_grid():
    analysis = pytest.importorskip("opacus.accountants.analysis.rdp")
    for z, q in [(0.05, 1.0), (1.0, 1.0), (2.0, 0.2), (1.0, 0.2)]:
        rdp = analysis.compute_rdp(q=q, noise_multiplier=z, steps=T, orders=list(RDP_ORDERS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, _ = analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=DELTA)
        ours = _eps(z, q, "rdp")
        tol = 1e-9 if q == 1.0 else 5e-3  # same maths at q = 1; series truncation under sampling
        assert ours == pytest.approx(theirs, rel=tol)


@pytest.mark.parametrize(("z", "q"), [(1.0, 1.0), (1.0, 0.5), (0.5, 0.2), (2.0, 0.2)])
def test_pld_agrees_with_opacus_prv(z, q):
    accountants = pytest.importorskip("opacus.accountants")
    prv = accountants.PRVAccountant()
    prv.history = [(z, q, T)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = prv.get_epsilon(DELTA)
    assert _eps(z, q) == pytest.approx(theirs, rel=5e-3)


@pytest.mark.parametrize("method", ["pld", "rdp"])
@pytest.mark.parametrize("q", [1.0, 0.3])
def test_monotone_in_rounds_and_sigma(method, q):
    by_rounds = [_eps(1.0, q, method, rounds=t) for t in (1, 10, 50, 150)]
    assert all(a < b for a, b in itertools.pairwise(by_rounds))
    by_sigma = [_eps(z, q, method, rounds=50) for z in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in itertools.pairwise(by_sigma))


def test_heterogeneous_full_participation_is_exact_gaussian():
    eps = epsilon_for_history([(1.0, 1.0, 50), (2.0, 1.0, 100)], delta=DELTA)
    z_eff = 1.0 / math.sqrt(50 / 1.0**2 + 100 / 2.0**2)
    assert eps == pytest.approx(dp_accounting.get_epsilon_gaussian(z_eff, DELTA), rel=2e-4)


def test_heterogeneous_sampled_history_composes_per_entry():
    mixed = epsilon_for_history([(1.0, 0.5, 20), (2.0, 0.5, 30), (1.0, 0.5, 10)], delta=DELTA)
    same_grouped = epsilon_for_history([(1.0, 0.5, 30), (2.0, 0.5, 30)], delta=DELTA)
    assert mixed == pytest.approx(same_grouped, rel=1e-9)
    assert _eps(2.0, 0.5, rounds=60) < mixed < _eps(1.0, 0.5, rounds=60)
    with_full = epsilon_for_history([(1.0, 0.5, 30), (2.0, 1.0, 30)], delta=DELTA)
    assert with_full > epsilon_for_history([(1.0, 0.5, 30)], delta=DELTA)


def test_zero_noise_is_infinite_and_errors():
    assert math.isinf(_eps(0.0, 1.0, rounds=3))
    for kwargs in (
        {"noise_multiplier": -1.0, "sample_rate": 1.0, "rounds": 1, "delta": DELTA},
        {"noise_multiplier": 1.0, "sample_rate": 0.0, "rounds": 1, "delta": DELTA},
        {"noise_multiplier": 1.0, "sample_rate": 1.5, "rounds": 1, "delta": DELTA},
        {"noise_multiplier": 1.0, "sample_rate": 1.0, "rounds": -1, "delta": DELTA},
        {"noise_multiplier": 1.0, "sample_rate": 1.0, "rounds": 1, "delta": 0.0},
    ):
        with pytest.raises(PrivacyError):
            compute_epsilon(**kwargs)
    with pytest.raises(PrivacyError, match="method"):
        compute_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=1, delta=DELTA, method="gdp")  # type: ignore[arg-type]


def test_150_rounds_are_fast():
    start = time.perf_counter()
    _eps(0.05, 1.0)
    _eps(0.05, 0.5)
    _eps(1.0, 0.2)
    assert time.perf_counter() - start < 5.0


def test_meaningful_warning():
    warning = meaningful_warning(_eps(0.05, 1.0))
    assert warning is not None
    assert "no meaningful formal privacy" in warning
    assert meaningful_warning(8.0) is None
    assert meaningful_warning(math.inf) is not None


def _record(ledger: PrivacyLedger, rounds: range, z: float = 1.0, clip: float = 0.5) -> None:
    for r in rounds:
        ledger.record_round(round=r, noise_multiplier=z, sample_rate=1.0, clip=clip, n_clients_released=5)


def test_ledger_matches_pure_function_and_ignores_clip():
    ledger, other_clip = PrivacyLedger(delta=DELTA), PrivacyLedger(delta=DELTA)
    _record(ledger, range(1, 11))
    _record(other_clip, range(1, 11), clip=50.0)
    expected = _eps(1.0, 1.0, rounds=10)
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert other_clip.epsilon() == pytest.approx(expected, rel=1e-9)  # ε never depends on C
    assert ledger.epsilon(method="rdp") == pytest.approx(_eps(1.0, 1.0, "rdp", rounds=10))
    assert ledger.epsilon(1e-3) < ledger.epsilon()
    rows = ledger.to_rows()
    assert [r["round"] for r in rows] == list(range(1, 11))
    assert tuple(rows[0]) == LEDGER_ROW_FIELDS
    assert rows[-1]["epsilon_pld"] == pytest.approx(expected, rel=1e-9)
    assert rows[0]["epsilon_pld"] == pytest.approx(_eps(1.0, 1.0, rounds=1), rel=1e-9)
    assert all(r["epsilon_rdp"] >= r["epsilon_pld"] for r in rows)
    assert ledger.projected_epsilon(noise_multiplier=1.0, sample_rate=1.0, extra_rounds=5) == pytest.approx(
        _eps(1.0, 1.0, rounds=15), rel=1e-9
    )


def test_ledger_resume_continues_same_history():
    full = PrivacyLedger(delta=DELTA)
    _record(full, range(1, 4), z=1.0)
    _record(full, range(4, 7), z=2.0)
    first = PrivacyLedger(delta=DELTA)
    _record(first, range(1, 4), z=1.0)
    saved = json.dumps(first.state_dict(), allow_nan=False)
    resumed = PrivacyLedger(delta=0.5)
    resumed.load_state_dict(json.loads(saved))
    assert resumed.delta == DELTA
    _record(resumed, range(4, 7), z=2.0)
    assert resumed.to_rows() == full.to_rows()
    assert resumed.epsilon() == full.epsilon()
    with pytest.raises(PrivacyError, match="increase"):
        _record(resumed, range(6, 7))
    with pytest.raises(PrivacyError):
        resumed.load_state_dict({"version": 99})
    with pytest.raises(PrivacyError, match="malformed"):
        resumed.load_state_dict({"version": 1, "delta": DELTA, "entries": [{"round": 1}]})


def test_ledger_infinite_epsilon_is_json_safe():
    ledger = PrivacyLedger(delta=DELTA)
    ledger.record_round(round=1, noise_multiplier=0.0, sample_rate=1.0, clip=1.0, n_clients_released=2)
    state = json.loads(json.dumps(ledger.state_dict(), allow_nan=False))
    restored = PrivacyLedger(delta=DELTA)
    restored.load_state_dict(state)
    assert math.isinf(restored.entries[0].epsilon_pld)
    assert math.isinf(restored.epsilon())
