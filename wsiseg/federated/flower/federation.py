"""The two long-running roles of a multi-site run, as used by ``wsiseg fed-server`` and ``wsiseg fed-client``.

:func:`run_server` starts the SuperLink, registers the sites' public node keys under their names, submits
the wsiseg Flower app with ``flwr run`` and waits for it; :func:`start_site` starts one site's SuperNode.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wsiseg.errors import ConfigError, WsisegError
from wsiseg.federated.flower import launch
from wsiseg.federated.flower.server_loop import ServerSpec
from wsiseg.federated.strategies import FedAvg
from wsiseg.fileio import atomic_write_text, private_dir

__all__ = ["ServerHandle", "SiteOptions", "run_server", "start_site"]


@dataclass
class ServerHandle:
    """The processes of a running server (for callers that must stop them)."""

    superlink: subprocess.Popen[bytes] | None = None
    flwr_run: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop ``flwr run`` and the SuperLink (and their children)."""
        launch.stop(self.flwr_run)
        launch.stop(self.superlink)


def _site_keys(keys_dir: Path | None, sites: list[str]) -> dict[str, Path]:
    if keys_dir is None:
        return {}
    keys = {s: keys_dir / f"{s}.pub" for s in sites}
    missing = [str(p) for p in keys.values() if not p.is_file()]
    if missing:
        msg = f"no public node key for {missing}; run `wsiseg fed-certs` or give --site-keys DIR with <site>.pub files"
        raise ConfigError(msg)
    return keys


def run_server(
    spec: ServerSpec,
    *,
    host: str,
    port: int,
    tls: launch.Tls,
    site_keys: Path | None,
    handle: ServerHandle | None = None,
    timeout: float | None = None,
    say: Callable[[str], None] = print,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Run the SuperLink and the wsiseg ServerApp until the federated run ends.

    Args:
        spec: The run (its ``run_dir`` receives ``flower/`` with the SuperLink state, logs and app folder).
        host: Address the SuperLink listens on (``0.0.0.0`` for all interfaces).
        port: Its one port (Fleet, Control and Runtime APIs).
        tls: CA, certificate and key; all ``None`` for ``--insecure`` (loopback only).
        site_keys: Folder of ``<site>.pub`` node keys to register (SuperNode authentication); required with TLS.
        handle: Filled with the started processes, so a caller can stop them from another thread.
        timeout: Give up after this many seconds.
        say: Progress lines.
        on_ready: Called once the SuperLink listens and the site keys are registered.

    Returns:
        0 when the run finished (``result.json`` written by the ServerApp), else non-zero.

    Raises:
        ConfigError: Missing keys, or TLS without node keys.
        WsisegError: The SuperLink does not start or a key cannot be registered.
    """
    launch.check_insecure(host, tls.insecure)
    if not tls.insecure and site_keys is None:
        msg = "TLS runs authenticate SuperNodes: give --site-keys DIR (from `wsiseg fed-certs`)"
        raise ConfigError(msg)
    keys = _site_keys(site_keys, spec.sites)
    run_dir = private_dir(spec.run_dir)  # resume state, seeds and per-round logs: owner-only
    work = run_dir / "flower"
    work.mkdir(parents=True, exist_ok=True)
    spec_path = atomic_write_text(run_dir / "server-spec.json", json.dumps(dataclasses.asdict(spec), indent=2),
                                  private=True)  # fmt: skip
    env = launch.flower_env(work / "flwr-home")
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    launch.write_connection(work / "flwr-home", f"{connect_host}:{port}", tls)
    app_dir = launch.write_app_dir(work / "app", spec_path)
    _retire_superlink_state(work)
    h = handle if handle is not None else ServerHandle()
    try:
        h.superlink = launch.start_superlink(host, port, tls, state_dir=work, env=env, auth=bool(keys))
        launch.wait_port(connect_host, port, 60.0, h.superlink)
        say(f"SuperLink listening on {host}:{port} ({'insecure' if tls.insecure else 'TLS'}); log {work}")
        for site, key in keys.items():
            launch.register_site(key, site, env)
            say(f"registered node key of site {site}")
        if on_ready is not None:
            on_ready()
        (run_dir / "result.json").unlink(missing_ok=True)
        h.flwr_run = launch.start_flwr_run(app_dir, env, work / "flwr-run.log")
        say(f"run submitted; ServerApp log streams to {work / 'flwr-run.log'}")
        code = h.flwr_run.wait(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        msg = f"federated run did not finish within {timeout} s; see {work / 'flwr-run.log'}"
        raise WsisegError(msg) from err
    finally:
        time.sleep(0.5)
        h.stop()
    if code == 0 and not (run_dir / "result.json").is_file():
        say(f"the ServerApp failed; see {work / 'flwr-run.log'}")
        return 1
    return int(code)


def _retire_superlink_state(work: Path) -> None:
    """Move a previous SuperLink database aside before a (resumed) launch.

    The SuperLink's database only holds Flower's own bookkeeping (nodes, runs); wsiseg's state lives in
    ``checkpoints/last``. A reused database still lists the previous launch's SuperNodes as active, and Flower
    then refuses to activate those same keys again, so every launch starts with a fresh one.
    """
    old = sorted(work.glob("superlink.db*"))
    if not old:
        return
    n = len(list(work.glob("previous-*"))) + 1
    dest = work / f"previous-{n}"
    dest.mkdir()
    for path in old:
        path.rename(dest / path.name)


@dataclass(frozen=True)
class SiteOptions:
    """One site's SuperNode."""

    data: Path
    site: str
    server: str
    state_dir: Path
    ca_cert: Path | None
    node_key: Path | None
    port: int = 9094
    device: str = "auto"
    require_dp: str = FedAvg.mode
    threads: int | None = None
    min_sigma: float = 0.5
    max_clip: float | None = None
    noise_seed: int | None = None
    max_epsilon: float | None = None
    patients: Path | None = None
    heldout: tuple[str, ...] = ()


def start_site(opts: SiteOptions) -> subprocess.Popen[bytes]:
    """Start the site's SuperNode (returns at once; the process runs until stopped).

    Raises:
        ConfigError: Missing dataset, key or CA, or ``--insecure`` towards a non-loopback server.
    """
    if not (opts.data / "manifest.json").is_file():
        msg = f"{opts.data}: no manifest.json; tile the site's slides with `wsiseg tile` first"
        raise ConfigError(msg)
    for label, path in (("--ca", opts.ca_cert), ("--node-key", opts.node_key)):
        if path is not None and not path.is_file():
            msg = f"{label} {path} does not exist; copy the site folder made by `wsiseg fed-certs`"
            raise ConfigError(msg)
    private_dir(opts.state_dir)
    node_cfg = launch.write_node_config(opts.state_dir / "node-config.toml", {
        "data": opts.data.resolve().as_posix(), "site": opts.site,
        "state-dir": opts.state_dir.resolve().as_posix(), "device": opts.device, "require-dp": opts.require_dp,
        "min-sigma": repr(float(opts.min_sigma)), "max-clip": "" if opts.max_clip is None else repr(opts.max_clip),
        "noise-seed": "" if opts.noise_seed is None else str(int(opts.noise_seed)),
        "max-epsilon": "" if opts.max_epsilon is None else repr(float(opts.max_epsilon)),
        "patients": "" if opts.patients is None else opts.patients.resolve().as_posix(),
        "heldout": json.dumps(list(opts.heldout)),
    })  # fmt: skip
    env = launch.flower_env(opts.state_dir / "flwr-home")
    if opts.threads:
        env.update({"OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)})
    return launch.start_supernode(opts.server, opts.port, node_config=node_cfg, tls_ca=opts.ca_cert,
                                  key=opts.node_key, env=env, log=opts.state_dir / "supernode.log")  # fmt: skip
