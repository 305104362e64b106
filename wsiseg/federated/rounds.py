"""The federated round loop, run in-process (clients one after another on one device, no Ray).

Every round: sample clients (Poisson with rate ``fraction``), train each locally from the global weights,
apply the DP mode (clip, noise), aggregate, record the privacy ledger, evaluate, and checkpoint atomically.
``--resume`` restarts from the last completed round with the same RNG states, so an interrupted run ends at
the same weights as an uninterrupted one; the ledger keeps every round ever released. The run folder is
owner-only: only ``checkpoints/final.*`` is meant to be shared (see ``ServerState.card``). The server half lives
in ``wsiseg.federated.server`` and is shared with the Flower ServerApp.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from wsiseg.config import resolve_device
from wsiseg.data.dataset import TileDataset
from wsiseg.federated.clients import Client, LocalTraining, build_clients, global_test, local_update
from wsiseg.federated.config import FedConfig
from wsiseg.federated.server import RunLogs, ServerState, aggregate_round, calibrate_sigma, sample_clients
from wsiseg.fileio import atomic_write_text
from wsiseg.privacy.accounting import meaningful_warning
from wsiseg.privacy.noise import make_generator
from wsiseg.train.loop import OptimConfig, evaluate
from wsiseg.train.runlog import new_run_dir, write_config

__all__ = ["FedResult", "RoundReport", "local_training", "run_federated"]


@dataclass
class RoundReport:
    """What one round did, for the console."""

    round: int
    clients: list[str]
    loss: float
    dice: float | None
    epsilon: float | None
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class FedResult:
    """Where the run went and how it ended."""

    run_dir: Path
    rounds_done: int
    epsilon: float | None
    final_metrics: dict[str, Any]
    stopped_early: str = ""


class _Run(ServerState):
    """A simulated federation: the server state plus the clients, their noise generators and the test set."""

    def __init__(self, cfg: FedConfig, run_dir: Path, device: str) -> None:
        clients: list[Client] = build_clients(
            data=cfg.data, client_dirs=cfg.client_dirs, n_clients=cfg.clients, partition=cfg.partition,
            alpha=cfg.alpha, test_fraction=cfg.test_fraction, seed=cfg.train_seed,
        )  # fmt: skip
        super().__init__(cfg, run_dir, device, clients[0].train.classes, clients[0].train.config.to_dict(),
                         [c.name for c in clients])  # fmt: skip
        self.clients = clients
        self.client_rngs = [make_generator(cfg.client_noise_seed(i))[0] for i in range(len(clients))]
        test = global_test(clients)
        self.test_loader = (
            DataLoader(TileDataset(test), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
            if test is not None else None
        )  # fmt: skip

    def split(self) -> dict[str, Any]:
        """Which slides each client trains on and holds out (private: slide ids stay in the run folder)."""
        return {
            "clients": [
                {
                    "name": c.name,
                    "train_slides": c.train.slide_ids,
                    "heldout_slides": c.heldout.slide_ids if c.heldout else [],
                }
                for c in self.clients
            ]
        }


def local_training(cfg: FedConfig, device: str) -> LocalTraining:
    """What every client does in a round, from the federated settings."""
    optim = OptimConfig(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.poly_power)
    return LocalTraining(epochs=cfg.local_epochs, steps=cfg.local_steps, batch_size=cfg.batch_size, optim=optim,
                         augment=cfg.augment, workers=cfg.workers, device=device, amp=cfg.amp)  # fmt: skip


def run_federated(
    cfg: FedConfig,
    *,
    runs_root: Path = Path("runs"),
    resume_dir: Path | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> FedResult:
    """Run (or resume) federated training.

    Args:
        cfg: Settings.
        runs_root: Where a new run folder is created.
        resume_dir: Run folder to continue from its last completed round.
        on_round: Called after every round.
        on_start: Called once with the privacy plan facts before round 1.
        stop_after: Stop after this round number (tests of interruption).

    Returns:
        The run folder, rounds done, final epsilon and metrics.
    """
    device = resolve_device(cfg.device)
    run_dir = (resume_dir if resume_dir is not None
               else new_run_dir(runs_root, f"fed-{cfg.model}-{cfg.dp}", private=True))  # fmt: skip
    run = _Run(cfg, run_dir, device)
    if resume_dir is not None:
        run.restore(run.client_rngs)
    else:
        calibrate_sigma(run)
        write_config(run_dir, {**cfg.to_dict(), "resolved_sigma": run.sigma}, private=True)
        atomic_write_text(run_dir / "split.json", json.dumps(run.split(), indent=2), private=True)
    if on_start:
        on_start({"sigma": run.sigma, "clients": [c.name for c in run.clients], "start_round": run.start_round})
    logs = RunLogs(run_dir, run.start_round - 1)
    local = local_training(cfg, device)
    strategy = run.strategy()
    metrics: dict[str, Any] = {}
    stopped = ""
    last = run.start_round - 1
    for rnd in range(run.start_round, cfg.rounds + 1):
        stopped = run.budget_stop(rnd)
        if stopped:
            break
        t0 = time.perf_counter()
        picked = sample_clients(run)
        results, t_release = [], 0.0
        for i in picked:
            res = local_update(run.model, run.global_weights, run.clients[i], local, round_index=rnd,
                               total_rounds=cfg.rounds, seed=cfg.train_seed, client_index=i)  # fmt: skip
            t1 = time.perf_counter()
            results.append(strategy.client_release(res, run.client_rngs[i]))  # local DP: clip + noise at the client
            t_release += time.perf_counter() - t1
        t_train = time.perf_counter() - t0 - t_release
        agg = aggregate_round(strategy, results, run)
        run.apply(agg)
        t_dp = time.perf_counter() - t0 - t_train  # client-side DP work included
        eps = run.record(rnd, len(results))
        dice = None
        if run.test_loader is not None and (rnd % cfg.eval_every == 0 or rnd == cfg.rounds):
            report = evaluate(run.model, run.test_loader, run.classes.names, device=device, amp=cfg.amp)
            metrics = report.to_dict()
            dice = float(report.paper["dice"])
        loss = float(np.mean([r.loss for r in results])) if results else math.nan
        logs.write(rnd, run, results, agg.stats, loss, dice, eps, metrics, t_train, t_dp)
        run.save_last(rnd, run.client_rngs)
        last = rnd
        if on_round:
            on_round(RoundReport(rnd, [run.clients[i].name for i in picked], loss, dice, eps, agg.stats,
                                 time.perf_counter() - t0))  # fmt: skip
        if stop_after is not None and rnd >= stop_after:
            return FedResult(run_dir, rnd, eps, metrics, stopped_early=f"stopped after round {rnd} as asked")
    run.save_final(last)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2), private=True)
    logs.plots()
    eps_final = run.privacy_summary().get("epsilon")
    return FedResult(run_dir, last, eps_final, metrics, stopped)


def check_meaningful(epsilon: float | None) -> str | None:
    """The loud warning for a meaningless epsilon (or None)."""
    return None if epsilon is None else meaningful_warning(epsilon)
