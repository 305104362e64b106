"""``wsiseg fed-server``: run the server of a multi-site federation (Flower SuperLink + the wsiseg ServerApp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from wsiseg.cli import _options as o
from wsiseg.federated.flower.defaults import DEFAULT_ROUND_TIMEOUT, DEFAULT_WAIT_TIMEOUT
from wsiseg.federated.modes import DEFAULT_DP_MODE

__all__ = ["fed_server"]

F = o.FEDERATION


def fed_server(
    ctx: typer.Context,
    sites: Annotated[
        list[str] | None,
        typer.Option("--site", help="Site name, in client-index order (repeat).", rich_help_panel=F),
    ] = None,
    min_clients: Annotated[
        int,
        typer.Option(help="A round proceeds if at least this many sampled sites answer.", rich_help_panel=F),
    ] = 2,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the sites' updates each round.", rich_help_panel=F)
    ] = DEFAULT_ROUND_TIMEOUT,
    wait_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for all sites to connect at start.", rich_help_panel=F)
    ] = DEFAULT_WAIT_TIMEOUT,
    round_retries: Annotated[
        int, typer.Option(help="Resend a short round this many times before stopping.", rich_help_panel=F)
    ] = 2,
    rounds: o.RoundsOpt = 150,
    local_epochs: o.LocalEpochsOpt = 1,
    local_steps: o.LocalStepsOpt = None,
    fraction: o.FractionOpt = 1.0,
    model: o.ModelOpt = "dhunet",
    norm: o.NormOpt = None,
    img_size: o.ImgSizeOpt = None,
    batch_size: o.BatchSize = 24,
    lr: o.LrOpt = 0.01,
    dp: o.DpOpt = DEFAULT_DP_MODE,
    sigma: o.SigmaOpt = None,
    clip: o.ClipOpt = 0.5,
    clip_scope: o.ClipScopeOpt = "model",
    delta: o.DeltaOpt = 1e-5,
    target_epsilon: o.TargetEpsilonOpt = None,
    privacy_unit: o.PrivacyUnitOpt = "tile",
    sample_rate: o.SampleRateOpt = None,
    physical_batch: o.PhysicalBatchOpt = 8,
    tiles_per_unit: o.TilesPerUnitOpt = 8,
    seed: o.SeedOpt = None,
    noise_seed: o.NoiseSeedOpt = None,
    secure_aggregation: o.SecureAggOpt = False,
    time_budget: o.RoundBudgetOpt = None,
    secagg_threshold: Annotated[
        int | None,
        typer.Option(
            help="SecAgg+ reconstruction threshold, in [--min-clients, sites] (default --min-clients).",
            rich_help_panel=o.PRIVACY,
        ),
    ] = None,
    record_received: Annotated[
        bool,
        typer.Option(
            help="Audit: save the masked vectors the server receives under RUN/received/.", rich_help_panel=o.PRIVACY
        ),
    ] = False,
    config: o.ConfigOpt = None,
    runs: o.RunsOpt = Path("runs"),
    resume: o.ResumeOpt = None,
    host: Annotated[str, typer.Option(help="Listen address (0.0.0.0: all interfaces).", rich_help_panel=F)] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="The SuperLink's one port (sites connect here).", rich_help_panel=F)] = 9092,
    certs: Annotated[
        Path | None, typer.Option(help="Server folder from `wsiseg fed-certs`.", rich_help_panel=F)
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="No TLS, no node authentication: loopback testing only.", rich_help_panel=F)
    ] = False,
    dry_run: o.DryRunOpt = False,
) -> None:
    """Coordinate a federation across institutions: same rounds, DP and accountant as fed-train."""
    from wsiseg.cli._console import console
    from wsiseg.cli._privacy import print_plan
    from wsiseg.errors import ConfigError
    from wsiseg.federated.config import FedConfig
    from wsiseg.federated.flower import launch
    from wsiseg.federated.flower.federation import run_server
    from wsiseg.federated.flower.server_loop import ServerSpec
    from wsiseg.federated.privacy_plan import public_site_plans
    from wsiseg.train.runlog import RunFolder

    if resume is not None:
        old = json.loads((resume / "server-spec.json").read_text(encoding="utf-8"))
        spec = ServerSpec(**{**old, "resume": True, "min_clients": min_clients, "round_timeout": round_timeout,
                             "wait_timeout": wait_timeout, "round_retries": round_retries})  # fmt: skip
        old_cfg = FedConfig.from_dict(spec.fed_config)
        print_plan(old_cfg, brief=not dry_run, sites=public_site_plans(old_cfg, list(spec.sites)))
    else:
        if not sites or len(sites) < 2:
            msg = "give every site with --site NAME (at least two), in a fixed order: it sets each site's seeds"
            raise ConfigError(msg)
        cfg = _fed_config(ctx, config, sites, locals())
        if cfg.secure:  # refused before any round runs (exit 8)
            from wsiseg.federated.distributed import check_secure_plan

            check_secure_plan(len(sites), min_clients, secagg_threshold)
        # the same plan, warnings and refusals as fed-train (sample mode: per site when q is public)
        print_plan(cfg, brief=not dry_run, sites=public_site_plans(cfg, list(sites)))
        if dry_run:
            return
        run_dir = RunFolder.create(runs, f"fed-{cfg.model}-{cfg.dp}-flower", private=True).path
        spec = ServerSpec(
            fed_config=cfg.to_dict(), sites=list(sites), run_dir=str(run_dir), min_clients=min_clients,
            round_timeout=round_timeout, wait_timeout=wait_timeout, round_retries=round_retries,
            secagg_threshold=secagg_threshold, record_received=record_received,
        )  # fmt: skip
    if dry_run:
        return
    if insecure:
        launch.check_insecure(host, insecure=True)
        console.print("[bold yellow]WARNING:[/] --insecure: no TLS and no SuperNode authentication (loopback only)")
        tls, keys = launch.Tls(), None
    else:
        if certs is None:
            msg = "TLS and SuperNode keys are required: give --certs SERVER_DIR from `wsiseg fed-certs` (or --insecure)"
            raise ConfigError(msg)
        tls, keys = launch.Tls(certs / "ca.crt", certs / "server.pem", certs / "server.key"), certs / "site-keys"
    code = run_server(spec, host=host, port=port, tls=tls, site_keys=keys,
                      say=lambda line: console.print(line, highlight=False, markup=False))  # fmt: skip
    if code != 0:
        raise typer.Exit(code)
    console.print(f"[green]done:[/] {escape(spec.run_dir)}; final checkpoint "
                  f"{escape(str(Path(spec.run_dir) / 'checkpoints' / 'final'))}", highlight=False)  # fmt: skip


def _fed_config(ctx: typer.Context, config: Path | None, sites: list[str], given: dict[str, Any]) -> Any:
    from wsiseg.cli._console import given as user_gave
    from wsiseg.cli._console import merged_model_args
    from wsiseg.config import load_toml
    from wsiseg.federated.config import FedConfig

    base = load_toml(config) if config else {}
    keys = ["rounds", "local_epochs", "local_steps", "fraction", "model", "batch_size", "lr", "dp", "sigma", "clip",
            "clip_scope", "delta", "target_epsilon", "seed", "noise_seed", "privacy_unit", "sample_rate",
            "physical_batch", "tiles_per_unit", "secure_aggregation", "time_budget"]  # fmt: skip
    explicit = {k: given[k] for k in keys if user_gave(ctx, k)}
    model_args = merged_model_args(base, given["norm"], given["img_size"])
    merged = {**base, **explicit, "model_args": model_args, "clients": len(sites), "data": (), "client_dirs": ()}
    if merged.get("secure_aggregation") or merged.get("dp") == "distributed":
        merged["min_clients"] = given["min_clients"]
    return FedConfig.from_dict(merged)
