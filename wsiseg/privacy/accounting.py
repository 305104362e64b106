"""Client-level privacy accounting for DP-FedAvg (pure functions plus a small stateful ledger).

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

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting import pld, rdp

from wsiseg.errors import PrivacyError

__all__ = [
    "LEDGER_ROW_FIELDS",
    "RDP_ORDERS",
    "AccountingMethod",
    "LedgerEntry",
    "PrivacyLedger",
    "compute_epsilon",
    "epsilon_for_history",
    "meaningful_warning",
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


def _validate(noise_multiplier: float, sample_rate: float, rounds: int) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        msg = f"noise multiplier must be a finite number >= 0, got {noise_multiplier!r}"
        raise PrivacyError(msg)
    if not (0 < sample_rate <= 1):
        msg = f"client sample rate q must be in (0, 1], got {sample_rate!r} (1 = all clients, every round)"
        raise PrivacyError(msg)
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
        msg = f"number of rounds must be a non-negative integer, got {rounds!r}"
        raise PrivacyError(msg)


def _validate_delta(delta: float) -> None:
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
    _validate_delta(delta)
    for z, q, t in history:
        _validate(z, q, t)
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
            "privacy guarantee; raise --noise-multiplier, sample fewer clients a round or train fewer rounds"
        )
    return None


#: Column order of :meth:`PrivacyLedger.to_rows` (for a CSV writer).
LEDGER_ROW_FIELDS: tuple[str, ...] = (
    "round",
    "sigma",
    "q",
    "clip",
    "n_clients",
    "epsilon_pld",
    "epsilon_rdp",
)
_STATE_VERSION = 1


@dataclass(frozen=True)
class LedgerEntry:
    """One released round as recorded by :class:`PrivacyLedger`.

    Attributes:
        round: Round number (strictly increasing, continues across resumes).
        noise_multiplier: ``z`` used in this round.
        sample_rate: ``q`` used in this round.
        clip: Clip norm ``C`` (informational: ε does not depend on it).
        n_clients_released: Clients whose updates entered the release.
        epsilon_pld: Cumulative PLD ε up to and including this round, at the ledger's δ.
        epsilon_rdp: Cumulative RDP ε likewise.
    """

    round: int
    noise_multiplier: float
    sample_rate: float
    clip: float
    n_clients_released: int
    epsilon_pld: float
    epsilon_rdp: float


def _json_float(x: float) -> float | None:
    return None if math.isinf(x) else float(x)


def _from_json_float(x: float | None) -> float:
    return math.inf if x is None else float(x)


class PrivacyLedger:
    """The per-run record of released rounds; the maths lives in :func:`epsilon_for_history`.

    Keep one ledger per training run, call :meth:`record_round` after every release and save
    :meth:`state_dict` next to the checkpoint so a resumed run continues the same ledger.

    Args:
        delta: δ at which the per-round cumulative ε are recorded.
        value_discretization_interval: PLD grid step (``None``: automatic).

    Raises:
        PrivacyError: If ``delta`` is not in (0, 1).
    """

    def __init__(self, *, delta: float, value_discretization_interval: float | None = None) -> None:
        _validate_delta(delta)
        self.delta = float(delta)
        self.value_discretization_interval = value_discretization_interval
        self._entries: list[LedgerEntry] = []

    @property
    def entries(self) -> list[LedgerEntry]:
        """A copy of the recorded rounds, oldest first."""
        return list(self._entries)

    def _segments(self, extra: Sequence[Segment] = ()) -> list[Segment]:
        return [(e.noise_multiplier, e.sample_rate, 1) for e in self._entries] + list(extra)

    def record_round(
        self, *, round: int, noise_multiplier: float, sample_rate: float, clip: float, n_clients_released: int
    ) -> LedgerEntry:
        """Record one released round and return its entry with the cumulative ε.

        Args:
            round: Round number, greater than the last recorded one.
            noise_multiplier: ``z`` of this round.
            sample_rate: ``q`` of this round.
            clip: Clip norm ``C``.
            n_clients_released: Number of client updates in the release (0 for a noise-only central round).

        Returns:
            The new :class:`LedgerEntry`.

        Raises:
            PrivacyError: On invalid values or a round number that does not increase.
        """
        _validate(noise_multiplier, sample_rate, 1)
        if self._entries and round <= self._entries[-1].round:
            msg = f"round {round} recorded after round {self._entries[-1].round}; round numbers must increase"
            raise PrivacyError(msg)
        if not (math.isfinite(clip) and clip > 0) or int(n_clients_released) < 0:
            msg = f"clip must be > 0 and n_clients_released >= 0, got {clip!r} and {n_clients_released!r}"
            raise PrivacyError(msg)
        history = self._segments([(noise_multiplier, sample_rate, 1)])
        kw: dict[str, Any] = {"delta": self.delta}
        entry = LedgerEntry(
            round=int(round),
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            clip=float(clip),
            n_clients_released=int(n_clients_released),
            epsilon_pld=epsilon_for_history(
                history, method="pld", value_discretization_interval=self.value_discretization_interval, **kw
            ),
            epsilon_rdp=epsilon_for_history(history, method="rdp", **kw),
        )
        self._entries.append(entry)
        return entry

    def epsilon(self, delta: float | None = None, *, method: AccountingMethod = "pld") -> float:
        """Cumulative ε of all recorded rounds.

        Args:
            delta: δ (``None``: the ledger's δ).
            method: ``"pld"`` or ``"rdp"``.

        Returns:
            ε (``0.0`` before the first round).
        """
        return epsilon_for_history(
            self._segments(),
            delta=self.delta if delta is None else delta,
            method=method,
            value_discretization_interval=self.value_discretization_interval,
        )

    def projected_epsilon(self, *, noise_multiplier: float, sample_rate: float, extra_rounds: int = 1) -> float:
        """PLD ε at the ledger's δ if ``extra_rounds`` more rounds were released (for a budget stop).

        Args:
            noise_multiplier: ``z`` of the planned rounds.
            sample_rate: ``q`` of the planned rounds.
            extra_rounds: How many more rounds.

        Returns:
            The projected cumulative ε.
        """
        return epsilon_for_history(
            self._segments([(noise_multiplier, sample_rate, extra_rounds)]),
            delta=self.delta,
            value_discretization_interval=self.value_discretization_interval,
        )

    def to_rows(self) -> list[dict[str, float | int]]:
        """One dict per round with keys :data:`LEDGER_ROW_FIELDS` (for ``csv.DictWriter``)."""
        return [
            {
                "round": e.round,
                "sigma": e.noise_multiplier,
                "q": e.sample_rate,
                "clip": e.clip,
                "n_clients": e.n_clients_released,
                "epsilon_pld": e.epsilon_pld,
                "epsilon_rdp": e.epsilon_rdp,
            }
            for e in self._entries
        ]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (infinite ε stored as ``null``)."""
        entries = []
        for e in self._entries:
            d = asdict(e)
            d["epsilon_pld"], d["epsilon_rdp"] = _json_float(e.epsilon_pld), _json_float(e.epsilon_rdp)
            entries.append(d)
        return {
            "version": _STATE_VERSION,
            "delta": self.delta,
            "value_discretization_interval": self.value_discretization_interval,
            "entries": entries,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this ledger's content with a saved :meth:`state_dict`.

        Args:
            state: As produced by :meth:`state_dict` (e.g. read back from JSON).

        Raises:
            PrivacyError: If the state has another version, is malformed, or its rounds do not increase.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            msg = f"privacy ledger state is not version {_STATE_VERSION}; was it written by another wsiseg?"
            raise PrivacyError(msg)
        try:
            delta = float(state["delta"])
            entries = [
                LedgerEntry(
                    round=int(d["round"]),
                    noise_multiplier=float(d["noise_multiplier"]),
                    sample_rate=float(d["sample_rate"]),
                    clip=float(d["clip"]),
                    n_clients_released=int(d["n_clients_released"]),
                    epsilon_pld=_from_json_float(d["epsilon_pld"]),
                    epsilon_rdp=_from_json_float(d["epsilon_rdp"]),
                )
                for d in state["entries"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            msg = f"privacy ledger state is malformed ({err}); restore it from the run's checkpoint folder"
            raise PrivacyError(msg) from err
        _validate_delta(delta)
        for e in entries:
            _validate(e.noise_multiplier, e.sample_rate, 1)
        if any(b.round <= a.round for a, b in itertools.pairwise(entries)):
            msg = "privacy ledger state has round numbers that do not increase; the file is corrupt"
            raise PrivacyError(msg)
        self.delta = delta
        self.value_discretization_interval = state.get("value_discretization_interval")
        self._entries = entries
