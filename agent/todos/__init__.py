"""The embedded todo store (SQLite, or PostgreSQL shared by hosts): the row validator, claims, leases and
fencing. Below observe/ (the backlog reads it) and the demo's workers."""
