"""bench/ports.py: ports for servers other processes start, safe with several test processes at once."""

from __future__ import annotations

import socket

import pytest

from bench import ports


def test_free_ports_come_from_below_the_ephemeral_range_and_never_twice() -> None:
    # The ephemeral range is what bind(0) and outgoing connections draw from: a port from it can be taken
    # before the server it was meant for binds it (a chaos test's web component found its port in use).
    low = ports._ephemeral_low()
    given = [ports.free_port() for _ in range(50)]
    assert all(1024 <= p < low for p in given), given
    assert len(set(given)) == len(given)
    with socket.socket() as s:
        s.bind(("127.0.0.1", given[0]))  # free indeed


def test_each_xdist_worker_draws_from_its_own_block(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        block = ports._block()
        assert block is not None
        port = ports.free_port()
        assert port in block
        blocks.append(set(block))
    assert not (blocks[0] & blocks[1]) and not (blocks[1] & blocks[2]) and not (blocks[0] & blocks[2])


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    block = ports._block()
    assert block is not None
    held = []
    try:
        for port in block[:-1]:  # all but one port of the block listening: only that one may come back
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        assert ports.free_port() not in {s.getsockname()[1] for s in held}
    finally:
        for s in held:
            s.close()
