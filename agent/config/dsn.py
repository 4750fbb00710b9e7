"""PostgreSQL connection strings at the config boundary: which `--db` values name PostgreSQL, why a dsn is
refused (a password in it), and a form safe to print. psycopg's parser (libpq's rules) does the reading."""

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
