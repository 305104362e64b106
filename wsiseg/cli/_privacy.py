"""The privacy plan and warnings that ``fed-train`` and ``fed-server`` print before any training."""

from __future__ import annotations

from typing import Any

__all__ = ["print_plan"]


def print_plan(cfg: Any, *, brief: bool = False, sites: list[tuple[str, int, float, int]] | None = None) -> None:
    """Noise scale, neighbouring relation and epsilon at round 1, every 10th round and the last, with warnings.

    Also refuses settings DP cannot protect (BatchNorm statistics under DP), as the run itself would. In
    sample mode ``sites`` (name, units, q, steps a round) gives the per-site plan.

    Raises:
        PrivacyError: A model that would share BatchNorm running statistics under DP.
    """
    from rich.table import Table

    from wsiseg.cli._console import console
    from wsiseg.federated.privacy_plan import check_dp_settings, plan_rows

    if not cfg.private:
        console.print(f"[bold yellow]--dp {cfg.dp}:[/] plain FedAvg, no differential privacy (epsilon is infinite).")
        return
    if brief:
        check_dp_settings(cfg)
    if cfg.dp == "sample":
        _print_sample_plan(cfg, sites, brief=brief)
        return
    info = plan_rows(cfg, with_params=not brief)
    console.print(
        f"privacy: --dp {cfg.dp}, sigma {info['sigma']:.4g}, C {cfg.clip}, noise std on the sum {info['std_sum']:.4g}, "
        f"on the mean {info['std_mean']:.4g}, client sampling q {info['q']:.3g}, delta {cfg.delta:g}, "
        f"client-level unit (one site's whole data); neighbouring relation: {info['relation']}",
        highlight=False,
    )
    if not brief:
        table = Table(title="Privacy plan (dp_accounting: PLD headline, RDP cross-check)")
        cols = ["round", "epsilon_pld", "epsilon_rdp", "noise_std_sum", "noise_std_mean"]
        if "noise_norm_mean" in info["rows"][0]:
            cols.append("noise_norm_mean")
        for col in cols:
            table.add_column(col)
        for row in info["rows"]:
            table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols])
        console.print(table)
    for line in info["seed_warnings"]:
        console.print(f"[bold red]WARNING:[/] {line}", highlight=False)
    if info["warning"]:
        console.print(f"[bold red]WARNING:[/] {info['warning']}", highlight=False)


def _print_sample_plan(cfg: Any, sites: list[tuple[str, int, float, int]] | None, *, brief: bool) -> None:
    from rich.table import Table

    from wsiseg.cli._console import console
    from wsiseg.federated.privacy_plan import check_dp_settings, sample_plan

    if not brief:
        check_dp_settings(cfg)
    if not sites:
        if cfg.calibrates:
            from wsiseg.federated.privacy_plan import unknown_rate_error

            raise unknown_rate_error()
        console.print(f"privacy: --dp sample, per-{cfg.privacy_unit} DP-SGD at each site, sigma "
                      f"{cfg.noise_multiplier:.4g}, C {cfg.clip}; each site plans and accounts its own steps",
                      highlight=False)  # fmt: skip
        return
    info = sample_plan(cfg, sites)
    console.print(
        f"privacy: --dp sample, DP-SGD at each site, unit {cfg.privacy_unit}, sigma {info['sigma']:.4g}, per-unit "
        f"C {cfg.clip}, noise std on each step's sum {info['sigma'] * cfg.clip:.4g}, delta {cfg.delta:g}; "
        f"neighbouring relation: {info['relation']}",
        highlight=False,
    )
    if cfg.privacy_unit != "patient":
        console.print(f"[yellow]note:[/] one {cfg.privacy_unit} is the unit: a patient with k "
                      f"{cfg.privacy_unit}s is protected only by group privacy (about k times epsilon); "
                      "use --privacy-unit patient with --patients to protect patients", highlight=False)  # fmt: skip
    rows = info["rows"] if not brief else [r for r in info["rows"] if r["round"] == cfg.rounds]
    table = Table(title="Sample-level privacy plan per site (dp_accounting: PLD headline, RDP cross-check; "
                        "every site in every round)")  # fmt: skip
    cols = ["site", "units", "q", "steps_per_round", "round", "epsilon_pld", "epsilon_rdp"]
    for col in cols:
        table.add_column(col)
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        cells[1] = cells[1] if row["units"] else "(site's own)"
        table.add_row(*cells)
    console.print(table)
    for line in info["seed_warnings"]:
        console.print(f"[bold red]WARNING:[/] {line}", highlight=False)
    if info["warning"]:
        console.print(f"[bold red]WARNING:[/] {info['warning']}", highlight=False)
