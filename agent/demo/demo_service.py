"""A small HTTP service that answers health checks and misbehaves on request.

It is the test dummy for the supervisor: every failure mode the agent must notice and heal can be
triggered from outside, either over HTTP or through a control file.

Routes:
    GET  /health        200 {"status": "ok"}
    POST /crash         answers 200, then exits with code 3
    POST /hang          answers 200; from then on every request (including /health) is accepted
                        on the TCP level but never answered, while the process stays alive
    POST /exit?code=N   answers 200, then exits with code N (0-255)

Control file (``--control-file PATH``, checked every 100 ms; the file is never modified):
    crash               exit with code 3
    hang                hang as after POST /hang
    exit N              exit with code N

Signals: SIGTERM exits 0 promptly (after writing ``stop <name>`` to ``--record``), unless
``--ignore-sigterm`` is given, in which case only a log line is written and the process keeps
running until SIGKILL.

Run as ``python -m agent.demo.demo_service [options]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.demo._http import Server, Terminated, raise_terminated, serve
from agent.demo._log import setup_logging

log = logging.getLogger("demo_service")

CRASH_EXIT_CODE = 3
CRASH_AFTER_EXIT_CODE = 1
CONTROL_POLL_SECONDS = 0.1

# Set once the service has been told to hang; never cleared.
HUNG = threading.Event()
# Never set: hung request threads wait on it forever.
_NEVER = threading.Event()


def default_port() -> int:
    raw = os.environ.get("PORT", "")
    return int(raw) if raw.strip() else 8080


def record(path: Path | None, line: str) -> None:
    """Append one line to the record file and make it durable before returning."""
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def exit_now(code: int, reason: str) -> None:
    """Leave immediately with `code`, skipping cleanup (this is a simulated failure)."""
    log.warning("exiting with code %d: %s", code, reason)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def start_hang(reason: str) -> None:
    if not HUNG.is_set():
        log.warning("hanging from now on (%s): connections are accepted but never answered", reason)
        HUNG.set()


class Handler(BaseHTTPRequestHandler):
    server_version = "demo_service/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _hang_if_told(self) -> None:
        if HUNG.is_set():
            # Read the request (already done by the caller) and never answer.
            _NEVER.wait()

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _drain_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)

    def do_GET(self) -> None:
        self._hang_if_told()
        path = urlsplit(self.path).path
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, {"error": f"no route GET {path}"})

    def do_POST(self) -> None:
        self._drain_body()
        self._hang_if_told()
        url = urlsplit(self.path)
        if url.path == "/crash":
            self._send_json(200, {"status": "crashing", "exit_code": CRASH_EXIT_CODE})
            exit_now(CRASH_EXIT_CODE, "POST /crash")
        elif url.path == "/hang":
            self._send_json(200, {"status": "hanging"})
            start_hang("POST /hang")
        elif url.path == "/exit":
            raw = parse_qs(url.query).get("code", ["0"])[0]
            try:
                code = int(raw)
            except ValueError:
                code = -1
            if not 0 <= code <= 255:
                self._send_json(400, {"error": f"code must be an integer 0-255, got {raw!r}"})
                return
            self._send_json(200, {"status": "exiting", "exit_code": code})
            exit_now(code, "POST /exit")
        else:
            self._send_json(404, {"error": f"no route POST {url.path}"})


def watch_control_file(path: Path) -> None:
    """Poll `path` every 100 ms and act on `crash`, `hang` or `exit N` (runs in a daemon thread)."""
    while True:
        try:
            content = path.read_text(encoding="utf-8").strip()
        except OSError:
            content = ""
        words = content.split()
        if words and words[0] == "crash":
            exit_now(CRASH_EXIT_CODE, f"control file {path} says crash")
        elif words and words[0] == "hang":
            start_hang(f"control file {path}")
        elif len(words) == 2 and words[0] == "exit" and words[1].isdigit() and int(words[1]) <= 255:
            exit_now(int(words[1]), f"control file {path} says exit")
        time.sleep(CONTROL_POLL_SECONDS)


def spawn_child(pid_file: Path | None) -> subprocess.Popen[bytes]:
    """Start a long-sleeping grandchild in our process group and announce its pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(1000)"],
        stdin=subprocess.DEVNULL,
    )
    print(f"child {child.pid}", flush=True)
    if pid_file is not None:
        tmp = pid_file.with_name(pid_file.name + ".tmp")
        tmp.write_text(f"{child.pid}\n", encoding="utf-8")
        tmp.replace(pid_file)
    return child


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.demo_service",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Routes: GET /health, POST /crash (exit 3), POST /hang, POST /exit?code=N.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port(),
                        help="TCP port to listen on; 0 picks a free one (default: env PORT or 8080)")
    parser.add_argument("--name", default=os.environ.get("AGENT_COMPONENT") or "demo_service",
                        help="name written to --record (default: env AGENT_COMPONENT or demo_service)")
    parser.add_argument("--record", type=Path, metavar="FILE",
                        help="append 'start <name>' once listening and 'stop <name>' on SIGTERM to FILE "
                             "(each line flushed and fsynced)")
    parser.add_argument("--control-file", type=Path, metavar="PATH",
                        help="check PATH every 100 ms: 'crash' exits 3, 'hang' stops answering, "
                             "'exit N' exits N; the file is only read, never changed")
    parser.add_argument("--ignore-sigterm", action="store_true",
                        help="log and otherwise ignore SIGTERM, so only SIGKILL stops the process")
    parser.add_argument("--crash-after", type=float, metavar="SECONDS",
                        help="exit with code 1 this many seconds after start")
    parser.add_argument("--spawn-child", action="store_true",
                        help="start one long-sleeping Python grandchild in the same process group, print "
                             "'child <pid>' to stdout; it is deliberately left running when this "
                             "process exits, so a supervisor's process-group cleanup can be tested")
    parser.add_argument("--pid-file", type=Path, metavar="PATH",
                        help="with --spawn-child: also write the grandchild's pid to PATH")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    def ignore_sigterm(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM received and ignored (--ignore-sigterm)")

    def start() -> Server:
        server = Server((args.host, args.port), Handler)
        host, port = server.server_address[:2]
        log.info("listening on http://%s:%s (name %s)", host, port, args.name)
        record(args.record, f"start {args.name}")

        if args.control_file is not None:
            threading.Thread(target=watch_control_file, args=(args.control_file,),
                             name="control-file", daemon=True).start()
        if args.crash_after is not None:
            timer = threading.Timer(args.crash_after, exit_now,
                                    args=(CRASH_AFTER_EXIT_CODE, f"--crash-after {args.crash_after}"))
            timer.daemon = True
            timer.start()
        if args.spawn_child:
            spawn_child(args.pid_file)
        return server

    def on_stop(stop: BaseException) -> None:
        if isinstance(stop, Terminated):  # Ctrl-C leaves quietly, without a stop record
            log.info("SIGTERM received, stopping")
            record(args.record, f"stop {args.name}")

    return serve(start, on_stop, ignore_sigterm if args.ignore_sigterm else raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
