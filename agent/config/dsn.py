"""Connection strings at the config boundary. PostgreSQL: which `--db` values name it, why a dsn is refused
(a password in it), and a form safe to print; psycopg's parser (libpq's rules) does the reading. Redis: why
a redis:// URL is refused (a password in it, or not a URL the client reads)."""

from __future__ import annotations

import re

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# A libpq key=value connection string starts with one of these keys (a file path practically never does).
_CONNINFO = re.compile(r"^\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|options)\s*=")


def is_postgres(db: str) -> bool:
    """True when `db` names PostgreSQL (a postgresql:// URL or a key=value dsn), False for a SQLite path."""
    return db.startswith(POSTGRES_SCHEMES) or bool(_CONNINFO.match(db))


def dsn_problem(dsn: str) -> str | None:
    """Why a PostgreSQL dsn is refused (a password in it, or unparsable), or None."""
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError, with libpq's own message
        return f"is not a valid PostgreSQL connection string: {str(exc).strip()}"
    if params.get("password"):
        return ("must not carry a password (it would show in process lists, logs and configs): put it in a "
                "passfile (the source's `passfile`, or $PGPASSFILE, default ~/.pgpass) or $PGPASSWORD")
    return None


def redact(dsn: str) -> str:
    """A dsn safe to print: any password replaced (a SQLite path as it is)."""
    from psycopg import conninfo

    if not is_postgres(dsn) and "=" not in dsn:
        return dsn

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable dsn>"
    if "password" not in params:
        return dsn
    params["password"] = "***"
    return conninfo.make_conninfo("", **params)


REDIS_SCHEMES = ("redis", "rediss")
_REDIS_PASSWORD = ("must not carry a password (it would show in process lists, logs and configs): put it in a "
                   "file named by the source's `password_file` (mode 0600) or in an environment variable named "
                   "by `password_env`")


def redis_url_problem(url: str) -> str | None:
    """Why a Redis URL is refused (a password in it, another scheme, no host, a bad port or database), or None.

    The message never repeats the URL: it may hold the password it refuses.
    """
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in REDIS_SCHEMES:
        return "must start with redis:// or rediss:// (TLS)"
    if parts.password is not None or "password" in {k.lower() for k in parse_qs(parts.query)}:
        return _REDIS_PASSWORD
    if parts.query or parts.fragment:
        # redis-py's from_url lets query options beat the source's own settings (?socket_timeout=3600
        # would unbound the read; ?socket_timeout=abc fails every read): the source's fields set them.
        return ("must not carry options after `?` (the source's `timeout`, `username`, `password_file` and "
                "`password_env` set them)")
    if not parts.hostname:
        return "must name a host, such as redis://127.0.0.1:6379/0"
    if port == 0:
        return "must name a port from 1 to 65535"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"must end with a database number, such as /0 (got the path {parts.path!r})"
    return None
