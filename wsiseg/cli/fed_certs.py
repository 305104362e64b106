"""``wsiseg fed-certs``: a trial CA, the SuperLink's TLS certificate and one node key per site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["fed_certs"]


def fed_certs(
    sites: Annotated[list[str], typer.Option("--site", help="Site name (repeat for each site).")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("fed-certs"),
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Server name or IP the sites connect to (repeat; default 127.0.0.1, localhost)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Certificate validity in days.")] = 30,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing CA in --out (every issued certificate stops working).")
    ] = False,
) -> None:
    """Create certificates and SuperNode keys for a trial federation (use your institution's PKI in production)."""
    from wsiseg.cli._console import console
    from wsiseg.errors import ConfigError
    from wsiseg.federated.flower.certificates import make_trial_certs

    existing = [p for p in (out / "ca.key", out / "ca.crt") if p.exists()]
    if existing and not force:
        msg = (f"{existing[0]} already exists: a new CA would invalidate every certificate and node key issued "
               f"from it; choose another --out, or pass --force to replace it")  # fmt: skip
        raise ConfigError(msg)
    hosts = host or ["127.0.0.1", "localhost"]
    certs = make_trial_certs(out, sites, hosts=hosts, days=days)
    console.print(
        f"CA: {certs.ca_cert} (keep {certs.root / 'ca.key'} offline; it is not needed to run)",
        highlight=False,
        markup=False,
    )
    console.print(f"server: copy {certs.server_dir}/ to the server; `wsiseg fed-server --certs {certs.server_dir}`",
                  highlight=False, markup=False)  # fmt: skip
    for site, folder in certs.site_dirs.items():
        console.print(f"site {site}: copy {folder}/ to that site only; `wsiseg fed-client --certs {folder.name}/`",
                      highlight=False, markup=False)  # fmt: skip
    console.print(f"server certificate valid for: {', '.join(hosts)}; {days} days", highlight=False, markup=False)
