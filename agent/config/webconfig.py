"""The web configuration file of Prometheus exporters (exporter-toolkit's `--web.config.file`), read as is.

A node_exporter user already has one: `tls_server_config`, `http_server_config`, `basic_auth_users`
(bcrypt hashes), `rate_limit`. Every key is typed and unknown keys are refused, with the field path.
Relative file names resolve against the web config file's own directory, as exporter-toolkit does.

What Python's ssl module cannot do as Go's crypto/tls does is refused with the reason rather than
silently ignored: client certificates requested without verification (`RequestClientCert`,
`RequireAnyClientCert`) and `curve_preferences`. Cipher suites are Go's (IANA) names, mapped to
OpenSSL's for TLS 1.2; TLS 1.3 suites are OpenSSL's defaults, as in Go.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from agent.config.base import Strict
from agent.config.units import Duration
from agent.config.yamlfile import load_yaml

VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
            "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
VERIFY = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
          "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# Go's names (crypto/tls.CipherSuites(), TLS 1.0-1.2) -> OpenSSL's.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    # Go's legacy aliases
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
# exporter-toolkit's client_auth_type values; the two that take a certificate without verifying it are refused.
CLIENT_AUTH_TYPES = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
BCRYPT_HASH = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")
USERNAME = re.compile(r"^[^:\s]+$")  # a Basic credential is `user:password`: no colon in the name
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "X-XSS-Protection",
           "Strict-Transport-Security")


class WebConfigError(Exception):
    """The web config file cannot be used; `problems` holds `(field path, message)` pairs."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {len(problems)} error(s)"] + [f"  {p}: {m}" if p else f"  {m}" for p, m in problems]
        super().__init__("\n".join(lines))


class TLSServerConfig(Strict):
    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None  # PEM inline, instead of cert_file
    key: str | None = Field(None, repr=False)
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_allowed_sans: list[str] = Field(default_factory=list)
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"
    cipher_suites: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = Field(default_factory=list)

    @field_validator("client_auth_type")
    @classmethod
    def _client_auth(cls, value: str) -> str:
        if value in UNVERIFIED_CLIENT_AUTH:
            raise ValueError(f"{value} takes a client certificate without verifying it, which this agent does not "
                             "do (exporter-toolkit's docs call it insecure too); use RequireAndVerifyClientCert, "
                             "or VerifyClientCertIfGiven")
        if value not in CLIENT_AUTH_TYPES:
            raise ValueError(f"unknown client_auth_type; one of {', '.join(CLIENT_AUTH_TYPES)}")
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _ciphers(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in CIPHER_SUITES]
        if unknown:
            raise ValueError(f"unknown cipher suite(s) {', '.join(unknown)}; Go's TLS 1.2 names are accepted, "
                             "e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
        return value

    @field_validator("curve_preferences")
    @classmethod
    def _curves(cls, value: list[str]) -> list[str]:
        if value:
            raise ValueError("not supported by this agent (Python's ssl module cannot order curves); remove it "
                             "to use OpenSSL's defaults (X25519, P-256, P-384, P-521)")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> TLSServerConfig:
        if (self.cert_file is None) == (self.cert is None):
            raise ValueError("exactly one of cert_file and cert is required")
        if (self.key_file is None) == (self.key is None):
            raise ValueError("exactly one of key_file and key is required")
        if self.client_ca_file is not None and self.client_ca is not None:
            raise ValueError("client_ca_file and client_ca are exclusive")
        verifies = self.client_auth_type != "NoClientCert"
        if verifies and self.client_ca_file is None and self.client_ca is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file (or client_ca)")
        if not verifies and (self.client_ca_file is not None or self.client_ca is not None):
            raise ValueError("client_ca_file is set but client_auth_type is NoClientCert: no client certificate "
                             "would be asked for (set client_auth_type: RequireAndVerifyClientCert)")
        if self.client_allowed_sans and self.client_auth_type != "RequireAndVerifyClientCert":
            raise ValueError("client_allowed_sans needs client_auth_type: RequireAndVerifyClientCert")
        if TLS_VERSIONS.index(self.min_version) > TLS_VERSIONS.index(self.max_version):
            raise ValueError(f"min_version {self.min_version} is above max_version {self.max_version}")
        return self

    @property
    def requires_client_cert(self) -> bool:
        return self.client_auth_type == "RequireAndVerifyClientCert"


class HTTPServerConfig(Strict):
    http2: bool = True  # accepted for compatibility; the agent serves HTTP/1.1 (docs/operations.md)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if name not in HEADERS:
                raise ValueError(f"header {name!r} cannot be set; these can: {', '.join(HEADERS)}")
            if name == "X-Frame-Options" and header.lower() not in ("deny", "sameorigin"):
                raise ValueError(f"X-Frame-Options must be deny or sameorigin, got {header!r}")
            if name == "X-Content-Type-Options" and header.lower() != "nosniff":
                raise ValueError(f"X-Content-Type-Options must be nosniff, got {header!r}")
            if "\r" in header or "\n" in header:
                raise ValueError(f"header {name!r} holds a line break")
        return {k: v for k, v in value.items() if v}


class RateLimit(Strict):
    interval: Duration = Field(0.0, ge=0)  # between two requests; 0 disables the limiter
    burst: int = Field(0, ge=0)


class WebConfig(Strict):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, str] = Field(default_factory=dict, repr=False)
    # In exporter-toolkit's sample file: paths served without basic auth (e.g. /-/healthy for a probe).
    basic_auth_excluded_paths: list[str] = Field(default_factory=list)
    rate_limit: RateLimit = RateLimit()

    @field_validator("basic_auth_users")
    @classmethod
    def _users(cls, value: dict[str, str]) -> dict[str, str]:
        for user, hashed in value.items():
            if not USERNAME.match(str(user)):
                raise ValueError(f"user name {user!r} must be non-empty, without ':' or spaces")
            if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
                raise ValueError(f"the password of {user!r} must be a bcrypt hash ($2y$10$... from "
                                 "`htpasswd -nBC 10 \"\" | tr -d ':\\n'` or `agent tls hash-password`)")
        return value

    @field_validator("basic_auth_excluded_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must be an absolute URL path (starting with /)")
        return value

    @property
    def tls(self) -> bool:
        return self.tls_server_config is not None

    @property
    def authenticates(self) -> bool:
        """Every request to the routes without credentials of their own needs a password or a client certificate."""
        tls = self.tls_server_config
        return bool(self.basic_auth_users) or (tls is not None and tls.requires_client_cert)


def _resolve(tls: dict[str, Any], base: Path) -> None:
    for key in ("cert_file", "key_file", "client_ca_file"):
        value = tls.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            tls[key] = str(base / value)


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (exporter-toolkit's web config has no such key)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append((where, msg))
    return out


def load_web_config(path: Path) -> WebConfig:
    """Read and validate a web config file; WebConfigError says what is wrong and where.

    The files it names are checked to be readable here; whether they hold a usable certificate and
    key is checked when the TLS context is built (agent/http/websecurity.py), before anything uses it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(path, [("", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise WebConfigError(path, [("", "not UTF-8 text")]) from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(path, [("", f"not valid YAML: {exc}")]) from None
    if raw is None:
        raw = {}  # an empty file is valid: plain HTTP, no authentication (exporter-toolkit agrees)
    if not isinstance(raw, dict):
        raise WebConfigError(path, [("", f"must be a mapping, got {type(raw).__name__}")])
    tls = raw.get("tls_server_config")
    if isinstance(tls, dict):
        tls = dict(tls)
        _resolve(tls, path.parent)
        raw = {**raw, "tls_server_config": tls}
    try:
        config = WebConfig.model_validate(raw)
    except ValidationError as exc:
        raise WebConfigError(path, _problems(exc)) from None
    problems = []
    if config.tls_server_config is not None:
        for key in ("cert_file", "key_file", "client_ca_file"):
            file = getattr(config.tls_server_config, key)
            if file is None:
                continue
            try:
                with open(file, "rb") as f:
                    f.read(1)
            except OSError as exc:
                problems.append((f"tls_server_config.{key}", f"cannot read {file}: {exc.strerror or exc}"))
    if problems:
        raise WebConfigError(path, problems)
    return config


def _pem_file(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def server_context(tls: TLSServerConfig, source: Path) -> ssl.SSLContext:
    """The server's TLS context; WebConfigError when the certificate, key or CA cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = VERSIONS[tls.min_version]
        ctx.maximum_version = VERSIONS[tls.max_version]
        with tempfile.TemporaryDirectory(prefix="agent-tls-") as tmp:  # inline PEM: load_cert_chain reads files
            cert = str(tls.cert_file) if tls.cert_file else _pem_file(tmp, "cert.pem", tls.cert or "")
            key = str(tls.key_file) if tls.key_file else _pem_file(tmp, "key.pem", tls.key or "")
            ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise WebConfigError(source, [("tls_server_config", f"cannot use the certificate and key: {exc}")]) from None
    try:
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        elif tls.client_ca is not None:
            ctx.load_verify_locations(cadata=tls.client_ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise WebConfigError(source, [("tls_server_config.client_ca_file", f"cannot use the CA: {exc}")]) from None
    ctx.verify_mode = VERIFY[tls.client_auth_type]
    if tls.cipher_suites:
        try:
            ctx.set_ciphers(":".join(CIPHER_SUITES[c] for c in tls.cipher_suites))
        except ssl.SSLError as exc:
            raise WebConfigError(source, [("tls_server_config.cipher_suites", str(exc))]) from None
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def read_web_config(path: Path) -> tuple[WebConfig, ssl.SSLContext | None]:
    """The web config file and the TLS context it makes (None without tls_server_config)."""
    config = load_web_config(path)
    tls = config.tls_server_config
    return config, server_context(tls, path) if tls is not None else None
