"""The privacy plan of a federated config, for ``--dry-run`` and the start of every run."""

from __future__ import annotations

from typing import Any

from wsiseg.federated.config import FedConfig
from wsiseg.privacy.accounting import meaningful_warning
from wsiseg.privacy.calibrate import calibrate_noise_multiplier, privacy_plan
from wsiseg.privacy.noise import noise_std_sum

__all__ = ["accounted_sample_rate", "check_dp_settings", "plan_rows", "relation_text", "seed_warnings"]


def _n_clients(cfg: FedConfig) -> int:
    return len(cfg.client_dirs) if cfg.client_dirs else cfg.clients


def _dp_model(cfg: FedConfig) -> Any:
    from wsiseg.models import create_model  # noqa: PLC0415

    args = dict(cfg.model_args)
    if cfg.dp != "none":
        args.setdefault("norm", "groupnorm")
    return create_model(cfg.model, num_classes=4, **args)


def check_dp_settings(cfg: FedConfig) -> int:
    """Build the model as a run would and refuse what DP cannot protect; returns its trainable parameters.

    Raises:
        ConfigError: BatchNorm running statistics under ``--dp central|local``.
    """
    from wsiseg.federated.clients import check_dp_model  # noqa: PLC0415

    model = _dp_model(cfg)
    check_dp_model(model, cfg.dp)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def accounted_sample_rate(cfg: FedConfig) -> float:
    """The ``q`` the accountant uses: ``--fraction`` in central mode with the secret sampler, else 1.

    Local mode: the server sees who sent each update. ``--noise-seed``: the schedule is reproducible from the
    seed, hence predictable, so no amplification is claimed.
    """
    return cfg.fraction if cfg.dp == "central" and cfg.noise_seed is None else 1.0


def relation_text(cfg: FedConfig) -> str:
    """The neighbouring relation the epsilon holds for, in one line."""
    if cfg.dp == "local":
        return ("replace-one against the server: any two datasets of one site (sensitivity 2C, accounted as "
                "sigma/2), no amplification")  # fmt: skip
    amp = ("Poisson sampling from a secret key (amplification claimed)" if accounted_sample_rate(cfg) < 1
           else "no amplification" + (" (--noise-seed makes the schedule predictable)"
                                      if cfg.fraction < 1 else ""))  # fmt: skip
    return f"zero-out with the public roster of {_n_clients(cfg)} sites (sensitivity C); {amp}"


def seed_warnings(cfg: FedConfig) -> list[str]:
    """What ``--seed`` and ``--noise-seed`` mean for privacy, as warnings (empty without DP or seeds)."""
    if cfg.dp == "none":
        return []
    out = []
    if cfg.seed is not None and cfg.noise_seed is None:
        out.append("--seed fixes initialisation, data split and order only; DP noise and client sampling come from "
                   "OS entropy kept in the private resume state (checkpoints/last, owner-only), so this run is "
                   "reproducible only from that private state")  # fmt: skip
    if cfg.noise_seed is not None:
        out.append("--noise-seed makes the DP noise and the client-sampling schedule reproducible: anyone who learns "
                   "or guesses it can subtract the noise, and no amplification by sampling is claimed; it is kept "
                   "in private files only, but never release a model trained with it")  # fmt: skip
    return out


def plan_rows(cfg: FedConfig, *, with_params: bool = True) -> dict[str, Any]:
    """Sigma (calibrated if ``target_epsilon``), noise scales and epsilon rows, with the loud warning if any.

    In ``local`` mode the accountant uses rate 1 (the server knows who sent each update) and sensitivity 2C.
    """
    k = _n_clients(cfg)
    q = accounted_sample_rate(cfg)
    sigma = cfg.noise_multiplier
    if cfg.calibrates:
        sigma = cfg.sensitivity * calibrate_noise_multiplier(
            target_epsilon=cfg.target_epsilon, delta=cfg.delta, rounds=cfg.rounds,  # type: ignore[arg-type]
            sample_rate=q,
        )  # fmt: skip
    n_params = check_dp_settings(cfg) if with_params else None
    rows = privacy_plan(noise_multiplier=sigma, clip=cfg.clip, n_clients=k, sample_rate=q, rounds=cfg.rounds,
                        delta=cfg.delta, n_params=n_params, sensitivity=cfg.sensitivity)  # fmt: skip
    # the mean divides by the public expected cohort q*K (central: one noise draw on the sum; local: one per
    # site, so the mean of m sites carries sigma*C/sqrt(m)), whatever q the accountant may use
    cohort = max(1e-9, cfg.fraction * k)
    std_mean = noise_std_sum(sigma, cfg.clip) / (cohort if cfg.dp == "central" else max(1.0, cohort) ** 0.5)
    for r in rows:
        r["noise_std_mean"] = std_mean
        if n_params is not None:
            r["noise_norm_mean"] = std_mean * n_params**0.5
    std_sum = noise_std_sum(sigma, cfg.clip)
    last = rows[-1]["epsilon_pld"]
    return {
        "sigma": sigma,
        "q": q,
        "std_sum": std_sum,
        "std_mean": rows[0]["noise_std_mean"],
        "rows": rows,
        "warning": meaningful_warning(last),
        "relation": relation_text(cfg),
        "seed_warnings": seed_warnings(cfg),
    }
