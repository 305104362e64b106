"""``wsiseg fed-client``: run one site of a multi-site federation (a Flower SuperNode)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from rich.markup import escape

from wsiseg.cli import _options as o
from wsiseg.federated.modes import DP_MODES

__all__ = ["fed_client"]


def fed_client(
    data: Annotated[Path, typer.Option(help="This site's tile dataset (from `wsiseg tile`).")],
    server: Annotated[str, typer.Option(help="SuperLink address HOST:PORT.")],
    site: Annotated[
        str | None, typer.Option(help="Site name as registered on the server (default: from --certs).")
    ] = None,
    certs: Annotated[
        Path | None, typer.Option(help="This site's folder from `wsiseg fed-certs` (ca.crt, node.key).")
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate of the server (instead of --certs).")] = None,
    node_key: Annotated[Path | None, typer.Option(help="OpenSSH ECDSA private node key (instead of --certs).")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS, no node key: loopback testing only.")] = False,
    state_dir: Annotated[Path | None, typer.Option(help="Private site state (default .wsiseg-site/SITE).")] = None,
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's own API (127.0.0.1 only).")] = 9094,
    device: o.DeviceOpt = "auto",
    require_dp: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(list(DP_MODES)),
            help="Refuse rounds in a weaker DP mode than this (none < central < distributed < local < sample).",
            rich_help_panel=o.PRIVACY,
        ),
    ] = "none",
    min_sigma: Annotated[
        float,
        typer.Option(
            help="Refuse DP rounds whose noise multiplier is below this (the site's floor; > 0).",
            rich_help_panel=o.PRIVACY,
        ),
    ] = 0.5,
    max_clip: Annotated[
        float | None,
        typer.Option(help="Refuse DP rounds whose clip norm C is above this.", rich_help_panel=o.PRIVACY),
    ] = None,
    noise_seed: Annotated[
        int | None,
        typer.Option(
            help="Seed this site's local-DP noise (reproductions only: whoever learns it removes the noise).",
            rich_help_panel=o.PRIVACY,
        ),
    ] = None,
    max_epsilon: Annotated[
        float | None,
        typer.Option(
            help="--dp sample: this site's privacy budget; refuse any round that would take its epsilon above it "
            "(accounted by the site, over every run, in its state folder).",
            rich_help_panel=o.PRIVACY,
        ),
    ] = None,
    patients: o.PatientsOpt = None,
    heldout: o.HeldoutOpt = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for local training.")] = None,
    retry_seconds: Annotated[
        float, typer.Option(help="Restart the SuperNode this long after it exits (0: stop).")
    ] = 15.0,
) -> None:
    """Serve this site's data to a federation: trains locally; only the DP-processed update leaves the site.

    The site owns its privacy: its noise comes from its own entropy, it refuses rounds below --require-dp,
    below --min-sigma or above --max-clip, and it never answers one round twice with different content.
    """
    import time

    from wsiseg.cli._console import console
    from wsiseg.errors import ConfigError
    from wsiseg.federated.flower import launch
    from wsiseg.federated.flower.federation import SiteOptions, start_site

    if not min_sigma > 0 or (max_clip is not None and not max_clip > 0):
        msg = f"--min-sigma and --max-clip must be > 0, got {min_sigma} and {max_clip}"
        raise ConfigError(msg)
    name = site or (certs.resolve().name if certs else data.resolve().name)
    _check_site_privacy(state_dir or Path(".wsiseg-site") / name, name, max_epsilon, patients)
    if noise_seed is not None:
        console.print(
            "[bold red]WARNING:[/] --noise-seed: this site's noise is reproducible from the seed; anyone "
            "who learns or guesses it can subtract the noise. Use it for tests and reproductions only."
        )
    host = server.rsplit(":", 1)[0]
    if insecure:
        launch.check_insecure(host, insecure=True)
        console.print("[bold yellow]WARNING:[/] --insecure: no TLS and no node key; loopback testing only")
        ca_path, key_path = None, None
    else:
        ca_path = ca or (certs / "ca.crt" if certs else None)
        key_path = node_key or (certs / "node.key" if certs else None)
        if ca_path is None or key_path is None:
            msg = "TLS and a node key are required: give --certs SITE_DIR (`wsiseg fed-certs`) or --ca and --node-key"
            raise ConfigError(msg)
    opts = SiteOptions(data=data, site=name, server=server, state_dir=state_dir or Path(".wsiseg-site") / name,
                       ca_cert=ca_path, node_key=key_path, port=port, device=device, require_dp=require_dp,
                       threads=threads, min_sigma=min_sigma, max_clip=max_clip, noise_seed=noise_seed,
                       max_epsilon=max_epsilon, patients=patients,
                       heldout=o.resolve_heldout(heldout))  # fmt: skip
    console.print(f"site {name}: connecting to {server}; log {opts.state_dir / 'supernode.log'}", highlight=False,
                  markup=False)  # fmt: skip
    while True:
        proc = start_site(opts)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            launch.stop(proc)
            console.print(f"site {name}: stopped", markup=False)
            return
        log = opts.state_dir / "supernode.log"
        console.print(f"[yellow]site {escape(name)}: SuperNode exited with code {code}[/] (305: refused, e.g. key "
                      f"not registered on the server); log {escape(str(log))}", highlight=False)  # fmt: skip
        if retry_seconds <= 0:
            raise typer.Exit(code or 1)
        time.sleep(retry_seconds)


def _check_site_privacy(state_dir: Path, name: str, max_epsilon: float | None, patients: Path | None) -> None:
    """Refuse a spent budget or an unreadable patient table before the SuperNode starts (exit 8).

    Raises:
        PrivacyError: ``--max-epsilon`` not positive or already exceeded, or a bad ``--patients`` table.
    """
    from wsiseg.data.units import load_patient_table
    from wsiseg.errors import PrivacyError
    from wsiseg.federated.flower.site import SiteLedger

    if max_epsilon is not None and not max_epsilon > 0:
        msg = f"--max-epsilon must be > 0, got {max_epsilon}"
        raise PrivacyError(msg)
    if patients is not None:
        load_patient_table(patients)
    SiteLedger(state_dir, delta=1e-5, max_epsilon=max_epsilon).check_budget(name)
