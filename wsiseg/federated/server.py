"""Server-side state and round helpers shared by the in-process simulation and the Flower ServerApp.

``ServerState`` holds the global model, the client-sampling and noise generators, the privacy ledger and the
resume state. The helpers sample clients (Poisson), aggregate a round through the strategy, fold the result
into the global weights, and write the run logs. Both ``run_federated`` and the Flower server call them, so
the two paths run the same code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiseg.classes import ClassTable
from wsiseg.federated.aggregate import apply_update
from wsiseg.federated.clients import ClientResult, trainable_state
from wsiseg.federated.config import FedConfig
from wsiseg.federated.strategies import DpFedAvg, FedAvg, RoundAggregate
from wsiseg.models import args_for_tiles, create_model
from wsiseg.privacy.ledger import PrivacyLedger
from wsiseg.privacy.noise import make_generator
from wsiseg.train.checkpoint import load_checkpoint
from wsiseg.train.runlog import CsvLog, plot_curves

__all__ = [
    "RunLogs",
    "ServerState",
    "aggregate_round",
    "calibrate_sigma",
    "rng_state",
    "sample_clients",
    "set_rng_state",
]


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """JSON-ready state of a numpy generator."""
    return rng.bit_generator.state  # type: ignore[no-any-return]


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    rng.bit_generator.state = state


class ServerState:
    """The server half of a federated run: global model, generators, ledger, resume state.

    Args:
        cfg: Settings.
        run_dir: The run folder.
        device: Torch device of the global model.
        classes: Class table of the federation.
        tiling: Tiling settings shared by the sites (stored in the checkpoint card).
        n_clients: Number of clients (sites) in the federation.
    """

    def __init__(
        self, cfg: FedConfig, run_dir: Path, device: str, classes: ClassTable, tiling: dict[str, Any], n_clients: int
    ) -> None:
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.classes, self.tiling, self.n_clients = classes, tiling, n_clients
        model_args = args_for_tiles(cfg.model, cfg.model_args, int(tiling["size"]))
        if cfg.dp != "none" and "norm" not in model_args:
            model_args["norm"] = "groupnorm"
        self.model_args = model_args
        torch.manual_seed(cfg.train_seed)
        self.model = create_model(cfg.model, num_classes=len(classes), pretrained=cfg.pretrained, **model_args)
        self.model.to(device)
        self.global_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.sample_rng = np.random.default_rng(np.random.SeedSequence([cfg.train_seed, 17]))
        self.noise_rng, self.noise_seed_info = make_generator(cfg.seed)
        self.ledger = PrivacyLedger(delta=cfg.delta) if cfg.dp != "none" else None
        self.sigma = cfg.noise_multiplier
        self.start_round = 1

    @property
    def sample_rate(self) -> float:
        """Sampling rate used by the accountant.

        Central mode: the server adds the noise, and Poisson sampling of clients amplifies privacy towards
        anyone who sees the global model. Local mode: the server sees each noised update and knows who sent
        it, so the per-client guarantee against the server gets no amplification (rate 1).
        """
        return self.cfg.fraction if self.cfg.dp == "central" else 1.0

    @property
    def expected_clients(self) -> float:
        """Expected cohort size ``q * K`` (the central-DP denominator)."""
        return max(1e-9, self.cfg.fraction * self.n_clients)

    def strategy(self) -> FedAvg:
        """FedAvg without DP, else the DP wrapper with the server's noise generator."""
        if self.cfg.dp == "none":
            return FedAvg()
        return DpFedAvg(self.cfg.dp, clip=self.cfg.clip, noise_multiplier=self.sigma, rng=self.noise_rng,
                        scope=self.cfg.clip_scope)  # fmt: skip

    def privacy_summary(self) -> dict[str, Any]:
        """What the checkpoint card says about privacy (epsilon, ledger, noise source)."""
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

    def resume_state(self, client_rngs: list[np.random.Generator] | None = None) -> dict[str, Any]:
        """Server-private state for --resume (includes the noise generator: never share checkpoints/last)."""
        return {
            "sample_rng": rng_state(self.sample_rng), "noise_rng": rng_state(self.noise_rng),
            "client_rngs": [rng_state(r) for r in client_rngs or []], "sigma": self.sigma,
        }  # fmt: skip

    def restore(self, client_rngs: list[np.random.Generator] | None = None) -> dict[str, Any]:
        """Load ``checkpoints/last``: weights, generators, ledger and the next round; returns its card."""
        ckpt = load_checkpoint(self.run_dir / "checkpoints" / "last")
        self.model.load_state_dict(ckpt.weights)
        self.global_weights = {k: v.detach().clone().to(self.device) for k, v in self.model.state_dict().items()}
        res = ckpt.card["resume"]
        set_rng_state(self.sample_rng, res["sample_rng"])
        set_rng_state(self.noise_rng, res["noise_rng"])
        for rng, st in zip(client_rngs or [], res["client_rngs"], strict=True):
            set_rng_state(rng, st)
        self.sigma = float(res["sigma"])
        if self.ledger is not None:
            self.ledger.load_state_dict(ckpt.card["privacy"]["ledger"])
        self.start_round = int(ckpt.card["round"]) + 1
        return ckpt.card

    def apply(self, agg: RoundAggregate) -> None:
        """Add the aggregated update (and averaged buffers) to the global weights."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        base = {n: self.global_weights[n].detach().cpu().float().numpy() for n in names}
        new = apply_update(base, agg.update) if agg.update else base
        state = {k: v.clone() for k, v in self.global_weights.items()}
        for n, arr in {**new, **agg.buffers}.items():
            state[n] = torch.from_numpy(np.ascontiguousarray(arr)).to(state[n].dtype)
        self.model.load_state_dict(state)
        self.global_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def record(self, rnd: int, n_released: int) -> float | None:
        """Record the round in the ledger; return the cumulative epsilon (None without DP)."""
        if self.ledger is None:
            return None
        entry = self.ledger.record_round(round=rnd, noise_multiplier=self.sigma, sample_rate=self.sample_rate,
                                         clip=self.cfg.clip, n_clients_released=n_released)  # fmt: skip
        return entry.epsilon_pld

    def budget_stop(self, rnd: int) -> str:
        """A message if releasing round ``rnd`` would exceed ``--target-epsilon``, else ``""``."""
        if self.ledger is None or self.cfg.target_epsilon is None:
            return ""
        projected = self.ledger.projected_epsilon(noise_multiplier=self.sigma, sample_rate=self.sample_rate)
        if projected > self.cfg.target_epsilon * (1 + 1e-9):
            return f"stopped before round {rnd}: epsilon would reach {projected:.3f} > {self.cfg.target_epsilon}"
        return ""


def calibrate_sigma(state: ServerState) -> None:
    """Set ``state.sigma`` from ``--target-epsilon`` when no ``--sigma`` was given."""
    cfg = state.cfg
    if not cfg.calibrates:
        return
    from wsiseg.privacy.calibrate import calibrate_noise_multiplier  # noqa: PLC0415

    state.sigma = calibrate_noise_multiplier(target_epsilon=cfg.target_epsilon, delta=cfg.delta,  # type: ignore[arg-type]
                                             rounds=cfg.rounds, sample_rate=state.sample_rate)  # fmt: skip


def sample_clients(state: ServerState) -> list[int]:
    """Poisson sampling: each client takes part with probability ``fraction`` (all when 1)."""
    if state.cfg.fraction >= 1.0:
        return list(range(state.n_clients))
    return [i for i in range(state.n_clients) if state.sample_rng.random() < state.cfg.fraction]


def aggregate_round(strategy: FedAvg, results: list[ClientResult], state: ServerState) -> RoundAggregate:
    """Aggregate a round; with central DP and nobody sampled, the release is noise only (and still counts)."""
    if results:
        return strategy.aggregate(results, expected_clients=state.expected_clients)
    if state.cfg.dp == "central":
        zero = {n: np.zeros_like(v) for n, v in trainable_state(state.model).items()}
        return strategy.aggregate([ClientResult("none", zero, {}, 0, 0, math.nan, 0.0)],
                                  expected_clients=state.expected_clients)  # fmt: skip
    return RoundAggregate({}, {}, {"n_clients": 0})


class RunLogs:
    """rounds.csv, clients.csv, privacy.csv and the plots of a federated run."""

    def __init__(self, run_dir: Path, keep_until: int) -> None:
        self.run_dir = run_dir
        self.rounds = CsvLog(run_dir / "rounds.csv", keep_until=("round", float(keep_until)))
        self.clients = CsvLog(run_dir / "clients.csv", keep_until=("round", float(keep_until)))
        self.privacy = CsvLog(run_dir / "privacy.csv", keep_until=("round", float(keep_until)))

    def write(  # noqa: PLR0913
        self, rnd: int, run: ServerState, results: list[Any], stats: dict[str, Any], loss: float, dice: float | None,
        eps: float | None, metrics: dict[str, Any], t_train: float, t_dp: float,
    ) -> None:  # fmt: skip
        """Append one round to rounds.csv, its clients to clients.csv and its ledger entry to privacy.csv."""
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
        """Held-out Dice, training loss and epsilon against rounds, as ``curves.png``."""
        rows = self.rounds.rows()
        panels = [("held-out Dice", ["test_dice"]), ("train loss", ["train_loss"])]
        if any(r.get("epsilon") for r in rows):
            panels.append(("epsilon (PLD)", ["epsilon"]))
        plot_curves(self.run_dir / "curves.png", rows, "round", panels)
