"""The one federated round loop, over a transport: in-process clients (the simulation) or a Flower grid.

:func:`run_rounds` does, every round: budget stop -> sample -> train at the clients and release -> aggregate
-> apply -> record in the ledger -> evaluate -> log -> checkpoint; then the shareable final checkpoint.
Only how a round reaches the clients differs, behind :class:`Transport`. Both transports hand the loop what
the server receives (:meth:`wsiseg.federated.strategies.FedAvg.received`), so the two paths record the same
round and cannot drift apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from wsiseg.federated.clients import ClientResult
from wsiseg.federated.distributed import SecureSum, aggregate_secure
from wsiseg.federated.server import RunLogs, ServerState, aggregate_round, sample_clients
from wsiseg.federated.strategies import FedAvg, RoundStats

__all__ = ["RoundRecord", "RunOutcome", "Transport", "run_rounds"]


@dataclass
class RoundRecord:
    """What one round did: for the logs, the console and tests.

    Attributes:
        round: Round number.
        sampled: Client indices the sampler picked.
        results: What the server received from each client that answered, in index order.
        clients: Their names.
        stats: The aggregation's diagnostics.
        loss: Mean training loss the clients reported (NaN under DP: it never leaves a site).
        dice: Held-out Dice of the global model, when evaluated.
        epsilon: Cumulative epsilon after the round (None without DP).
        metrics: The evaluation report, when evaluated.
        train_seconds: Time until every release arrived.
        dp_seconds: Time of aggregation, noise and update.
        seconds: Wall time of the whole round.
    """

    round: int
    sampled: list[int]
    results: list[ClientResult]
    clients: list[str]
    stats: RoundStats
    loss: float
    dice: float | None
    epsilon: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    dp_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class RunOutcome:
    """How the loop ended: the last round released, the final epsilon and metrics, why it stopped early."""

    last_round: int
    epsilon: float | None
    metrics: dict[str, Any]
    stopped_early: str = ""


class Transport(Protocol):
    """How a round reaches the clients and their releases come back.

    Attributes:
        release_seconds: Time the last :meth:`train` spent on DP releases at the clients (counted as DP work).
    """

    release_seconds: float

    def train(
        self, state: ServerState, strategy: FedAvg, rnd: int, picked: list[int]
    ) -> list[tuple[int, ClientResult]] | SecureSum:
        """Send round ``rnd`` to the picked clients; return ``(index, received)`` of those that answered.

        Under secure aggregation the server receives only the sum of the releases and who contributed.
        """
        ...

    def private_state(self) -> dict[str, Any]:
        """Extra private resume state (the simulated clients' noise generators); empty when sites keep their own."""
        ...

    def after_round(self, record: RoundRecord) -> None:
        """Transport-side bookkeeping once a round is recorded (site logs, who answered)."""
        ...


def run_rounds(
    state: ServerState,
    transport: Transport,
    *,
    evaluate: Callable[[int], dict[str, Any] | None] | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    stop_after: int | None = None,
) -> RunOutcome:
    """Run rounds ``state.start_round .. cfg.rounds`` and write ``checkpoints/final``.

    Args:
        state: The server state (fresh or restored with ``--resume``).
        transport: In-process clients or Flower sites.
        evaluate: Called with the round number; returns the evaluation report of the global model, or None.
        on_round: Called with every round's record.
        stop_after: Return after this round without the final checkpoint, as if interrupted (tests).

    Returns:
        The last round released, epsilon, the last metrics and any early-stop reason.
    """
    cfg = state.cfg
    strategy = state.strategy()
    logs = RunLogs(state.run_dir, state.start_round - 1)
    last, metrics, stopped = state.start_round - 1, {}, ""
    started = time.monotonic()
    for rnd in range(state.start_round, cfg.rounds + 1):
        stopped = state.budget_stop(rnd)
        if stopped:
            break
        t0 = time.perf_counter()
        picked = sample_clients(state)
        got = transport.train(state, strategy, rnd, picked) if picked else []
        secure = got if isinstance(got, SecureSum) else None
        results = got.placeholders() if isinstance(got, SecureSum) else [res for _, res in got]
        if picked and not results and strategy.per_site_accounting:
            stopped = f"stopped at round {rnd}: every sampled site refused it (its epsilon would pass the budget)"
            break
        t_train = time.perf_counter() - t0 - transport.release_seconds
        agg = (aggregate_secure(strategy, secure, expected_clients=state.expected_clients) if secure is not None
               else aggregate_round(strategy, results, state))  # fmt: skip
        state.apply(agg)
        t_dp = time.perf_counter() - t0 - t_train  # the clients' DP releases included
        eps = state.record(rnd, results, noise_multiplier=strategy.round_multiplier(len(results)))
        report = evaluate(rnd) if evaluate is not None else None
        dice = None
        if report is not None:
            metrics, dice = report, float(report["paper"]["dice"])
        losses = [r.loss for r in results if not math.isnan(r.loss)]
        record = RoundRecord(rnd, picked, results, [r.name for r in results], agg.stats,
                             float(np.mean(losses)) if losses else math.nan, dice, eps, metrics if report else {},
                             t_train, t_dp, time.perf_counter() - t0)  # fmt: skip
        logs.write(record, state)
        transport.after_round(record)
        state.save_last(rnd, transport.private_state())
        last = rnd
        if on_round is not None:
            on_round(record)
        if stop_after is not None and rnd >= stop_after:
            return RunOutcome(rnd, eps, metrics, f"stopped after round {rnd} as asked")
        if cfg.time_budget is not None and rnd < cfg.rounds and time.monotonic() - started >= cfg.time_budget:
            stopped = (f"time budget of {cfg.time_budget:g} s reached after round {rnd} of {cfg.rounds}; the final "
                       "checkpoint is this round's (continue with --resume and a new budget)")  # fmt: skip
            break
    state.save_final(last)
    logs.plots()
    return RunOutcome(last, state.privacy_summary().get("epsilon"), metrics, stopped)
