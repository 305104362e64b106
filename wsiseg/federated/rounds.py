"""The in-process simulation: the clients train one after another on one device (no Ray), over the one loop.

:func:`run_federated` builds the clients from the data, the server state and the :class:`SimulatedClients`
transport, and runs :func:`wsiseg.federated.loop.run_rounds`, which the Flower server runs too.
``--resume`` restarts from the last completed round with the same generator states, so an interrupted run
ends at the same weights as an uninterrupted one; the ledger keeps every round ever released. The run folder
is owner-only: only ``checkpoints/final.*`` is meant to be shared (see ``ServerState.card``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from wsiseg.config import resolve_device
from wsiseg.data.dataset import TileDataset
from wsiseg.federated.clients import (
    Client,
    ClientResult,
    LocalTraining,
    build_clients,
    dp_sgd_plan,
    global_test,
    local_update,
    pooled_train,
)
from wsiseg.federated.config import FedConfig
from wsiseg.federated.distributed import SecureSum, secure_ranges, secure_round
from wsiseg.federated.loop import RoundRecord, run_rounds
from wsiseg.federated.server import ServerState, calibrate_sigma, rng_state, set_rng_state
from wsiseg.federated.strategies import FedAvg
from wsiseg.privacy.ledger import PrivacyLedger
from wsiseg.privacy.noise import make_generator
from wsiseg.train.baselines import evaluate_baselines, fit_baselines
from wsiseg.train.loop import OptimConfig, evaluate
from wsiseg.train.report import MetricReport
from wsiseg.train.runlog import CsvLog, RunFolder

__all__ = ["FedResult", "SimulatedClients", "config_clients", "local_training", "run_federated", "site_plans"]


@dataclass
class FedResult:
    """Where the run went and how it ended.

    ``final_report`` is the last held-out evaluation; ``baselines`` are the trivial predictors (majority
    class, colour rule) fitted on the pooled training slides and scored on the same held-out tiles.
    """

    run_dir: Path
    rounds_done: int
    epsilon: float | None
    final_metrics: dict[str, Any]
    stopped_early: str = ""
    final_report: MetricReport | None = None
    baselines: dict[str, MetricReport] = field(default_factory=dict)


def local_training(cfg: FedConfig, device: str) -> LocalTraining:
    """What every client does in a round, from the federated settings."""
    optim = OptimConfig(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.poly_power)
    return LocalTraining(epochs=cfg.local_epochs, steps=cfg.local_steps, batch_size=cfg.batch_size, optim=optim,
                         augment=cfg.augment, workers=cfg.workers, device=device, amp=cfg.amp)  # fmt: skip


class SimulatedClients:
    """The transport of the simulation: each picked client trains in this process and releases by its mode.

    Each client has its own noise generator (local DP), as a real site would; what the server gets is only
    :meth:`FedAvg.received` of the release. What a site would keep in its own log (loss, counts, pre-clip
    norm) goes to ``site_log.csv`` in the private run folder.
    """

    def __init__(self, cfg: FedConfig, clients: list[Client], state: ServerState) -> None:
        self.cfg, self.clients = cfg, clients
        self.local = local_training(cfg, state.device)
        self.rngs = [make_generator(cfg.client_noise_seed(i))[0] for i in range(len(clients))]
        #: Sample mode: each simulated site's own account of its DP-SGD steps (what a real site keeps).
        self.ledgers = [PrivacyLedger(delta=cfg.delta) for _ in clients] if state.per_site else []
        self.site_log = CsvLog(state.run_dir / "site_log.csv", keep_until=("round", float(state.start_round - 1)))
        self.release_seconds = 0.0
        self._site_rows: list[dict[str, Any]] = []

    def restore(self, resume: dict[str, Any]) -> None:
        """Continue the clients' noise generators from a resume state."""
        for rng, st in zip(self.rngs, resume["client_rngs"], strict=True):
            set_rng_state(rng, st)
        for led, st in zip(self.ledgers, resume.get("client_ledgers") or [], strict=True):
            led.load_state_dict(st)

    def train(
        self, state: ServerState, strategy: FedAvg, rnd: int, picked: list[int]
    ) -> list[tuple[int, ClientResult]] | SecureSum:
        """Train and release every picked client, in index order (summed securely under secure aggregation)."""
        out: list[tuple[int, ClientResult]] = []
        self.release_seconds, self._site_rows = 0.0, []
        local = strategy.local_training(self.local)
        for i in picked:
            if self.ledgers and self._over_budget(state, i, local, rnd):
                continue
            res = local_update(state.model, state.global_weights, self.clients[i], local, round_index=rnd,
                               total_rounds=self.cfg.rounds, seed=self.cfg.train_seed, client_index=i,
                               noise_rng=self.rngs[i])  # fmt: skip
            if self.ledgers and res.privacy is not None:
                entry = self.ledgers[i].record_round(round=rnd, noise_multiplier=state.sigma,
                                                     sample_rate=res.privacy["q"], clip=self.cfg.clip,
                                                     n_clients_released=1, steps=res.privacy["steps"])  # fmt: skip
                res.privacy.update(epsilon=entry.epsilon_pld, epsilon_rdp=entry.epsilon_rdp)
            t0 = time.perf_counter()
            released = strategy.release(res, self.rngs[i])
            self.release_seconds += time.perf_counter() - t0
            self._site_rows.append({"round": rnd, "client": res.name, "examples": res.n_examples, "steps": res.steps,
                                    "loss": res.loss, "pre_clip_norm": released.pre_clip_norm or "",
                                    "refused": ""})  # fmt: skip
            out.append((i, released if self.cfg.secure else strategy.received(released)))
        if self.cfg.secure and out:
            t0 = time.perf_counter()
            n_params = sum(int(v.size) for v in out[0][1].update.values())
            ranges = secure_ranges(strategy, n_params, len(self.clients))
            summed = secure_round([(i, r.name, r.update) for i, r in out], ranges, self.rngs)
            self.release_seconds += time.perf_counter() - t0
            return summed
        return out

    def _over_budget(self, state: ServerState, i: int, local: LocalTraining, rnd: int) -> bool:
        """Sample mode: a site refuses a round that would take its epsilon past ``--target-epsilon``."""
        if self.cfg.target_epsilon is None:
            return False
        _, rate, steps = dp_sgd_plan(self.clients[i], local)
        eps = self.ledgers[i].projected_epsilon(noise_multiplier=state.sigma, sample_rate=rate, steps=steps)
        if eps <= self.cfg.target_epsilon * (1 + 1e-9):
            return False
        self._site_rows.append({"round": rnd, "client": self.clients[i].name, "examples": 0, "steps": 0, "loss": "",
                                "pre_clip_norm": "", "refused": f"epsilon would reach {eps:.3f}"})  # fmt: skip
        return True

    def private_state(self) -> dict[str, Any]:
        """The clients' noise generator states and, in sample mode, their own ledgers (a real site keeps its own)."""
        return {"client_rngs": [rng_state(r) for r in self.rngs],
                "client_ledgers": [led.state_dict() for led in self.ledgers]}  # fmt: skip

    def after_round(self, record: RoundRecord) -> None:
        """Write what each simulated site would have kept in its own log."""
        del record
        for row in self._site_rows:
            self.site_log.append(row)

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


def config_clients(cfg: FedConfig) -> list[Client]:
    """The clients of a config: its data split by slide, or its per-site folders."""
    return build_clients(data=cfg.data, client_dirs=cfg.client_dirs, n_clients=cfg.clients,
                         partition=cfg.partition, alpha=cfg.alpha, test_fraction=cfg.test_fraction,
                         seed=cfg.train_seed, heldout=cfg.heldout)  # fmt: skip


def site_plans(cfg: FedConfig, clients: list[Client], local: LocalTraining) -> list[tuple[str, int, float, int]]:
    """Sample mode: ``(site, units, q, steps a round)`` of every simulated site.

    Raises:
        PrivacyError: A rate out of range or slides missing from the patient table.
    """
    sgd = replace(local, dp_sgd=cfg.dp_sgd(cfg.noise_multiplier))
    return [(c.name, *dp_sgd_plan(c, sgd)) for c in clients]


def run_federated(
    cfg: FedConfig,
    *,
    runs_root: Path = Path("runs"),
    resume_dir: Path | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    stop_after: int | None = None,
) -> FedResult:
    """Run (or resume) federated training in this process.

    Args:
        cfg: Settings.
        runs_root: Where a new run folder is created.
        resume_dir: Run folder to continue from its last completed round.
        on_round: Called after every round with its record.
        stop_after: Stop after this round number (tests of interruption).

    Returns:
        The run folder, rounds done, final epsilon and metrics.
    """
    device = resolve_device(cfg.device)
    folder = (RunFolder.existing(resume_dir, private=True) if resume_dir is not None
              else RunFolder.create(runs_root, f"fed-{cfg.model}-{cfg.dp}", private=True))  # fmt: skip
    run_dir = folder.path
    clients = config_clients(cfg)
    state = ServerState(cfg, run_dir, device, clients[0].train.classes, clients[0].train.config.to_dict(),
                        [c.name for c in clients])  # fmt: skip
    resume = state.restore() if resume_dir is not None else None
    transport = SimulatedClients(cfg, clients, state)
    if resume is not None:
        transport.restore(resume)
    else:
        calibrate_sigma(state, sites=site_plans(cfg, clients, transport.local) if state.per_site else None)
        folder.write_config({**cfg.to_dict(), "resolved_sigma": state.sigma})
        folder.write_json("split.json", transport.split())
    test = global_test(clients)
    loader = (DataLoader(TileDataset(test), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
              if test is not None else None)  # fmt: skip

    reports: list[MetricReport] = []

    def held_out(rnd: int) -> dict[str, Any] | None:
        if loader is None or not (rnd % cfg.eval_every == 0 or rnd == cfg.rounds):
            return None
        reports[:] = [evaluate(state.model, loader, state.classes.names, device=device, amp=cfg.amp)]
        return reports[0].to_dict()

    out = run_rounds(state, transport, evaluate=held_out, on_round=on_round, stop_after=stop_after)
    if out.stopped_early.startswith("stopped after"):
        return FedResult(run_dir, out.last_round, out.epsilon, out.metrics, out.stopped_early)
    baselines: dict[str, MetricReport] = {}
    if test is not None and out.metrics:
        # Yardsticks only: the simulation holds every site's slides; a real federation cannot pool them.
        baselines = evaluate_baselines(fit_baselines(pooled_train(clients)), test)
        out.metrics["baselines"] = {n: b.to_dict() for n, b in baselines.items()}
    folder.write_json("metrics.json", out.metrics)
    return FedResult(run_dir, out.last_round, out.epsilon, out.metrics, out.stopped_early,
                     reports[0] if reports else None, baselines)  # fmt: skip
