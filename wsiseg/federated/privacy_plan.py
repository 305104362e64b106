"""The privacy plan of a federated config, for ``--dry-run`` and the start of every run."""

from __future__ import annotations

from typing import Any

from wsiseg.federated.config import FedConfig
from wsiseg.privacy.accounting import meaningful_warning
from wsiseg.privacy.calibrate import calibrate_noise_multiplier, privacy_plan
from wsiseg.privacy.noise import noise_std_sum

__all__ = ["plan_rows"]


def _n_clients(cfg: FedConfig) -> int:
    return len(cfg.client_dirs) if cfg.client_dirs else cfg.clients


def _n_params(cfg: FedConfig) -> int:
    from wsiseg.models import create_model  # noqa: PLC0415

    args = dict(cfg.model_args)
    if cfg.dp != "none":
        args.setdefault("norm", "groupnorm")
    model = create_model(cfg.model, num_classes=4, **args)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def plan_rows(cfg: FedConfig, *, with_params: bool = True) -> dict[str, Any]:
    """Sigma (calibrated if ``target_epsilon``), noise scales and epsilon rows, with the loud warning if any.

    In ``local`` mode the accountant uses rate 1 (the server knows who sent each update).
    """
    k = _n_clients(cfg)
    q = cfg.fraction if cfg.dp == "central" else 1.0
    sigma = cfg.noise_multiplier
    if cfg.calibrates:
        sigma = calibrate_noise_multiplier(target_epsilon=cfg.target_epsilon, delta=cfg.delta, rounds=cfg.rounds,
                                           sample_rate=q)  # fmt: skip
    n_params = _n_params(cfg) if with_params else None
    rows = privacy_plan(noise_multiplier=sigma, clip=cfg.clip, n_clients=k, sample_rate=q, rounds=cfg.rounds,
                        delta=cfg.delta, n_params=n_params)  # fmt: skip
    if cfg.dp == "local":  # each client's own noise; the mean of m clients carries sigma*C/sqrt(m)
        for r in rows:
            r["noise_std_mean"] = noise_std_sum(sigma, cfg.clip) / (max(1.0, cfg.fraction * k) ** 0.5)
            if n_params is not None:
                r["noise_norm_mean"] = r["noise_std_mean"] * n_params**0.5
    std_sum = noise_std_sum(sigma, cfg.clip)
    last = rows[-1]["epsilon_pld"]
    return {"sigma": sigma, "q": q, "std_sum": std_sum, "std_mean": rows[0]["noise_std_mean"], "rows": rows,
            "warning": meaningful_warning(last)}  # fmt: skip
