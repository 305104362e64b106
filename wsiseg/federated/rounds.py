"""The federated round loop, run in-process (clients one after another on one device, no Ray).

Every round: sample clients (Poisson with rate ``fraction``), train each locally from the global weights,
apply the DP mode (clip, noise), aggregate, record the privacy ledger, evaluate, and checkpoint atomically.
``--resume`` restarts from the last completed round with the same RNG states, so an interrupted run ends at
the same weights as an uninterrupted one; the ledger keeps every round ever released.
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
import torch
from torch.utils.data import DataLoader

from wsiseg.config import resolve_device
from wsiseg.data.dataset import TileDataset
from wsiseg.federated.aggregate import apply_update
from wsiseg.federated.clients import (
    Client,
    LocalTraining,
    build_clients,
    check_dp_model,
    global_test,
    local_update,
    trainable_state,
)
from wsiseg.federated.config import FedConfig
from wsiseg.federated.strategies import DpFedAvg, FedAvg
from wsiseg.models import create_model
from wsiseg.privacy.accounting import PrivacyLedger, meaningful_warning
from wsiseg.privacy.noise import make_generator
from wsiseg.train.checkpoint import load_checkpoint, save_checkpoint
from wsiseg.train.loop import OptimConfig, evaluate
from wsiseg.train.runlog import CsvLog, new_run_dir, plot_curves, write_config

__all__ = ["FedResult", "RoundReport", "run_federated"]


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


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state  # type: ignore[no-any-return]


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state


class _Run:
    """Mutable state of one federated run (model, clients, generators, ledger, logs)."""

    def __init__(self, cfg: FedConfig, run_dir: Path, device: str) -> None:
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.clients: list[Client] = build_clients(
            data=cfg.data, client_dirs=cfg.client_dirs, n_clients=cfg.clients, partition=cfg.partition,
            alpha=cfg.alpha, test_fraction=cfg.test_fraction, seed=cfg.train_seed,
        )  # fmt: skip
        self.classes = self.clients[0].train.classes
        self.tiling = self.clients[0].train.config
        model_args = dict(cfg.model_args)
        if cfg.dp != "none" and "norm" not in model_args:
            model_args["norm"] = "groupnorm"
        self.model_args = model_args
        torch.manual_seed(cfg.train_seed)
        self.model = create_model(cfg.model, num_classes=len(self.classes), pretrained=cfg.pretrained, **model_args)
        check_dp_model(self.model, cfg.dp)
        self.model.to(device)
        self.global_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.sample_rng = np.random.default_rng(np.random.SeedSequence([cfg.train_seed, 17]))
        self.noise_rng, self.noise_seed_info = make_generator(cfg.seed)
        self.client_rngs = [
            make_generator(None if cfg.seed is None else cfg.seed * 1009 + 1 + i)[0] for i in range(len(self.clients))
        ]
        self.ledger = PrivacyLedger(delta=cfg.delta) if cfg.dp != "none" else None
        self.sigma = cfg.noise_multiplier
        self.start_round = 1
        test = global_test(self.clients)
        self.test_loader = (
            DataLoader(TileDataset(test), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
            if test is not None else None
        )  # fmt: skip

    @property
    def sample_rate(self) -> float:
        """Sampling rate used by the accountant.

        Central mode: the server adds the noise, and Poisson sampling of clients amplifies privacy towards
        anyone who sees the global model. Local mode: the server sees each noised update and knows who sent
        it, so the per-client guarantee against the server gets no amplification (rate 1).
        """
        return self.cfg.fraction if self.cfg.dp == "central" else 1.0

    def strategy(self) -> FedAvg:
        if self.cfg.dp == "none":
            return FedAvg()
        return DpFedAvg(self.cfg.dp, clip=self.cfg.clip, noise_multiplier=self.sigma, rng=self.noise_rng,
                        scope=self.cfg.clip_scope)  # fmt: skip

    def card(self) -> dict[str, Any]:
        return {
            "model": {"name": self.cfg.model, "args": {"num_classes": len(self.classes), **self.model_args}},
            "classes": self.classes.to_list(),
            "tiling": self.tiling.to_dict(),
            "fed_config": self.cfg.to_dict(),
            "clients": [{"name": c.name, "train_slides": c.train.slide_ids,
                         "heldout_slides": c.heldout.slide_ids if c.heldout else []} for c in self.clients],
            "privacy": self.privacy_summary(),
        }  # fmt: skip

    def privacy_summary(self) -> dict[str, Any]:
        if self.ledger is None:
            return {"dp": "none", "epsilon": None, "note": "no differential privacy"}
        eps = self.ledger.epsilon() if self.ledger.entries else 0.0
        return {
            "dp": self.cfg.dp, "noise_multiplier": self.sigma, "clip": self.cfg.clip, "delta": self.cfg.delta,
            "sample_rate": self.sample_rate, "rounds_released": len(self.ledger.entries),
            "epsilon": eps, "epsilon_rdp": self.ledger.epsilon(method="rdp") if self.ledger.entries else 0.0,
            "accountant": "dp_accounting PLD (headline), RDP (cross-check); client-level, add/remove one client",
            "unit": "one client (all of its slides)", "noise_seed": self.noise_seed_info,
            "ledger": self.ledger.state_dict(),
        }  # fmt: skip

    def resume_state(self) -> dict[str, Any]:
        """Server-private state for --resume (includes the noise generator: never share checkpoints/last)."""
        return {
            "sample_rng": _rng_state(self.sample_rng), "noise_rng": _rng_state(self.noise_rng),
            "client_rngs": [_rng_state(r) for r in self.client_rngs], "sigma": self.sigma,
        }  # fmt: skip

    def restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir / "checkpoints" / "last")
        self.model.load_state_dict(ckpt.weights)
        self.global_weights = {k: v.detach().clone().to(self.device) for k, v in self.model.state_dict().items()}
        res = ckpt.card["resume"]
        _set_rng_state(self.sample_rng, res["sample_rng"])
        _set_rng_state(self.noise_rng, res["noise_rng"])
        for rng, st in zip(self.client_rngs, res["client_rngs"], strict=True):
            _set_rng_state(rng, st)
        self.sigma = float(res["sigma"])
        if self.ledger is not None:
            self.ledger.load_state_dict(ckpt.card["privacy"]["ledger"])
        self.start_round = int(ckpt.card["round"]) + 1


def _local_cfg(cfg: FedConfig, device: str) -> LocalTraining:
    optim = OptimConfig(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.poly_power)
    return LocalTraining(epochs=cfg.local_epochs, steps=cfg.local_steps, batch_size=cfg.batch_size, optim=optim,
                         augment=cfg.augment, workers=cfg.workers, device=device, amp=cfg.amp)  # fmt: skip


def _calibrate(run: _Run) -> None:
    cfg = run.cfg
    if not cfg.calibrates:
        return
    from wsiseg.privacy.calibrate import calibrate_noise_multiplier  # noqa: PLC0415

    run.sigma = calibrate_noise_multiplier(target_epsilon=cfg.target_epsilon, delta=cfg.delta, rounds=cfg.rounds,
                                           sample_rate=run.sample_rate)  # fmt: skip


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
    run_dir = resume_dir if resume_dir is not None else new_run_dir(runs_root, f"fed-{cfg.model}-{cfg.dp}")
    run = _Run(cfg, run_dir, device)
    if resume_dir is not None:
        run.restore()
    else:
        _calibrate(run)
        write_config(run_dir, {**cfg.to_dict(), "resolved_sigma": run.sigma, "noise_seed": run.noise_seed_info})
    if on_start:
        on_start({"sigma": run.sigma, "clients": [c.name for c in run.clients], "start_round": run.start_round})
    logs = _Logs(run_dir, run.start_round - 1)
    local = _local_cfg(cfg, device)
    strategy = run.strategy()
    expected = max(1e-9, cfg.fraction * len(run.clients))
    names = [n for n, p in run.model.named_parameters() if p.requires_grad]
    metrics: dict[str, Any] = {}
    stopped = ""
    last = run.start_round - 1
    for rnd in range(run.start_round, cfg.rounds + 1):
        if run.ledger is not None and cfg.target_epsilon is not None:
            projected = run.ledger.projected_epsilon(noise_multiplier=run.sigma, sample_rate=run.sample_rate)
            if projected > cfg.target_epsilon * (1 + 1e-9):
                stopped = f"stopped before round {rnd}: epsilon would reach {projected:.3f} > {cfg.target_epsilon}"
                break
        t0 = time.perf_counter()
        picked = _sample(run, cfg.fraction)
        results = []
        for i in picked:
            res = local_update(run.model, run.global_weights, run.clients[i], local, round_index=rnd,
                               total_rounds=cfg.rounds, seed=cfg.train_seed, client_index=i)  # fmt: skip
            results.append(strategy.client_release(res, run.client_rngs[i]))
        t_train = time.perf_counter() - t0
        agg = _aggregate(strategy, results, expected, run)
        base = {n: run.global_weights[n].detach().cpu().float().numpy() for n in names}
        new = apply_update(base, agg.update) if agg.update else base
        state = {k: v.clone() for k, v in run.global_weights.items()}
        for n, arr in new.items():
            state[n] = torch.from_numpy(np.ascontiguousarray(arr)).to(state[n].dtype)
        for n, arr in agg.buffers.items():
            state[n] = torch.from_numpy(np.ascontiguousarray(arr)).to(state[n].dtype)
        run.model.load_state_dict(state)
        run.global_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        t_dp = time.perf_counter() - t0 - t_train
        eps = None
        if run.ledger is not None:
            entry = run.ledger.record_round(round=rnd, noise_multiplier=run.sigma, sample_rate=run.sample_rate,
                                            clip=cfg.clip, n_clients_released=len(results))  # fmt: skip
            eps = entry.epsilon_pld
        dice = None
        if run.test_loader is not None and (rnd % cfg.eval_every == 0 or rnd == cfg.rounds):
            report = evaluate(run.model, run.test_loader, run.classes.names, device=device, amp=cfg.amp)
            metrics = report.to_dict()
            dice = float(report.paper["dice"])
        loss = float(np.mean([r.loss for r in results])) if results else math.nan
        logs.write(rnd, run, results, agg.stats, loss, dice, eps, metrics, t_train, t_dp)
        save_checkpoint(run_dir / "checkpoints" / "last", run.model,
                        {**run.card(), "round": rnd, "metrics": metrics, "resume": run.resume_state()})  # fmt: skip
        last = rnd
        if on_round:
            on_round(RoundReport(rnd, [run.clients[i].name for i in picked], loss, dice, eps, agg.stats,
                                 time.perf_counter() - t0))  # fmt: skip
        if stop_after is not None and rnd >= stop_after:
            return FedResult(run_dir, rnd, eps, metrics, stopped_early=f"stopped after round {rnd} as asked")
    final_card = {**run.card(), "round": last, "metrics": metrics}
    save_checkpoint(run_dir / "checkpoints" / "final", run.model, final_card)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    logs.plots()
    eps_final = run.privacy_summary().get("epsilon")
    return FedResult(run_dir, last, eps_final, metrics, stopped)


def _sample(run: _Run, fraction: float) -> list[int]:
    """Poisson sampling: each client takes part with probability ``fraction`` (all when 1)."""
    n = len(run.clients)
    if fraction >= 1.0:
        return list(range(n))
    return [i for i in range(n) if run.sample_rng.random() < fraction]


def _aggregate(strategy: FedAvg, results: list[Any], expected: float, run: _Run) -> Any:
    from wsiseg.federated.strategies import RoundAggregate  # noqa: PLC0415

    if results:
        return strategy.aggregate(results, expected_clients=expected)
    if run.cfg.dp == "central":  # nobody sampled: the release is noise only, and it still counts
        zero = {n: np.zeros_like(v) for n, v in trainable_state(run.model).items()}
        res = strategy.aggregate([_empty_result(zero)], expected_clients=expected)
        return res
    return RoundAggregate({}, {}, {"n_clients": 0})


def _empty_result(zero: dict[str, np.ndarray]) -> Any:
    from wsiseg.federated.clients import ClientResult  # noqa: PLC0415

    return ClientResult("none", zero, {}, 0, 0, math.nan, 0.0)


class _Logs:
    """rounds.csv, clients.csv, privacy.csv and the plots."""

    def __init__(self, run_dir: Path, keep_until: int) -> None:
        self.run_dir = run_dir
        self.rounds = CsvLog(run_dir / "rounds.csv", keep_until=("round", float(keep_until)))
        self.clients = CsvLog(run_dir / "clients.csv", keep_until=("round", float(keep_until)))
        self.privacy = CsvLog(run_dir / "privacy.csv", keep_until=("round", float(keep_until)))

    def write(  # noqa: PLR0913
        self, rnd: int, run: _Run, results: list[Any], stats: dict[str, Any], loss: float, dice: float | None,
        eps: float | None, metrics: dict[str, Any], t_train: float, t_dp: float,
    ) -> None:  # fmt: skip
        paper = metrics.get("paper", {}) if metrics else {}
        self.rounds.append({
            "round": rnd, "clients": len(results), "train_loss": loss,
            "test_dice": dice if dice is not None else "", "test_jaccard": paper.get("jaccard", "") if dice else "",
            "test_acc": paper.get("acc", "") if dice else "", "epsilon": eps if eps is not None else "",
            "noise_to_signal": stats.get("noise_to_signal", ""), "train_seconds": t_train, "dp_agg_seconds": t_dp,
            "dp_overhead": t_dp / t_train if t_train > 0 else "",
        })  # fmt: skip
        norms = stats.get("pre_clip_norms") or stats.get("update_norms") or []
        dp = run.cfg.dp != "none"
        for i, r in enumerate(results):
            norm = norms[i] if i < len(norms) else ""
            self.clients.append({
                "round": rnd, "client": r.name, "examples": r.n_examples, "steps": r.steps, "loss": r.loss,
                "update_norm": norm, "clipped": (norm > run.cfg.clip) if dp and norm != "" else "",
            })  # fmt: skip
        if run.ledger is not None and run.ledger.entries:
            e = run.ledger.entries[-1]
            self.privacy.append({
                "round": rnd, "sigma": e.noise_multiplier, "clip": e.clip, "sample_rate": e.sample_rate,
                "clients_released": e.n_clients_released, "noise_std_sum": stats.get("noise_std_sum", ""),
                "noise_std_mean": stats.get("noise_std_mean", ""),
                "noise_to_signal": stats.get("noise_to_signal", ""),
                "epsilon_pld": e.epsilon_pld, "epsilon_rdp": e.epsilon_rdp, "delta": run.cfg.delta,
            })  # fmt: skip

    def plots(self) -> None:
        rows = self.rounds.rows()
        panels = [("held-out Dice", ["test_dice"]), ("train loss", ["train_loss"])]
        if any(r.get("epsilon") for r in rows):
            panels.append(("epsilon (PLD)", ["epsilon"]))
        plot_curves(self.run_dir / "curves.png", rows, "round", panels)


def check_meaningful(epsilon: float | None) -> str | None:
    """The loud warning for a meaningless epsilon (or None)."""
    return None if epsilon is None else meaningful_warning(epsilon)


