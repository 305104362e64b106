"""Trial certificates for a multi-site run: a CA, the SuperLink's TLS certificate, one node key per site.

Layout written by :func:`make_trial_certs` (``wsiseg fed-certs``)::

    OUT/ca.crt, OUT/ca.key              the trial CA (keep ca.key offline; only ca.crt is distributed)
    OUT/server/server.pem, server.key   SuperLink TLS certificate (SAN = the given hosts) and key
    OUT/server/ca.crt                   copy for the server
    OUT/server/site-keys/<site>.pub     the sites' public node keys, registered by ``wsiseg fed-server``
    OUT/sites/<site>/node.key(.pub)     the site's SuperNode key pair (OpenSSH, ECDSA P-384)
    OUT/sites/<site>/ca.crt             the CA the site uses to verify the SuperLink

Each ``sites/<site>`` folder goes to that site only; ``server`` to the server. Private keys are written
owner-only (0600). Keys are ECDSA on a NIST curve because Flower's SuperNode authentication accepts only those.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsiseg.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["TrialCerts", "make_trial_certs"]

_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class TrialCerts:
    """Where :func:`make_trial_certs` wrote everything."""

    root: Path
    ca_cert: Path
    server_dir: Path
    site_dirs: dict[str, Path]


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(cn: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for h in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            entries.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(entries)


def _cert(subject: str, issuer: str, pub: Any, key: Any, days: int, *, ca: bool, hosts: list[str]) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(pub)
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )  # fmt: skip
    if ca:
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False)  # fmt: skip
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(_san(hosts), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)


def make_trial_certs(out: str | Path, sites: list[str], *, hosts: list[str], days: int = 30) -> TrialCerts:
    """Create a CA, a SuperLink certificate for ``hosts`` and an OpenSSH ECDSA key pair per site.

    Args:
        out: Output folder (created; existing files are overwritten).
        sites: Site names (letters, digits, ``-_.``), unique.
        hosts: Names and IP addresses clients use to reach the SuperLink (the certificate's SAN).
        days: Validity of the certificates.

    Returns:
        The written paths.

    Raises:
        ConfigError: Bad or duplicate site names, no hosts, or days < 1.
    """
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    bad = [s for s in sites if not _SITE_RE.match(s)]
    if not sites or bad or len(set(sites)) != len(sites):
        msg = f"site names must be unique and use letters, digits, '-', '_', '.': got {sites}"
        raise ConfigError(msg)
    if not hosts or days < 1:
        msg = f"give at least one --host (the server's name or IP) and --days >= 1, got {hosts} and {days}"
        raise ConfigError(msg)
    root = Path(out)
    pem, pkcs8, none = ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_pem = _cert("wsiseg trial CA", "wsiseg trial CA", ca_key.public_key(), ca_key, days, ca=True, hosts=[])
    _write(root / "ca.crt", ca_pem)
    _write(root / "ca.key", ca_key.private_bytes(pem, pkcs8, none), private=True)
    srv_key = ec.generate_private_key(ec.SECP384R1())
    server_dir = root / "server"
    _write(server_dir / "server.pem", _cert(hosts[0], "wsiseg trial CA", srv_key.public_key(), ca_key, days,
                                            ca=False, hosts=hosts))  # fmt: skip
    _write(server_dir / "server.key", srv_key.private_bytes(pem, pkcs8, none), private=True)
    _write(server_dir / "ca.crt", ca_pem)
    site_dirs = {}
    for site in sites:
        key = ec.generate_private_key(ec.SECP384R1())
        pub = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b"\n"
        d = root / "sites" / site
        _write(d / "node.key", key.private_bytes(pem, ser.PrivateFormat.OpenSSH, none), private=True)
        _write(d / "node.key.pub", pub)
        _write(d / "ca.crt", ca_pem)
        _write(server_dir / "site-keys" / f"{site}.pub", pub)
        site_dirs[site] = d
    return TrialCerts(root, root / "ca.crt", server_dir, site_dirs)
