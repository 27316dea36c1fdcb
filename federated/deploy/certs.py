"""Certificates for a TLS SuperLink and authentication keys for SuperNodes, written with private modes."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA certificate the clients trust, the server's certificate and its private key."""

    ca: Path
    certificate: Path
    key: Path


def make_certificates(folder: str | os.PathLike, hosts: Sequence[str] = LOOPBACK, *, days: int = 30) -> Certificates:
    """A fresh CA (its key is discarded) and a server certificate whose SANs are ``hosts``.

    Writes ``ca.crt``, ``server.pem`` and ``server.key`` (mode 0600) into
    ``folder`` (created with mode 0700 if absent); refuses to overwrite any
    of them. A host that parses as an IP address becomes an IP SAN, any
    other a DNS SAN.
    """
    if isinstance(hosts, str) or not hosts or any(not isinstance(h, str) or not h.strip() for h in hosts):
        raise ValueError(f"hosts={hosts!r}: give a list of at least one non-empty host name or IP address")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days={days!r}: must be an integer >= 1")
    out = Path(folder)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = Certificates(out / "ca.crt", out / "server.pem", out / "server.key")
    existing = [str(p) for p in (files.ca, files.certificate, files.key) if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {existing}: choose an empty folder")

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distillmem deployment CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans = [_san(h.strip()) for h in hosts]
    server = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0].strip())]), ca_name, server_key.public_key(), now, days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_new(files.ca, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(files.certificate, server.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(
        files.key,
        server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    return files


def make_node_key(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (NIST P-384, OpenSSH format): (private 0600, public ``.pub``)."""
    out = Path(folder)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write_new(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), 0o600)
    _write_new(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH), 0o644)
    return private, public


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    # Back-dated by a minute so that a slightly slow clock on a node does not reject a fresh certificate.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (a private key is never readable by others), never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it
