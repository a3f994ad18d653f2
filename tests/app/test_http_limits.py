"""HTTP limits (issue 15 item 2): 150 clients that send a request slowly and never finish it must not stop
/fhir/metadata from answering other clients, and a trickled request is cut off at the header deadline.

The slow clients are raw sockets on 127.0.0.1; the well-behaved client connects from 127.0.0.2 (Linux routes all
of 127.0.0.0/8 to loopback), as a second machine would. Every loop is bounded in count and time."""

from __future__ import annotations

import errno
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radtriage.app.config import Settings
from radtriage.app.factory import build_components, create_app
from radtriage.app.http_server import GuardedWSGIServer, create_http_server

SLOW_CLIENTS = 150
HEADER_TIMEOUT = 2.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GuardedWSGIServer]:
    settings = Settings(
        home=str(tmp_path),
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        http_connection_limit=100,  # waitress's default, the limit the 110 slow connections of the issue exhausted
        http_connections_per_address=20,
        http_header_timeout=HEADER_TIMEOUT,
        http_request_timeout=4.0,
        http_threads=4,
    )
    components = build_components(settings)
    built = create_http_server(create_app(components=components), settings, host="127.0.0.1", port=0)
    thread = threading.Thread(target=built.run, name="test-http", daemon=True)
    thread.start()
    try:
        yield built
    finally:
        built.stop()
        thread.join(timeout=10)
        components.close()


class SlowClients:
    """Keeps up to `count` connections open from 127.0.0.1, each sending a header line every `interval` seconds
    and never the blank line that ends the headers; reconnects when the server closes one (as an attacker would)."""

    def __init__(self, port: int, count: int, interval: float = 0.3) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.sockets: dict[socket.socket, float] = {}
        self.closed_after: list[float] = []  # seconds each connection lived before the server closed it
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: radtriage\r\n")
        except OSError:
            sock.close()
            return
        sock.setblocking(False)
        self.sockets[sock] = time.monotonic()
        self.connects += 1

    def _run(self) -> None:
        deadline = time.monotonic() + 60  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            while len(self.sockets) < self.count and self.connects < 20 * self.count:
                self._connect()
            for sock, opened in list(self.sockets.items()):
                try:
                    sock.send(b"X-Slow: 1\r\n")
                    if sock.recv(1024) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue  # nothing to read: still open
                except OSError as exc:
                    if exc.errno == errno.EAGAIN:
                        continue
                    self.closed_after.append(time.monotonic() - opened)
                    del self.sockets[sock]
                    sock.close()
            self._stop.wait(self.interval)


def metadata_from(address: str, port: int, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(address, 0))
    try:
        connection.request("GET", "/fhir/metadata", headers={"Accept": "application/fhir+json"})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def test_slow_clients_cannot_stop_metadata_from_answering(server: GuardedWSGIServer) -> None:
    port = int(server.effective_port)
    with SlowClients(port, SLOW_CLIENTS) as slow:
        time.sleep(1.0)  # let them connect and start trickling
        answers: list[tuple[int, float]] = []
        for _ in range(6):  # over about 6 s, i.e. across several header deadlines
            answers.append(metadata_from("127.0.0.2", port, timeout=5))
            time.sleep(0.8)
        attempts = slow.connects
    assert [status for status, _ in answers] == [200] * 6
    assert max(elapsed for _, elapsed in answers) < 2.0
    assert attempts >= SLOW_CLIENTS  # they really tried to hold every slot
    assert server.refused_connections > 0  # over the per-address limit: closed at once
    assert server.timed_out_requests > 0  # trickled headers: cut off at the deadline


def test_a_trickled_request_is_cut_off_at_the_header_deadline(server: Any) -> None:
    with SlowClients(int(server.effective_port), 5, interval=0.2) as slow:
        deadline = time.monotonic() + HEADER_TIMEOUT + 4
        while len(slow.closed_after) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        lifetimes = list(slow.closed_after)
    # Each kept sending a byte every 0.2 s, so waitress's idle timeout alone would never have closed it.
    assert len(lifetimes) >= 5
    assert all(HEADER_TIMEOUT * 0.9 <= t <= HEADER_TIMEOUT + 2.5 for t in lifetimes[:5])


def test_a_normal_client_on_the_same_address_is_served(server: Any) -> None:
    statuses = [metadata_from("127.0.0.1", int(server.effective_port), timeout=5)[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
