"""``wsiseg fed-server``: run the server of a multi-site federation (Flower SuperLink + the wsiseg ServerApp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["fed_server"]


def fed_server(  # noqa: PLR0913
    ctx: typer.Context,
    sites: Annotated[
        list[str] | None, typer.Option("--site", help="Site name, in client-index order (repeat).")
    ] = None,
    min_clients: Annotated[int, typer.Option(help="A round proceeds if at least this many sampled sites answer.")] = 2,
    round_timeout: Annotated[float, typer.Option(help="Seconds to wait for the sites' updates each round.")] = 1800.0,
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for all sites to connect at start.")] = 600.0,
    round_retries: Annotated[int, typer.Option(help="Resend a short round this many times before stopping.")] = 2,
    rounds: Annotated[int, typer.Option(help="Server rounds (paper: 150).")] = 150,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    local_steps: Annotated[int | None, typer.Option(help="Local SGD steps per round (overrides epochs).")] = None,
    fraction: Annotated[float, typer.Option(help="Poisson site-sampling rate per round.")] = 1.0,
    model: Annotated[str, typer.Option(help="Model name (see `wsiseg models`).")] = "dhunet",
    norm: Annotated[str | None, typer.Option(help="batchnorm or groupnorm (default groupnorm with DP).")] = None,
    img_size: Annotated[int | None, typer.Option(help="Model input size if the model needs it.")] = None,
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = 24,
    lr: Annotated[float, typer.Option(help="Base learning rate.")] = 0.01,
    dp: Annotated[
        str,
        typer.Option(
            help=(
                "none; central: the server clips and adds noise (epsilon for zero-out with the public roster); "
                "local: sites clip and noise before upload (epsilon replace-one, against the server)."
            )
        ),
    ] = "central",
    sigma: Annotated[float, typer.Option("--sigma", "--noise-multiplier", help="Noise multiplier z.")] = 1.0,
    clip: Annotated[float, typer.Option(help="Clip norm C of each site update.")] = 0.5,
    delta: Annotated[float, typer.Option(help="Delta of the (epsilon, delta) guarantee.")] = 1e-5,
    target_epsilon: Annotated[float | None, typer.Option(help="Calibrate sigma; stop before exceeding.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed initialisation and data order (never DP noise or client sampling).")
    ] = None,
    noise_seed: Annotated[
        int | None, typer.Option(help="Seed the server's DP noise and sampling: reproductions only.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with fed-train settings.")] = None,
    runs: Annotated[Path, typer.Option(help="Folder for run folders.")] = Path("runs"),
    resume: Annotated[Path | None, typer.Option(help="Run folder to continue from its last round.")] = None,
    host: Annotated[str, typer.Option(help="Listen address (0.0.0.0: all interfaces).")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option(help="The SuperLink's one port (sites connect here).")] = 9092,
    certs: Annotated[Path | None, typer.Option(help="Server folder from `wsiseg fed-certs`.")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS, no node authentication: loopback testing only.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the privacy plan and exit without starting anything.")] = False,
) -> None:
    """Coordinate a federation across institutions: same rounds, DP and accountant as fed-train."""
    from wsiseg.cli._console import console
    from wsiseg.cli._privacy import print_plan
    from wsiseg.errors import ConfigError
    from wsiseg.federated.config import FedConfig
    from wsiseg.federated.flower import launch
    from wsiseg.federated.flower.federation import run_server
    from wsiseg.federated.flower.server_loop import ServerSpec
    from wsiseg.train.runlog import new_run_dir

    if resume is not None:
        old = json.loads((resume / "server-spec.json").read_text(encoding="utf-8"))
        spec = ServerSpec(**{**old, "resume": True, "min_clients": min_clients, "round_timeout": round_timeout,
                             "wait_timeout": wait_timeout, "round_retries": round_retries})  # fmt: skip
        print_plan(FedConfig.from_dict(spec.fed_config), brief=not dry_run)
    else:
        if not sites or len(sites) < 2:
            msg = "give every site with --site NAME (at least two), in a fixed order: it sets each site's seeds"
            raise ConfigError(msg)
        cfg = _fed_config(ctx, config, sites, locals())
        print_plan(cfg, brief=not dry_run)  # the same plan, warnings and refusals as fed-train
        if dry_run:
            return
        run_dir = new_run_dir(runs, f"fed-{cfg.model}-{cfg.dp}-flower", private=True)
        spec = ServerSpec(
            fed_config=cfg.to_dict(), sites=list(sites), run_dir=str(run_dir), min_clients=min_clients,
            round_timeout=round_timeout, wait_timeout=wait_timeout, round_retries=round_retries,
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
                      say=lambda line: console.print(line, highlight=False))  # fmt: skip
    if code != 0:
        raise typer.Exit(code)
    console.print(f"[green]done:[/] {spec.run_dir}; final checkpoint {Path(spec.run_dir) / 'checkpoints' / 'final'}",
                  highlight=False)  # fmt: skip


def _fed_config(ctx: typer.Context, config: Path | None, sites: list[str], given: dict[str, Any]) -> Any:
    from wsiseg.cli._console import given as user_gave
    from wsiseg.cli._console import merged_model_args
    from wsiseg.config import load_toml
    from wsiseg.federated.config import FedConfig

    base = load_toml(config) if config else {}
    keys = ["rounds", "local_epochs", "local_steps", "fraction", "model", "batch_size", "lr", "dp", "sigma", "clip",
            "delta", "target_epsilon", "seed", "noise_seed"]  # fmt: skip
    explicit = {k: given[k] for k in keys if user_gave(ctx, k)}
    model_args = merged_model_args(base, given["norm"], given["img_size"])
    merged = {**base, **explicit, "model_args": model_args, "clients": len(sites), "data": (), "client_dirs": ()}
    return FedConfig.from_dict(merged)
