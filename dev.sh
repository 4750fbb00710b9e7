#!/usr/bin/env bash
# One entry point for the two README commands:
#   ./dev.sh run   [agent run args...]   set up .venv if needed, run the agent on the embedded default
#   ./dev.sh test  [pytest args...]      set up .venv (+ promtool/alertmanager/postgresql when root), ruff, mypy, pytest
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

ensure_venv() {
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
        [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        # The distribution was called `agent` (an unrelated project's name on PyPI) before orchestrator-agent:
        # drop such an install from an older checkout's venv, so one distribution owns bin/agent.
        "$VENV/bin/python" -m pip uninstall -q -y agent >/dev/null 2>&1 || true
        "$VENV/bin/python" -m pip install -q -e '.[dev]'
        touch "$stamp"
    fi
}

have_stack() {
    command -v promtool >/dev/null && command -v prometheus >/dev/null && \
        { command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; } && \
        command -v amtool >/dev/null && have_postgres && [ -x /usr/bin/chromium ] && command -v systemd-analyze >/dev/null && \
        command -v redis-server >/dev/null
}

# Debian keeps the server binaries (initdb, postgres) in /usr/lib/postgresql/<version>/bin, off PATH;
# tests/pgserver.py looks there too. The tests run a private server (never the packaged cluster).
have_postgres() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

ensure_stack() {
    have_stack && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        # Never let the packages' init scripts start daemons listening on 0.0.0.0.
        [ -e /usr/sbin/policy-rc.d ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        apt-get update -qq
        # postgresql: the shared todo queue's tests start a private server from its binaries.
        # chromium: tests/test_status_page.py drives the status page in it (Playwright, no browser download).
        # systemd: tests/test_stack_export.py checks the exported unit with systemd-analyze verify (no init runs).
        # redis-server: the Redis backlog source's and the Celery end-to-end tests run a private server each.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus prometheus-alertmanager postgresql chromium systemd redis-server >/dev/null
    else
        echo "note: promtool/prometheus/alertmanager/postgresql/chromium/systemd-analyze/redis-server not found and not root:" \
             "the stack, PostgreSQL, status page and systemd unit tests will skip (CI=true: fail); install" \
             "Debian's 'prometheus', 'prometheus-alertmanager', 'postgresql', 'chromium', 'systemd' and 'redis-server'" >&2
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    run)
        ensure_venv
        exec "$VENV/bin/agent" run "$@"
        ;;
    test)
        ensure_venv
        ensure_stack
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"
        # One worker per core, each test file on one worker (its servers and fixtures are started once);
        # `./dev.sh test -n 0` runs everything in this process.
        # --durations: the slowest tests in every run, to keep the suite inside its 15-minute budget.
        exec "$VENV/bin/pytest" -n auto --dist loadfile --durations=25 "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [agent run options] | ./dev.sh test [pytest options]" >&2
        exit 2
        ;;
esac
