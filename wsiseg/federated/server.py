"""Server-side state and round helpers shared by the in-process simulation and the Flower ServerApp.

``ServerState`` holds the global model, the client sampler and noise generator, the privacy ledger and the
resume state, and keeps what may be shared (the final card) apart from what must stay private (the resume
state: seeds, generator states, the sampling key, per-round client counts). The helpers sample clients
(Poisson), aggregate a round through the strategy, fold the result into the global weights, and write the
run logs. Both ``run_federated`` and the Flower server call them, so
the two paths run the same code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiseg.classes import ClassTable
from wsiseg.errors import PrivacyError
from wsiseg.federated.aggregate import apply_update
from wsiseg.federated.clients import ClientResult, check_dp_model, trainable_state
from wsiseg.federated.config import FedConfig
from wsiseg.federated.distributed import check_secure_plan, colluding_epsilon
from wsiseg.federated.registry import make_strategy, strategy_class
from wsiseg.federated.strategies import FedAvg, RoundAggregate
from wsiseg.models import args_for_tiles, create_model
from wsiseg.privacy.ledger import PrivacyLedger
from wsiseg.privacy.noise import make_generator
from wsiseg.privacy.sampling import ClientSampler
from wsiseg.seeds import stream_seed
from wsiseg.train.card import ModelCard, ModelSpec
from wsiseg.train.checkpoint import load_checkpoint, save_checkpoint
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
    return dict(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    rng.bit_generator.state = state


class ServerState:
    """The server half of a federated run: global model, generators, ledger, resume state.

    What may be shared (:meth:`card`) and what must stay private (:meth:`resume_state`) are separate by
    construction: seeds, generator states, the client-sampling key and the realised number of clients per
    round exist only in the resume state, which is written owner-only into ``checkpoints/last``.

    Args:
        cfg: Settings.
        run_dir: The run folder.
        device: Torch device of the global model.
        classes: Class table of the federation.
        tiling: Tiling settings shared by the sites (stored in the checkpoint card).
        roster: The clients' (sites') names in index order: public, it fixes the denominator ``q * K``.
        federation: Extra public facts for the card (the Flower engine, its sites).

    Raises:
        PrivacyError: A model that keeps BatchNorm running statistics under DP.
    """

    def __init__(
        self, cfg: FedConfig, run_dir: Path, device: str, classes: ClassTable, tiling: dict[str, Any],
        roster: list[str], federation: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.classes, self.tiling, self.roster = classes, tiling, list(roster)
        self.n_clients, self.federation = len(roster), federation
        model_args = args_for_tiles(cfg.model, cfg.model_args, int(tiling["size"]))
        self.mode = strategy_class(cfg.dp)
        if self.mode.private and "norm" not in model_args:
            model_args["norm"] = "groupnorm"
        self.model_args = model_args
        torch.manual_seed(stream_seed(cfg.train_seed, "init"))
        self.model = create_model(cfg.model, num_classes=len(classes), pretrained=cfg.pretrained, **model_args)
        check_dp_model(self.model, private=self.mode.private, mode=cfg.dp)
        self.model.to(device)
        self.global_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        seeded = cfg.noise_seed is not None
        self.sampler = ClientSampler.seeded(cfg.noise_seed) if seeded else ClientSampler.secret()  # type: ignore[arg-type]
        self.noise_rng, self.noise_seed_info = make_generator(cfg.noise_seed)
        self.ledger = PrivacyLedger(delta=cfg.delta) if self.mode.private and not self.per_site else None
        #: Sample mode: each site's public account as the server mirrors it from the replies (q, steps).
        self.site_ledgers: dict[str, PrivacyLedger] = {}
        self.sigma = cfg.noise_multiplier
        self.start_round = 1
        #: ``--min-clients`` resolved (0: every site): distributed DP calibrates its noise shares to it.
        self.min_sites = cfg.min_clients or self.n_clients
        if cfg.secure:  # a plan that cannot keep its promise is refused before any round (exit 8)
            check_secure_plan(self.n_clients, self.min_sites)

    @property
    def sample_rate(self) -> float:
        """Sampling rate used by the accountant: the mode's rule (:meth:`FedAvg.accounted_rate`).

        Amplification needs a schedule nobody can predict: with ``--noise-seed`` the sampler is reproducible
        and no mode claims it.
        """
        return self.mode.accounted_rate(self.cfg.fraction, secret_sampling=self.sampler.amplifies)

    @property
    def private(self) -> bool:
        """Whether the run is differentially private."""
        return self.mode.private

    @property
    def per_site(self) -> bool:
        """Whether each site accounts its own epsilon (sample-level DP-SGD)."""
        return self.mode.per_site_accounting

    @property
    def expected_clients(self) -> float:
        """Expected cohort size ``q * K`` (the central-DP denominator, fixed and public)."""
        return max(1e-9, self.cfg.fraction * self.n_clients)

    def strategy(self) -> FedAvg:
        """The mode's strategy with the server's noise generator."""
        return make_strategy(
            self.cfg.dp,
            clip=self.cfg.clip,
            noise_multiplier=self.sigma,
            rng=self.noise_rng,
            scope=self.cfg.clip_scope,
            sgd=self.cfg.dp_sgd(self.sigma) if self.per_site else None,
            min_sites=self.min_sites,
            n_sites=self.n_clients,
        )

    def privacy_summary(self) -> dict[str, Any]:
        """The shareable privacy facts: epsilon, the relation it holds for, the public ledger; no seeds or counts."""
        if self.per_site:
            return self._site_summary()
        if self.ledger is None:
            return {"dp": self.cfg.dp, "epsilon": None, "note": "no differential privacy"}
        eps = self.ledger.epsilon() if self.ledger.entries else 0.0
        extra: dict[str, Any] = {}
        if self.cfg.secure:
            extra = {"secure_aggregation": "SecAgg+ (Flower); the server sees only the sum of the releases",
                     "min_clients": self.min_sites}  # fmt: skip
        if self.mode.secure:
            extra.update(noise_shares=[e.n_clients_released for e in self.ledger.entries],
                         epsilon_one_site_colluding=colluding_epsilon(self.ledger, 1))  # fmt: skip
        return {
            "dp": self.cfg.dp, "noise_multiplier": self.sigma, "clip": self.cfg.clip, "delta": self.cfg.delta,
            "sample_rate": self.sample_rate, "client_fraction": self.cfg.fraction,
            "amplification": self.sample_rate < 1.0, "sensitivity": self.mode.sensitivity,
            "neighbouring": self.mode.relation(self.n_clients, self.cfg.fraction,
                                               secret_sampling=self.sampler.amplifies),
            "rounds_released": len(self.ledger.entries), "epsilon": eps,
            "epsilon_rdp": self.ledger.epsilon(method="rdp") if self.ledger.entries else 0.0,
            "accountant": "dp_accounting PLD (headline), RDP (cross-check); client level",
            "unit": "one client (all of its slides)",
            "noise_source": "explicit --noise-seed (kept private)" if self.cfg.noise_seed is not None
                            else "os-entropy",
            "ledger": self.ledger.public_state_dict(),
            **extra,
        }  # fmt: skip

    def site_epsilon(self, method: str = "pld") -> float:
        """Sample mode: the largest cumulative epsilon of any site (0 before any release)."""
        key = "epsilon_pld" if method == "pld" else "epsilon_rdp"
        return max([getattr(led.entries[-1], key) for led in self.site_ledgers.values() if led.entries] or [0.0])

    def _site_summary(self) -> dict[str, Any]:
        unit = self.cfg.privacy_unit
        sites = [{"site": name, "epsilon": led.entries[-1].epsilon_pld, "epsilon_rdp": led.entries[-1].epsilon_rdp,
                  "q": led.entries[-1].sample_rate, "rounds": len(led.entries),
                  "steps": sum(e.steps for e in led.entries)}
                 for name, led in sorted(self.site_ledgers.items()) if led.entries]  # fmt: skip
        caveat = {"tile": "one tile: a slide or patient with k tiles is protected only by group privacy (about k "
                          "times epsilon)",
                  "slide": "one slide: a patient with k slides is protected only by group privacy (about k times "
                           "epsilon)",
                  "patient": "one patient (every slide in the site's patient table)"}[unit]  # fmt: skip
        return {
            "dp": self.cfg.dp, "unit": unit, "unit_protected": caveat, "noise_multiplier": self.sigma,
            "clip": self.cfg.clip, "delta": self.cfg.delta, "sample_rate": self.cfg.sample_rate,
            "client_fraction": self.cfg.fraction,
            "neighbouring": self.mode.relation(self.n_clients, self.cfg.fraction,
                                               secret_sampling=self.noise_seed_info.get("source") == "os-entropy"),
            "epsilon": self.site_epsilon(), "epsilon_rdp": self.site_epsilon("rdp"), "sites": sites,
            "accountant": "dp_accounting PLD (headline), RDP (cross-check); per site, every DP-SGD step of every "
                          "round it took part in (Poisson-subsampled Gaussian); epsilon is the worst site's",
            "noise_source": "explicit --noise-seed (kept private)" if self.cfg.noise_seed is not None
                            else "os-entropy",
            "ledger": [{"site": name, **led.public_state_dict()} for name, led in sorted(self.site_ledgers.items())],
        }  # fmt: skip

    def card(self, rnd: int) -> ModelCard:
        """The shareable checkpoint card (the keys the README's privacy section lists)."""
        extra = {"fed_config": self.cfg.public_dict(), "privacy": self.privacy_summary(), "round": rnd,
                 "roster": self.roster}  # fmt: skip
        if self.federation is not None:
            extra["federation"] = self.federation
        spec = ModelSpec(self.cfg.model, {"num_classes": len(self.classes), **self.model_args})
        return ModelCard(spec, self.classes.to_list(), self.tiling, extra)

    def resume_state(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Server-private state for --resume: generators, sampling key, seeds, full ledger. Never share it.

        ``extra`` adds the transport's private state (the simulated clients' noise generators).
        """
        return {
            "sampler": self.sampler.state_dict(), "noise_rng": rng_state(self.noise_rng), "sigma": self.sigma,
            "noise_seed": self.noise_seed_info, "train_seed": self.cfg.train_seed,
            "ledger": self.ledger.state_dict() if self.ledger is not None else None,
            "site_ledgers": {n: led.state_dict() for n, led in self.site_ledgers.items()}, **(extra or {}),
        }  # fmt: skip

    def save_last(self, rnd: int, extra: dict[str, Any] | None = None) -> None:
        """Write ``checkpoints/last`` (weights, card and resume state), owner-only."""
        card = {**self.card(rnd).to_dict(), "resume": self.resume_state(extra)}
        save_checkpoint(self.run_dir / "checkpoints" / "last", self.model, card, private=True)

    def save_final(self, rnd: int) -> None:
        """Write the shareable ``checkpoints/final`` (weights and :meth:`card` only)."""
        save_checkpoint(self.run_dir / "checkpoints" / "final", self.model, self.card(rnd))

    def restore(self) -> dict[str, Any]:
        """Load ``checkpoints/last``: weights, generators, ledger and the next round; returns the resume state.

        Raises:
            PrivacyError: A resume state without a secret sampling key (written by an older wsiseg).
        """
        ckpt = load_checkpoint(self.run_dir / "checkpoints" / "last")
        self.model.load_state_dict(ckpt.weights)
        self.global_weights = {k: v.detach().clone().to(self.device) for k, v in self.model.state_dict().items()}
        res = ckpt.card["resume"]
        self.sampler = ClientSampler.from_state(res.get("sampler"))  # type: ignore[arg-type]
        set_rng_state(self.noise_rng, res["noise_rng"])
        self.sigma = float(res["sigma"])
        if self.ledger is not None:
            self.ledger.load_state_dict(res["ledger"])
        for name, st in (res.get("site_ledgers") or {}).items():
            self.site_ledgers[name] = PrivacyLedger(delta=self.cfg.delta)
            self.site_ledgers[name].load_state_dict(st)
        self.start_round = int(ckpt.card["round"]) + 1
        return dict(res)

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

    def record(self, rnd: int, results: list[ClientResult], *, noise_multiplier: float | None = None) -> float | None:
        """Record the round in the ledger; return the cumulative epsilon (None without DP).

        ``noise_multiplier`` is the noise the round's release actually carries when the mode says so
        (distributed DP: the shares of the sites that contributed); ``sigma`` otherwise.

        In sample mode each answering site's steps go into that site's mirrored account (from the ``q`` and
        steps it reported) and the worst site's epsilon is returned.

        Raises:
            PrivacyError: A sample-mode reply without its account.
        """
        if self.per_site:
            for r in results:
                p = r.privacy or {}
                if "q" not in p or "steps" not in p:
                    msg = f"site {r.name} sent a sample-mode update without its privacy account (q, steps)"
                    raise PrivacyError(msg)
                led = self.site_ledgers.setdefault(r.name, PrivacyLedger(delta=self.cfg.delta))
                led.record_round(round=rnd, noise_multiplier=self.sigma, sample_rate=float(p["q"]),
                                 clip=self.cfg.clip, n_clients_released=1, steps=int(p["steps"]))  # fmt: skip
            return self.site_epsilon()
        if self.ledger is None:
            return None
        z = self.sigma if noise_multiplier is None else noise_multiplier
        entry = self.ledger.record_round(round=rnd, noise_multiplier=z, sample_rate=self.sample_rate,
                                         clip=self.cfg.clip, n_clients_released=len(results),
                                         sensitivity=self.mode.sensitivity)  # fmt: skip
        return entry.epsilon_pld

    def budget_stop(self, rnd: int) -> str:
        """A message if releasing round ``rnd`` would exceed ``--target-epsilon``, else ``""``."""
        if self.per_site and self.cfg.target_epsilon is not None and self.site_ledgers:
            over = [n for n, led in self.site_ledgers.items() if led.entries and led.projected_epsilon(
                noise_multiplier=self.sigma, sample_rate=led.entries[-1].sample_rate,
                steps=led.entries[-1].steps) > self.cfg.target_epsilon * (1 + 1e-9)]  # fmt: skip
            if len(over) == len(self.site_ledgers):
                return f"stopped before round {rnd}: every site's epsilon would exceed {self.cfg.target_epsilon}"
            return ""
        if self.ledger is None or self.cfg.target_epsilon is None:
            return ""
        projected = self.ledger.projected_epsilon(noise_multiplier=self.sigma, sample_rate=self.sample_rate,
                                                  sensitivity=self.mode.sensitivity)  # fmt: skip
        if projected > self.cfg.target_epsilon * (1 + 1e-9):
            return f"stopped before round {rnd}: epsilon would reach {projected:.3f} > {self.cfg.target_epsilon}"
        return ""


def calibrate_sigma(state: ServerState, *, sites: list[tuple[str, int, float, int]] | None = None) -> None:
    """Set ``state.sigma`` from ``--target-epsilon`` when no ``--sigma`` was given.

    Sample mode calibrates for the site that spends the most (``sites``: name, units, q, steps a round; without
    them, from a public ``--sample-rate``).

    Raises:
        PrivacyError: Sample mode with neither the sites' plans nor a public ``--sample-rate``.
    """
    from wsiseg.federated.privacy_plan import (
        calibrated_sample_sigma,
        calibrated_sigma,
        public_site_plans,
        unknown_rate_error,
    )

    if not state.cfg.calibrates:
        return
    if state.per_site and sites is None:
        sites = public_site_plans(state.cfg, state.roster)
        if sites is None:
            raise unknown_rate_error()
    state.sigma = (calibrated_sample_sigma(state.cfg, sites) if state.per_site and sites is not None
                   else calibrated_sigma(state.cfg, state.sample_rate))  # fmt: skip


def sample_clients(state: ServerState) -> list[int]:
    """Poisson sampling from the server's keyed sampler: each client with probability ``fraction`` (all when 1)."""
    return state.sampler.sample(state.n_clients, state.cfg.fraction)


def aggregate_round(strategy: FedAvg, results: list[ClientResult], state: ServerState) -> RoundAggregate:
    """Aggregate a round; with nobody answering, the mode decides (central DP: a noise-only release that counts)."""
    if results:
        return strategy.aggregate(results, expected_clients=state.expected_clients)
    return strategy.empty_round(trainable_state(state.model), expected_clients=state.expected_clients)


def _cell(value: float | None) -> float | str:
    return "" if value is None else value


class RunLogs:
    """rounds.csv, clients.csv, privacy.csv and the plots of a federated run."""

    def __init__(self, run_dir: Path, keep_until: int) -> None:
        self.run_dir = run_dir
        self.rounds = CsvLog(run_dir / "rounds.csv", keep_until=("round", float(keep_until)))
        self.clients = CsvLog(run_dir / "clients.csv", keep_until=("round", float(keep_until)))
        self.privacy = CsvLog(run_dir / "privacy.csv", keep_until=("round", float(keep_until)))

    def write(self, record: Any, run: ServerState) -> None:
        """Append a round to rounds.csv, its clients to clients.csv and its ledger entry to privacy.csv.

        Args:
            record: The round's :class:`~wsiseg.federated.loop.RoundRecord`.
            run: The server state (settings and ledger).
        """
        st, dice = record.stats, record.dice
        paper = record.metrics.get("paper", {}) if record.metrics else {}
        t_train = record.train_seconds
        self.rounds.append({
            "round": record.round, "clients": len(record.results), "train_loss": record.loss,
            "test_dice": dice if dice is not None else "", "test_jaccard": paper.get("jaccard", "") if dice else "",
            "test_acc": paper.get("acc", "") if dice else "",
            "epsilon": record.epsilon if record.epsilon is not None else "",
            "noise_to_signal": _cell(st.noise_to_signal),
            "train_seconds": t_train, "dp_agg_seconds": record.dp_seconds,
            "dp_overhead": record.dp_seconds / t_train if t_train > 0 else "",
        })  # fmt: skip
        for i, r in enumerate(record.results):
            norm = st.update_norms[i] if i < len(st.update_norms) else math.nan
            known = not math.isnan(norm)
            self.clients.append({
                "round": record.round, "client": r.name, "examples": r.n_examples, "steps": r.steps, "loss": r.loss,
                "update_norm": norm if known else "", "clipped": (norm > run.cfg.clip) if run.private and known else "",
            })  # fmt: skip
        for name, led in sorted(run.site_ledgers.items()) if run.per_site else ():
            if led.entries and led.entries[-1].round == record.round:
                e = led.entries[-1]
                self.privacy.append({
                    "round": record.round, "site": name, "sigma": e.noise_multiplier, "clip": e.clip,
                    "sample_rate": e.sample_rate, "steps": e.steps, "unit": run.cfg.privacy_unit,
                    "epsilon_pld": e.epsilon_pld, "epsilon_rdp": e.epsilon_rdp, "delta": run.cfg.delta,
                })  # fmt: skip
        if run.ledger is not None and run.ledger.entries:
            e = run.ledger.entries[-1]
            self.privacy.append({
                "round": record.round, "sigma": e.noise_multiplier, "clip": e.clip, "sample_rate": e.sample_rate,
                "sensitivity": e.sensitivity, "clients_released": e.n_clients_released,
                "noise_std_sum": _cell(st.noise_std_sum), "noise_std_mean": _cell(st.noise_std_mean),
                "noise_to_signal": _cell(st.noise_to_signal), "epsilon_pld": e.epsilon_pld,
                "epsilon_rdp": e.epsilon_rdp, "delta": run.cfg.delta,
            })  # fmt: skip

    def plots(self) -> None:
        """Held-out Dice, training loss and epsilon against rounds, as ``curves.png``."""
        rows = self.rounds.rows()
        panels = [("held-out Dice", ["test_dice"]), ("train loss", ["train_loss"])]
        if any(r.get("epsilon") for r in rows):
            panels.append(("epsilon (PLD)", ["epsilon"]))
        plot_curves(self.run_dir / "curves.png", rows, "round", panels)
