"""Todo stores: SQLite (embedded, the default) and PostgreSQL (shared by hosts), one interface (base.py)."""

from agent.config.dsn import dsn_problem, is_postgres, redact
from agent.todos.base import (
    DEFAULT_LEASE,
    Finish,
    StoreError,
    Todo,
    TodoStore,
)
from agent.todos.opening import open_store

__all__ = ["DEFAULT_LEASE", "Finish", "StoreError", "Todo", "TodoStore", "dsn_problem", "is_postgres",
           "open_store", "redact"]
