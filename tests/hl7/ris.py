"""A small test RIS: an MLLP peer on a loopback port that records what it receives and answers on demand.

Written independently of radtriage.hl7 (its own framing loop, python-hl7 to read messages and build ACKs), so
that a framing or ACK bug in radtriage cannot cancel itself out in the tests.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hl7

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"

#: What the RIS does with one message: "AA", "AE", "AR", "silent" (no answer) or "close" (drop the connection).
Behaviour = Callable[[hl7.Message], str]


@dataclass
class Received:
    raw: bytes
    message: hl7.Message
    answer: str

    @property
    def control_id(self) -> str:
        return str(self.message.segment("MSH")(10))

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")


@dataclass
class RisPeer:
    host: str = "127.0.0.1"
    port: int = 0
    behaviour: Behaviour = field(default=lambda _m: "AA")
    received: list[Received] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        ris = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                ris.connections += 1
                buffer = b""
                self.request.settimeout(5)
                while True:
                    try:
                        data = self.request.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                    while EB + CR in buffer:
                        block, buffer = buffer.split(EB + CR, 1)
                        assert block.startswith(SB), "radtriage sent bytes outside an MLLP block"
                        if not ris._answer(self.request, block[1:]):
                            return

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _answer(self, sock: socket.socket, raw: bytes) -> bool:
        charset = "latin-1" if b"8859/1" in raw.split(b"\r", 1)[0] else "utf-8"
        message = hl7.parse(raw.decode(charset))
        action = self.behaviour(message)
        with self._lock:
            self.received.append(Received(raw, message, action))
        if action == "close":
            return False
        if action == "silent":
            return True
        ack = str(message.create_ack(action, application="RIS", facility="HOSP"))
        if action != "AA":
            ack += "\rERR|||207^Application internal error^HL70357|E"
        sock.sendall(SB + ack.encode("ascii") + EB + CR)
        return True

    def start(self) -> RisPeer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever(), which must have been started
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.01)
        raise AssertionError(f"the test RIS received {len(self.received)} message(s), expected {count}")
