"""Differential privacy for federated training: clipping, Gaussian noise, accounting and calibration.

The maths are pure functions over ``dict[str, np.ndarray]`` model updates; the only stateful piece is
:class:`~wsiseg.privacy.ledger.PrivacyLedger`, which records released rounds and reports the
client-level ε (PLD headline, RDP cross-check). The paper's "ε = C/σ" is not a privacy guarantee and
is not computed here.
"""

from __future__ import annotations

from wsiseg.privacy.accounting import RDP_ORDERS, compute_epsilon, epsilon_for_history, meaningful_warning
from wsiseg.privacy.calibrate import calibrate_noise_multiplier, privacy_plan, rounds_within_budget
from wsiseg.privacy.clipping import ClipInfo, clip_update, global_l2_norm
from wsiseg.privacy.ledger import LEDGER_ROW_FIELDS, LedgerEntry, PrivacyLedger
from wsiseg.privacy.noise import (
    add_noise,
    gaussian_noise_like,
    make_generator,
    noise_std_mean,
    noise_std_sum,
)

__all__ = [
    "LEDGER_ROW_FIELDS",
    "RDP_ORDERS",
    "ClipInfo",
    "LedgerEntry",
    "PrivacyLedger",
    "add_noise",
    "calibrate_noise_multiplier",
    "clip_update",
    "compute_epsilon",
    "epsilon_for_history",
    "gaussian_noise_like",
    "global_l2_norm",
    "make_generator",
    "meaningful_warning",
    "noise_std_mean",
    "noise_std_sum",
    "privacy_plan",
    "rounds_within_budget",
]
