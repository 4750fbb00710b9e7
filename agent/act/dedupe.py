"""The dedupe journal: keys of alerts already acted on, an fsynced append-only file with a TTL and a bound.

A key is a JSON array of its parts (fingerprint, startsAt, action[, step]), so no character inside a
part can make two different alerts share a key. Journals written before that held `a|b|c` strings:
those are honoured, not migrated (the old form cannot be split back into parts): a lookup also tries
the old form of the key, until they expire with the TTL. In memory they are kept as `|a|b|c`, so
they can never equal a new key (which starts with `[`).

Keys are recorded in memory at once, so a concurrent re-delivery is a duplicate; one writer task
appends them in batches (one fsync per batch) off the event loop. An action waits for its batch
(`durable()`); the HTTP response does not. When a batch cannot be written (disk full, read-only),
its action keys are dropped from memory and the waiters learn the error, so nothing acts and the
next delivery of the same alert acts, exactly once, when the disk is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from json.encoder import encode_basestring
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from agent.supervise.state import private

if TYPE_CHECKING:
    from agent.config.settings import WebhookAuth

log = logging.getLogger("agent.dedupe")

JOURNAL_FILE = "dedupe.jsonl"
LEGACY = "|"  # prefix of old-form keys in memory


def dedupe_key(*parts: str) -> str:
    """The key of an alert's parts: a compact JSON array, unambiguous whatever the parts contain.

    Exactly `json.dumps(parts, separators=(",", ":"), ensure_ascii=False)`, built from json's own string
    encoder: a third of the time (the webhook builds three keys per alert).
    """
    if all(type(p) is str for p in parts):
        return "[" + ",".join(map(encode_basestring, parts)) + "]"
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False)


class JournalLine(BaseModel):
    """One line of the journal: `k` the key's parts (a string: the old `a|b|c` form), `t` when (epoch s)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    k: Annotated[list[str], Field(min_length=1, max_length=8)] | Annotated[str, Field(min_length=1, max_length=512)]
    t: FiniteFloat


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


class DedupeStore:
    """Keys of alerts already acted on, kept for `ttl` seconds, at most `max_entries` of them."""

    def __init__(self, path: Path, ttl: float, max_entries: int) -> None:
        self.path = path
        self.ttl = ttl
        self.max_entries = max_entries
        self.keys: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.write_errors = 0  # failed journal writes since start (exported as a counter)
        self.evicted = 0  # keys dropped for the bound before their TTL (exported as a counter)
        self._journal_bytes = 0  # the journal's size as last written (compaction is decided on the loop)
        self._legacy = False  # the journal held keys in the old `a|b|c` form
        self._failing = False  # the last write failed (log once per streak)
        self._forgotten = False  # keys were forgotten: the next flush rewrites the journal without them
        self._pending: list[tuple[str, float, bool]] = []  # key, time, keep in memory if the write fails
        self._next: asyncio.Future[OSError | None] | None = None  # resolves when the pending batch is written
        self._inflight: asyncio.Future[OSError | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._load()

    def configure(self, settings: WebhookAuth) -> None:
        """A reload's `agent.webhook`: the TTL and the bound apply from the next key on."""
        self.ttl = settings.dedupe_ttl
        self.max_entries = settings.dedupe_max_entries

    # --- start-up ---------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read dedupe journal %s: %s; starting with no keys", self.path, exc)
            return
        self._journal_bytes = len(raw)
        now = time.time()
        bad, reason = 0, ""
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = JournalLine.model_validate_json(line)
            except ValidationError as exc:
                bad += 1
                reason = reason or f"line {number}: {_first_error(exc)}"
                continue
            if isinstance(entry.k, str):
                key, self._legacy = LEGACY + entry.k, True
            else:
                key = dedupe_key(*entry.k)
            if now - entry.t < self.ttl:
                self.keys[key] = entry.t
                self.keys.move_to_end(key)
        self._trim()
        self.evicted = 0  # the bound applied to an old journal is no news
        if bad:
            self._set_aside(bad, reason)

    def _set_aside(self, bad: int, reason: str) -> None:
        """Keep the unreadable journal as `.corrupt` for a human and rewrite the readable keys."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
            self._journal_bytes = self._compact(list(self.keys.items()))
        except OSError as exc:
            log.error("dedupe journal %s: %d unreadable line(s) (%s); could not set it aside: %s",
                      self.path, bad, reason, exc)
            return
        log.error("dedupe journal %s: %d unreadable line(s) (first: %s); kept as %s, the %d readable key(s) "
                  "rewritten", self.path, bad, reason, aside, len(self.keys))

    def _trim(self) -> None:
        now = time.time()
        while self.keys:
            at = next(iter(self.keys.values()))
            if now - at >= self.ttl:
                self.keys.popitem(last=False)
            elif len(self.keys) > self.max_entries:
                # Dropped before its TTL: a later delivery of that alert acts again. Counted, so an
                # operator sees when dedupe_max_entries is too small for the alerts of one TTL.
                self.keys.popitem(last=False)
                self.evicted += 1
            else:
                break

    # --- lookups and additions (on the event loop, never blocking) ----------------------------------

    @property
    def pending(self) -> bool:
        """Keys recorded in memory but not yet on disk."""
        return bool(self._pending)

    def seen(self, key: str) -> bool:
        """Whether the key was recorded within the TTL (in its old `a|b|c` form too)."""
        at = self.keys.get(key)
        if at is None and self._legacy and key.startswith("["):
            at = self.keys.get(LEGACY + "|".join(json.loads(key)))
        return at is not None and time.time() - at < self.ttl

    def add(self, key: str, *, keep_on_failure: bool = False) -> None:
        """Record a key in memory now; `durable()` then writes it.

        An action's key is dropped again if its write fails (the action does not run, so the next
        delivery must act); a marker that only prevents actions (`keep_on_failure`) stays in memory.
        """
        now = time.time()
        self.keys[key] = now
        self.keys.move_to_end(key)
        self._pending.append((key, now, keep_on_failure))
        self._trim()

    def durable(self) -> asyncio.Future[OSError | None]:
        """A future for the keys added so far: None once they are on disk, else the OSError that stopped it."""
        loop = asyncio.get_running_loop()
        if self._pending:
            if self._next is None:
                self._next = loop.create_future()
            if self._writer is None:
                self._writer = loop.create_task(self._write_batches())
                self._writer.add_done_callback(_log_failure)
            return self._next
        if self._inflight is not None:
            return self._inflight
        done: asyncio.Future[OSError | None] = loop.create_future()
        done.set_result(None)
        return done

    def forget(self, key: str) -> None:
        """Drop the key of an action that was never carried out (the agent stopped first); the journal is
        rewritten without it at the next `flush`, so the next delivery of its alert acts, after a restart too."""
        if self.keys.pop(key, None) is not None:
            self._forgotten = True

    async def flush(self) -> OSError | None:
        """Write every key added so far (and drop forgotten ones from the file); None when done, else the
        error (also logged and counted)."""
        error = await asyncio.shield(self.durable())
        if error is None and self._forgotten:
            self._forgotten = False
            try:
                self._journal_bytes = await asyncio.to_thread(self._compact, list(self.keys.items()))
            except OSError as exc:
                self.write_errors += 1
                log.error("cannot rewrite dedupe journal %s without the keys of actions not carried out (%s): "
                          "their alerts stay duplicates until dedupe_ttl", self.path, exc)
                return exc
        return error

    # --- the writer --------------------------------------------------------------------------------

    async def _write_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                done, self._next = self._next or loop.create_future(), None
                self._inflight = done
                error: OSError | None = None
                data = "".join(_line(k, t) for k, t, _ in batch).encode()
                # Compaction rewrites the keys in memory: they are copied here, on the loop that changes them.
                compact = list(self.keys.items()) if self._journal_bytes + len(data) > self._limit else None
                try:
                    self._journal_bytes = await asyncio.to_thread(self._append, data, compact)
                except OSError as exc:
                    error = exc
                except Exception as exc:  # a bug must not pass for a written batch either
                    log.exception("dedupe journal %s: writing failed", self.path)
                    error = OSError(f"{type(exc).__name__}: {exc}")
                finally:
                    if not done.done():
                        done.set_result(error)
                    self._inflight = None
                self._after_write(batch, error)
        finally:
            self._writer = None

    def _after_write(self, batch: list[tuple[str, float, bool]], error: OSError | None) -> None:
        if error is None:
            if self._failing:
                log.warning("dedupe journal %s writable again", self.path)
                self._failing = False
            return
        self.write_errors += 1
        dropped = 0
        for key, at, keep in batch:
            if not keep and self.keys.get(key) == at:
                del self.keys[key]
                dropped += 1
        if not self._failing:
            log.error("cannot write dedupe journal %s (%s): %d action key(s) dropped, not acted on; "
                      "the next delivery of those alerts acts", self.path, error, dropped)
        self._failing = True

    @property
    def _limit(self) -> int:
        return 200 * max(self.max_entries, 100)

    def _append(self, data: bytes, compact: list[tuple[str, float]] | None) -> int:
        """Append and fsync, then compact if asked (in a worker thread); returns the journal's size.

        A failed append is cut off again, so no torn line is left for the next one to follow.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            private(fd)
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data  # a torn last line (a crash, or left when it could not be set aside)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        size = start + len(data)
        if compact is not None:
            try:
                size = self._compact(compact)
            except OSError as exc:  # the batch itself is on disk: only the clean-up failed
                log.error("cannot compact dedupe journal %s: %s", self.path, exc)
        return size

    def _compact(self, keys: list[tuple[str, float]]) -> int:
        """Rewrite the journal with these keys only (temp + fsync + rename); returns its size."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = "".join(_line(k, t) for k, t in keys).encode()
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # a leftover keeps its mode through O_TRUNC: this one is made 0600
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return len(data)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("dedupe journal writer failed", exc_info=task.exception())


def _line(key: str, at: float) -> str:
    # New keys are written as their parts (a list); an old-form key is written back as the string it was.
    parts = key[len(LEGACY):] if key.startswith(LEGACY) else json.loads(key)
    return json.dumps({"k": parts, "t": at}, ensure_ascii=False) + "\n"
