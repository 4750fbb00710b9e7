"""Request and response bodies for the JSON routes: bounded reads, JSON parsing with a clear message,
and the answers every route shares (the JSON encoder, 4xx with a message, 503 with Retry-After)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope


class TooLarge(Exception):
    """The request body exceeds the limit."""


_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode
_JSON_TYPE = (b"content-type", b"application/json")


class Json(JSONResponse):
    """Starlette's JSONResponse, the same bytes, from one encoder (json.dumps with arguments builds one per call)."""

    def render(self, content: Any) -> bytes:
        return _ENCODE(content).encode("utf-8")

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        if headers is None and self.status_code >= 200 and self.status_code not in (204, 304):
            # Most of the webhook's answers: the two headers Starlette sets, without its general case.
            self.raw_headers = [(b"content-length", str(len(self.body)).encode()), _JSON_TYPE]
            return
        super().init_headers(headers)


def retry_later(why: str) -> JSONResponse:
    """503 with Retry-After: nothing was done and nothing recorded (no dedupe key), so a retry acts."""
    return Json({"error": f"{why}; retry"}, status_code=503, headers={"Retry-After": "5"})


def error(code: int, message: str, **extra: Any) -> JSONResponse:
    """`{"error": message, **extra}` with that status (401 with WWW-Authenticate)."""
    headers = {"WWW-Authenticate": 'Bearer realm="agent"'} if code == 401 else None
    return Json({"error": message, **extra}, status_code=code, headers=headers)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_limited(content_length: str | None, receive: Receive, limit: int) -> bytes:
    """`read_limited` for an ASGI app: the body from `receive`, ClientDisconnect if the client goes first."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise TooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect


async def optional_json(request: Request, limit: int) -> Any:
    """The JSON body, `{}` when there is none; TooLarge past `limit`, ValueError when it is not JSON."""
    raw = await read_limited(request, limit)
    return parse_json(raw) if raw.strip() else {}


def header(scope: Scope, name: bytes) -> str | None:
    """The first header of that (lower-case) name, as Starlette's `request.headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def parse_json(raw: bytes) -> Any:
    """JSON or ValueError with line and column."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    except RecursionError:
        # json's C decoder recurses once per `[`/`{`; a body of nested brackets hits the limit.
        raise ValueError("invalid JSON: nested too deeply") from None


def validation_message(exc: ValidationError) -> list[str]:
    """The first 20 of a validation error's problems, each as `field.path: message`."""
    out = []
    for err in exc.errors(include_url=False)[:20]:
        path = ".".join(str(p) for p in err["loc"]) or "(body)"
        out.append(f"{path}: {err['msg']}")
    return out
