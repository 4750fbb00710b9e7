"""`agent tls init DIR`: a private CA, a server and a client certificate, and a web config, for a first try.

For testing only: the CA key sits next to the certificates it signs and nothing revokes them. For
production use your organisation's CA (or cert-manager, Vault, step-ca) and point the web config at
the files it issues. Keys are written 0600; nothing is overwritten without --force.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "web-config.yml",
         "metrics.password")
BCRYPT_COST = 10  # exporter-toolkit's documented example cost; the agent caches a checked credential


@dataclass
class Made:
    directory: Path
    hosts: list[str]
    user: str
    expires: datetime.datetime


def hash_password(password: str, cost: int = BCRYPT_COST) -> str:
    """A bcrypt hash for basic_auth_users (what `htpasswd -nBC 10` makes)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _issue(name: str, key: ec.EllipticCurvePrivateKey, ca: Issuer | None, days: int,
           usage: x509.ObjectIdentifier | None, sans: x509.SubjectAlternativeName | None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orchestrator-agent (testing only)")])
    issuer_cert, issuer_key = ca if ca is not None else (None, key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False) if usage else builder
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def default_hosts() -> list[str]:
    hosts = ["localhost", "127.0.0.1", "::1"]
    name = socket.gethostname()
    if name and name not in hosts:
        hosts.append(name)
    return hosts


def init(directory: Path, hosts: list[str], days: int = 365, user: str = "prometheus", force: bool = False) -> Made:
    """Write the files of FILES into `directory`; FileExistsError names the first one present (without force)."""
    directory.mkdir(parents=True, exist_ok=True)
    present = [name for name in FILES if (directory / name).exists()]
    if present and not force:
        raise FileExistsError(f"{directory / present[0]} exists (--force replaces every file of the set)")
    ca_key, server_key, client_key = _key(), _key(), _key()
    # A name of its own: two test CAs trusted side by side must not be mistaken for each other.
    ca_cert = _issue(f"orchestrator-agent test CA {secrets.token_hex(4)}", ca_key, None, days, None, None)
    server_cert = _issue(hosts[0], server_key, (ca_cert, ca_key), days, ExtendedKeyUsageOID.SERVER_AUTH, _san(hosts))
    client_cert = _issue(user, client_key, (ca_cert, ca_key), days, ExtendedKeyUsageOID.CLIENT_AUTH,
                         x509.SubjectAlternativeName([x509.DNSName(user)]))
    password = secrets.token_urlsafe(24)
    for name, cert in (("ca.crt", ca_cert), ("server.crt", server_cert), ("client.crt", client_cert)):
        _write(directory / name, cert.public_bytes(serialization.Encoding.PEM), private=False)
    for name, key in (("ca.key", ca_key), ("server.key", server_key), ("client.key", client_key)):
        _write(directory / name, _pem(key), private=True)
    _write(directory / "metrics.password", password.encode(), private=True)
    web = (
        "# exporter-toolkit web config made by `agent tls init` - FOR TESTING ONLY (docs/operations.md).\n"
        "# Relative paths resolve against this file's directory.\n"
        "tls_server_config:\n"
        "  cert_file: server.crt\n"
        "  key_file: server.key\n"
        "  # Require a client certificate signed by this CA (then every client, Prometheus and Alertmanager\n"
        "  # included, needs client.crt/client.key or its own):\n"
        "  # client_auth_type: RequireAndVerifyClientCert\n"
        "  # client_ca_file: ca.crt\n"
        "basic_auth_users:\n"
        f"  # the password is in metrics.password (for Prometheus' basic_auth.password_file)\n"
        f"  {user}: {hash_password(password)}\n"
    )
    _write(directory / "web-config.yml", web.encode(), private=True)
    return Made(directory, hosts, user, server_cert.not_valid_after_utc)
