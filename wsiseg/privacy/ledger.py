"""The privacy ledger of a run: every released round with its noise, sampling rate and cumulative epsilon.

The maths is :func:`wsiseg.privacy.accounting.epsilon_for_history`; the ledger records what was released,
reports epsilon at any delta, and saves and restores its state so a resumed run continues the same ledger.

Each entry records the L2 sensitivity of its release in units of the clip norm ``C``: 1 for a sum of clipped
updates under zero-out (one client's update replaced by nothing), 2 for one client's own noised update under
replace-one (local DP: any two datasets of that client). A round is accounted as a Gaussian mechanism with
noise multiplier ``z / sensitivity``. The realised number of clients per round is kept in the private state
(:meth:`PrivacyLedger.state_dict`) and left out of :meth:`PrivacyLedger.public_state_dict`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from wsiseg.errors import PrivacyError
from wsiseg.privacy.accounting import AccountingMethod, Segment, epsilon_for_history, validate_delta, validate_rounds

__all__ = ["LEDGER_ROW_FIELDS", "LedgerEntry", "PrivacyLedger"]


#: Column order of :meth:`PrivacyLedger.to_rows` (for a CSV writer).
LEDGER_ROW_FIELDS: tuple[str, ...] = (
    "round",
    "sigma",
    "q",
    "clip",
    "n_clients",
    "epsilon_pld",
    "epsilon_rdp",
    "steps",
)
_STATE_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)  # version 1 had no sensitivity (always 1), 2 no steps (always 1)


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
        sensitivity: L2 sensitivity in units of ``C`` (1: zero-out sum, 2: replace-one local release).
        steps: Mechanisms composed in this entry: 1 for a client-level round, the local DP-SGD steps of a
            round at a site (sample mode).
    """

    round: int
    noise_multiplier: float
    sample_rate: float
    clip: float
    n_clients_released: int
    epsilon_pld: float
    epsilon_rdp: float
    sensitivity: float = 1.0
    steps: int = 1

    @property
    def accounted_multiplier(self) -> float:
        """The noise multiplier the accountant composes: ``z / sensitivity``."""
        return self.noise_multiplier / self.sensitivity


def _check_sensitivity(sensitivity: float) -> None:
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        msg = f"sensitivity (in units of the clip norm) must be a positive number, got {sensitivity!r}"
        raise PrivacyError(msg)


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
        validate_delta(delta)
        self.delta = float(delta)
        self.value_discretization_interval = value_discretization_interval
        self._entries: list[LedgerEntry] = []

    @property
    def entries(self) -> list[LedgerEntry]:
        """A copy of the recorded rounds, oldest first."""
        return list(self._entries)

    def _segments(self, extra: Sequence[Segment] = ()) -> list[Segment]:
        return [(e.accounted_multiplier, e.sample_rate, e.steps) for e in self._entries] + list(extra)

    def record_round(
        self,
        *,
        round: int,
        noise_multiplier: float,
        sample_rate: float,
        clip: float,
        n_clients_released: int,
        sensitivity: float = 1.0,
        steps: int = 1,
    ) -> LedgerEntry:
        """Record one released round and return its entry with the cumulative ε.

        Args:
            round: Round number, greater than the last recorded one.
            noise_multiplier: ``z`` of this round.
            sample_rate: ``q`` of this round.
            clip: Clip norm ``C``.
            n_clients_released: Number of client updates in the release (0 for a noise-only central round).
            sensitivity: L2 sensitivity in units of ``C`` (see the module docstring).
            steps: Mechanisms of this round (DP-SGD steps at a site; 1 for a client-level round).

        Returns:
            The new :class:`LedgerEntry`.

        Raises:
            PrivacyError: On invalid values or a round number that does not increase.
        """
        validate_rounds(noise_multiplier, sample_rate, steps)
        _check_sensitivity(sensitivity)
        if self._entries and round <= self._entries[-1].round:
            msg = f"round {round} recorded after round {self._entries[-1].round}; round numbers must increase"
            raise PrivacyError(msg)
        if not (math.isfinite(clip) and clip > 0) or int(n_clients_released) < 0:
            msg = f"clip must be > 0 and n_clients_released >= 0, got {clip!r} and {n_clients_released!r}"
            raise PrivacyError(msg)
        history = self._segments([(noise_multiplier / sensitivity, sample_rate, int(steps))])
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
            sensitivity=float(sensitivity),
            steps=int(steps),
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

    def projected_epsilon(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        extra_rounds: int = 1,
        sensitivity: float = 1.0,
        steps: int = 1,
    ) -> float:
        """PLD ε at the ledger's δ if ``extra_rounds`` more rounds were released (for a budget stop).

        Args:
            noise_multiplier: ``z`` of the planned rounds.
            sample_rate: ``q`` of the planned rounds.
            extra_rounds: How many more rounds.
            sensitivity: Their L2 sensitivity in units of ``C``.
            steps: Mechanisms per planned round (DP-SGD steps).

        Returns:
            The projected cumulative ε.
        """
        return epsilon_for_history(
            self._segments([(noise_multiplier / sensitivity, sample_rate, extra_rounds * steps)]),
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
                "steps": e.steps,
            }
            for e in self._entries
        ]

    def public_state_dict(self) -> dict[str, Any]:
        """The shareable view: :meth:`state_dict` without the realised number of clients of each round."""
        state = self.state_dict()
        for e in state["entries"]:
            del e["n_clients_released"]
        return state

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable private state (infinite ε stored as ``null``); includes per-round client counts."""
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
        if not isinstance(state, dict) or state.get("version") not in _READABLE_VERSIONS:
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
                    sensitivity=float(d.get("sensitivity", 1.0)),
                    steps=int(d.get("steps", 1)),
                )
                for d in state["entries"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            msg = f"privacy ledger state is malformed ({err}); restore it from the run's checkpoint folder"
            raise PrivacyError(msg) from err
        validate_delta(delta)
        for e in entries:
            validate_rounds(e.noise_multiplier, e.sample_rate, e.steps)
            _check_sensitivity(e.sensitivity)
        if any(b.round <= a.round for a, b in itertools.pairwise(entries)):
            msg = "privacy ledger state has round numbers that do not increase; the file is corrupt"
            raise PrivacyError(msg)
        self.delta = delta
        self.value_discretization_interval = state.get("value_discretization_interval")
        self._entries = entries
