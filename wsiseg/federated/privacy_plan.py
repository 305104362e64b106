"""The privacy plan of a federated config, for ``--dry-run`` and the start of every run."""

from __future__ import annotations

from typing import Any

from wsiseg.errors import PrivacyError
from wsiseg.federated.config import FedConfig
from wsiseg.federated.registry import strategy_class
from wsiseg.privacy.accounting import epsilon_for_history, meaningful_warning
from wsiseg.privacy.calibrate import calibrate_noise_multiplier, privacy_plan
from wsiseg.privacy.noise import noise_std_sum

__all__ = [
    "accounted_sample_rate",
    "calibrated_sample_sigma",
    "calibrated_sigma",
    "check_dp_settings",
    "plan_rows",
    "public_site_plans",
    "relation_text",
    "sample_plan",
    "seed_warnings",
    "unknown_rate_error",
]


def _n_clients(cfg: FedConfig) -> int:
    return len(cfg.client_dirs) if cfg.client_dirs else cfg.clients


def _dp_model(cfg: FedConfig) -> Any:
    from wsiseg.models import create_model

    args = dict(cfg.model_args)
    if cfg.private:
        args.setdefault("norm", "groupnorm")
    return create_model(cfg.model, num_classes=4, **args)


def check_dp_settings(cfg: FedConfig) -> int:
    """Build the model as a run would and refuse what DP cannot protect; returns its trainable parameters.

    Raises:
        PrivacyError: BatchNorm running statistics under a DP mode.
    """
    from wsiseg.federated.clients import check_dp_model

    model = _dp_model(cfg)
    check_dp_model(model, private=cfg.private, mode=cfg.dp)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def accounted_sample_rate(cfg: FedConfig) -> float:
    """The ``q`` the accountant uses, by the mode's rule; ``--noise-seed`` makes sampling predictable."""
    return strategy_class(cfg.dp).accounted_rate(cfg.fraction, secret_sampling=cfg.noise_seed is None)


def calibrated_sigma(cfg: FedConfig, sample_rate: float) -> float:
    """The sigma a run uses: ``--sigma``, or the one ``--target-epsilon`` calls for at ``sample_rate``.

    The accountant composes ``sigma / sensitivity`` (local mode: ``2C``), so the calibrated multiplier is
    scaled back by the mode's sensitivity.
    """
    if not cfg.calibrates:
        return cfg.noise_multiplier
    return cfg.sensitivity * calibrate_noise_multiplier(
        target_epsilon=cfg.target_epsilon, delta=cfg.delta, rounds=cfg.rounds,  # type: ignore[arg-type]
        sample_rate=sample_rate,
    )  # fmt: skip


def relation_text(cfg: FedConfig) -> str:
    """The neighbouring relation the epsilon holds for, in one line."""
    return strategy_class(cfg.dp).relation(_n_clients(cfg), cfg.fraction, secret_sampling=cfg.noise_seed is None)


def seed_warnings(cfg: FedConfig) -> list[str]:
    """What ``--seed`` and ``--noise-seed`` mean for privacy, as warnings (empty without DP or seeds)."""
    if not cfg.private:
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
    sigma = calibrated_sigma(cfg, q)
    n_params = check_dp_settings(cfg) if with_params else None
    rows = privacy_plan(noise_multiplier=sigma, clip=cfg.clip, n_clients=k, sample_rate=q, rounds=cfg.rounds,
                        delta=cfg.delta, n_params=n_params, sensitivity=cfg.sensitivity)  # fmt: skip
    # noise on the mean over the public expected cohort q*K, by the mode's rule, whatever q is accounted
    std_sum = noise_std_sum(sigma, cfg.clip)
    std_mean = strategy_class(cfg.dp).noise_std_mean(std_sum, cfg.fraction * k)
    for r in rows:
        r["noise_std_mean"] = std_mean
        if n_params is not None:
            r["noise_norm_mean"] = std_mean * n_params**0.5
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


def calibrated_sample_sigma(cfg: FedConfig, sites: list[tuple[str, int, float, int]]) -> float:
    """Sample mode: the sigma that keeps every site within ``--target-epsilon`` over all planned steps.

    Args:
        cfg: Settings (``target_epsilon``, ``delta``, ``rounds``).
        sites: ``(name, units, q, steps a round)`` of each site.
    """
    if not cfg.calibrates:
        return cfg.noise_multiplier
    return max(
        calibrate_noise_multiplier(target_epsilon=cfg.target_epsilon, delta=cfg.delta,  # type: ignore[arg-type]
                                   rounds=cfg.rounds * steps, sample_rate=q)
        for _, _, q, steps in sites
    )  # fmt: skip


def sample_plan(cfg: FedConfig, sites: list[tuple[str, int, float, int]]) -> dict[str, Any]:
    """Sample mode: per site, units, q, steps, sigma and epsilon after round 1, every tenth and the last.

    Assumes every site takes part in every round (an upper bound with client sampling).
    """
    sigma = calibrated_sample_sigma(cfg, sites)
    marks = sorted({1, *range(10, cfg.rounds + 1, 10), cfg.rounds})
    rows = []
    for name, units, q, steps in sites:
        for r in marks:
            hist = [(sigma, q, r * steps)]
            rows.append({"site": name, "units": units, "q": q, "steps_per_round": steps, "round": r,
                         "epsilon_pld": epsilon_for_history(hist, delta=cfg.delta),
                         "epsilon_rdp": epsilon_for_history(hist, delta=cfg.delta, method="rdp")})  # fmt: skip
    worst = max((r["epsilon_pld"] for r in rows), default=0.0)
    return {"sigma": sigma, "rows": rows, "warning": meaningful_warning(worst), "relation": relation_text(cfg),
            "seed_warnings": seed_warnings(cfg), "unit": cfg.privacy_unit}  # fmt: skip


def public_site_plans(cfg: FedConfig, names: list[str]) -> list[tuple[str, int, float, int]] | None:
    """Sample mode with a public ``--sample-rate``: every site's q and steps a round, known without its data.

    Returns None when q depends on the sites' unit counts (``--batch-size / units``), which only the sites know.
    """
    from wsiseg.privacy.dpsgd import DpSgdConfig

    if cfg.dp != "sample" or cfg.sample_rate is None:
        return None
    steps = DpSgdConfig.steps_per_round(cfg.sample_rate, local_steps=cfg.local_steps, local_epochs=cfg.local_epochs)
    return [(name, 0, cfg.sample_rate, steps) for name in names]


def unknown_rate_error() -> PrivacyError:
    """The refusal of ``--dp sample --target-epsilon`` where the server cannot know each site's q."""
    return PrivacyError("--dp sample --target-epsilon: the server does not know the sites' unit counts; give "
                        "--sample-rate (a public q) or --sigma, and let each site enforce --max-epsilon")  # fmt: skip
