"""MLLP limits (issue 15 item 3): one peer must not lock out the others. Before: 64 idle connections from one
address filled every slot for 300 s and the 65th was reset.

Real listener, raw sockets: the greedy peer is 127.0.0.1, the others 127.0.0.2 and 127.0.0.3 (all loopback)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from radtriage.hl7.mllp import Frame, MLLPServer, Peer, PeerAllowList, encode_frame

ANSWER = b"MSH|^~\\&|RADTRIAGE||RIS||20261130080000||ACK|1|P|2.5.1\rMSA|AA|1"


def echo_ack(frame: Frame, peer: Peer) -> bytes:
    return ANSWER


@contextmanager
def listener(**limits: Any) -> Iterator[MLLPServer]:
    server = MLLPServer(echo_ack, "127.0.0.1", 0, idle_timeout=300.0, read_timeout=2.0, **limits)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def idle_connection(stack: ExitStack, port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0)))
    return sock


def is_closed_by_server(sock: socket.socket, wait: float = 1.0) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def exchange(port: int, source: str) -> bytes:
    """Send one message and return the framed answer; b"" when the listener closed or reset the connection."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(source, 0)) as sock:
        try:
            sock.sendall(encode_frame(b"MSH|^~\\&|RIS|HOSP|RADTRIAGE|HOSP|20261130080000||ORM^O01|1|P|2.5.1"))
            while not data.endswith(b"\x1c\r"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            return b""
    return data


def wait_for_connections(server: MLLPServer, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while server.connection_count != count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_one_peer_cannot_take_every_slot() -> None:
    with listener(max_connections=64, max_connections_per_peer=8) as server, ExitStack() as stack:
        greedy = [idle_connection(stack, server.port) for _ in range(70)]
        wait_for_connections(server, 8)
        assert server.connection_count == 8
        assert sum(is_closed_by_server(s, 0.2) for s in greedy[8:20]) == 12  # the rest are closed at once
        assert exchange(server.port, "127.0.0.2") == encode_frame(ANSWER)  # another sender still gets in


def test_a_silent_connection_is_closed_quickly_but_a_talking_one_may_idle() -> None:
    with listener(first_byte_timeout=0.5) as server, ExitStack() as stack:
        silent = idle_connection(stack, server.port)
        talking = idle_connection(stack, server.port)
        talking.sendall(encode_frame(b"MSH|^~\\&|RIS|HOSP|RADTRIAGE|HOSP|20261130080000||ORM^O01|1|P|2.5.1"))
        started = time.monotonic()
        assert is_closed_by_server(silent, wait=3.0)
        assert 0.4 <= time.monotonic() - started < 2.0
        talking.settimeout(2)
        assert talking.recv(4096).startswith(b"\x0b")  # answered, and then kept open (idle_timeout is 300 s)
        assert not is_closed_by_server(talking, wait=1.0)


def test_slots_are_kept_for_reserved_peers() -> None:
    reserved = PeerAllowList.parse("127.0.0.3")
    limits = {"max_connections": 10, "max_connections_per_peer": 0, "reserved_peers": reserved,
              "reserved_connections": 3}  # fmt: skip
    with listener(**limits) as server, ExitStack() as stack:
        for source in ("127.0.0.1", "127.0.0.2"):  # two other peers try to take all 10 slots
            for _ in range(6):
                idle_connection(stack, server.port, source)
        wait_for_connections(server, 7)
        assert server.connection_count == 7
        assert exchange(server.port, "127.0.0.3") == encode_frame(ANSWER)
        assert exchange(server.port, "127.0.0.2") == b""  # not reserved: refused while the others hold 7


@pytest.mark.parametrize("per_peer", [0, 3])
def test_the_per_peer_limit_can_be_turned_off(per_peer: int) -> None:
    with listener(max_connections=6, max_connections_per_peer=per_peer) as server, ExitStack() as stack:
        for _ in range(6):
            idle_connection(stack, server.port)
        wait_for_connections(server, 6 if per_peer == 0 else 3)
        assert server.connection_count == (6 if per_peer == 0 else 3)
