"""Start and stop the Flower processes of a multi-site run (SuperLink, SuperNodes, ``flwr run``).

Everything runs offline: telemetry and update checks are off, runtime dependency installation is disabled
on the SuperLink (and never enabled on SuperNodes), and the Flower app is a folder generated under the run
folder whose components point at the installed ``wsiseg`` package. Each process is started in its own
session, so :func:`stop` ends it and the children it spawned (``flower-superexec``, app processes) and
nothing else.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wsiseg.errors import ConfigError, WsisegError
from wsiseg.fileio import atomic_write_text

__all__ = [
    "Tls",
    "flower_env",
    "free_port",
    "is_loopback",
    "register_site",
    "start_flwr_run",
    "start_superlink",
    "start_supernode",
    "stop",
    "wait_port",
    "write_app_dir",
    "write_connection",
    "write_node_config",
]

CONNECTION = "wsiseg"


@dataclass(frozen=True)
class Tls:
    """TLS material; ``None`` fields mean ``--insecure`` (loopback only)."""

    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def insecure(self) -> bool:
        """No CA given."""
        return self.ca_cert is None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_insecure(host: str, insecure: bool) -> None:
    """Refuse ``--insecure`` anywhere but loopback.

    Raises:
        ConfigError: ``insecure`` with a non-loopback host.
    """
    if insecure and not is_loopback(host):
        msg = f"--insecure is allowed only on loopback (127.0.0.1/localhost), not {host}; use fed-certs for TLS"
        raise ConfigError(msg)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on ``host:port``.

    Raises:
        WsisegError: Timeout, or ``proc`` exited first.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            name = proc.args[0] if isinstance(proc.args, list) else proc.args
            msg = f"{name!s} exited with code {proc.returncode}"
            raise WsisegError(msg)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    msg = f"nothing listens on {host}:{port} after {timeout:g} s"
    raise WsisegError(msg)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: private FLWR_HOME, no telemetry or update check, venv on PATH."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env.update({
        "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1", "PATH": bindir + os.pathsep + env.get("PATH", ""),
    })  # fmt: skip
    return env


def write_app_dir(folder: Path, spec: Path) -> Path:
    """Write the Flower app folder (``pyproject.toml`` only; the code is the installed wsiseg)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "wsiseg-fed"
version = "1.0.0"
description = "wsiseg multi-site federated training"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "wsiseg"

[tool.flwr.app.components]
serverapp = "wsiseg.federated.flower.server_app:app"
clientapp = "wsiseg.federated.flower.client_app:app"

[tool.flwr.app.config]
spec = {_toml_str(spec.resolve().as_posix())}
"""
    (folder / "pyproject.toml").write_text(text, encoding="utf-8")
    return folder


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_connection(flwr_home: Path, address: str, tls: Tls) -> None:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection named ``wsiseg``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f"address = {_toml_str(address)}"]  # fmt: skip
    if tls.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {_toml_str(Path(tls.ca_cert).resolve().as_posix())}")  # type: ignore[arg-type]
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_node_config(path: Path, values: dict[str, str]) -> Path:
    """A node-config TOML file (paths with spaces survive, unlike ``k=v`` strings); owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "".join(f"{k} = {_toml_str(v)}\n" for k, v in values.items()), private=True)


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def start_superlink(host: str, port: int, tls: Tls, *, state_dir: Path, env: dict[str, str],
                    auth: bool = True) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``flower-superlink`` (one port for the Fleet, Control and Runtime APIs)."""
    check_insecure(host, tls.insecure)
    cmd = ["flower-superlink", "--host", host, "--port", str(port), "--isolation", "subprocess",
           "--database", str(state_dir / "superlink.db"), "--disable-runtime-dependency-installation"]  # fmt: skip
    if tls.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
        if auth:
            cmd.append("--enable-supernode-auth")
    return _popen(cmd, env, state_dir / "superlink.log")


def register_site(public_key: Path, name: str, env: dict[str, str], timeout: float = 120.0) -> str:
    """``flwr supernode register KEY wsiseg --name NAME``; returns its output.

    Raises:
        WsisegError: Registration failed.
    """
    cmd = ["flwr", "supernode", "register", str(public_key), CONNECTION, "--name", name]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    text = (out.stdout + out.stderr).lower()
    if "already" in text:  # a resumed server reuses its SuperLink database and its registrations
        return out.stdout
    if out.returncode != 0 or "success" not in out.stdout.lower():
        msg = f"registering site {name} ({public_key}) failed: {(out.stdout + out.stderr).strip()[-400:]}"
        raise WsisegError(msg)
    return out.stdout


def start_supernode(superlink: str, port: int, *, node_config: Path, tls_ca: Path | None, key: Path | None,
                    env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``flower-supernode`` for one site (its local Runtime API on ``127.0.0.1:port``)."""
    cmd = ["flower-supernode", "--superlink", superlink, "--host", "127.0.0.1", "--port", str(port),
           "--isolation", "subprocess", "--node-config", str(node_config)]  # fmt: skip
    if tls_ca is None:
        check_insecure(superlink.rsplit(":", 1)[0], insecure=True)
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(tls_ca)]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return _popen(cmd, env, log)


def start_flwr_run(app_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``flwr run APP wsiseg --stream``: submit the run and stream the ServerApp's log until it ends."""
    return _popen(["flwr", "run", str(app_dir), CONNECTION, "--stream"], env, log)


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """End a process started here and the rest of its session (SIGTERM, then SIGKILL for stragglers)."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.wait(timeout=timeout)
