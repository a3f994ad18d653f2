"""MLLP, the Minimal Lower Layer Protocol that carries HL7 v2 over TCP (HL7 v2.5.1 Appendix C, MLLP Release 1).

A block is ``<VT> payload <FS><CR>`` (0x0B … 0x1C 0x0D). Layered like python-hl7's ``hl7.mllp``:

* `MLLPDecoder`: framing only, no I/O. Bytes in any chunking → frames and "discarded" reports. It enforces
  the size limit without buffering more than the limit, so a huge or endless block cannot exhaust memory.
* `MLLPServer`: an asyncio listener on its own thread. Persistent connections, many messages per connection
  answered in order, several connections at once, an idle timeout, a deadline for finishing a started block
  (so a client that never finishes a frame is disconnected), optional TLS with client certificates and an
  allow-list of peer addresses. So that one peer cannot lock the others out: a short deadline for the first
  byte of a new connection, a limit of connections per peer address, and slots kept for reserved peers (the
  RIS) that other peers cannot take. What a payload means is the handler's business: it runs on a worker thread
  (it talks to the database) and returns the bytes to send back.
* `MLLPClient`: a blocking client with a persistent connection, for the outbox.

Log lines carry peer addresses and sizes, never payload bytes: payloads hold patient data.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..compliance.phi import log_value

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
#: White space between blocks is common (some senders end a block with FS CR LF) and is ignored silently.
_INTER_BLOCK_WHITESPACE = b"\r\n\t \x00"


def encode_frame(payload: bytes) -> bytes:
    """Wrap a payload in an MLLP block. The payload must not contain the block characters (HL7 text cannot)."""
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("an MLLP payload cannot contain 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


# ---------------------------------------------------------------------------------------------- framing


@dataclass(frozen=True)
class Frame:
    """One complete block. When `oversize`, `payload` holds only the first `limit` bytes of `size`."""

    payload: bytes
    size: int
    oversize: bool = False


@dataclass(frozen=True)
class Discarded:
    """Bytes that were not part of a complete block, and why. `fatal` asks the caller to close the connection."""

    size: int
    reason: str
    fatal: bool = False


class _State(enum.Enum):
    OUTSIDE = "outside"
    INSIDE = "inside"
    AFTER_END = "after-end"  # just saw FS; a CR may follow


class MLLPDecoder:
    """Turns a byte stream, in whatever chunks it arrives, into frames. Never raises on bad input.

    Leniencies, each logged by the caller through a `Discarded` event: bytes outside a block are dropped; a
    start block inside a block drops the unfinished one; FS not followed by CR still ends the block.
    """

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self._state = _State.OUTSIDE
        self._buffer = bytearray()
        self._size = 0
        self._junk = 0
        #: Counts blocks begun; a caller compares it to know when a new block started (for its deadline).
        self.blocks_started = 0

    @property
    def in_block(self) -> bool:
        return self._state is _State.INSIDE

    def feed(self, data: bytes) -> list[Frame | Discarded]:
        events: list[Frame | Discarded] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._state is _State.AFTER_END:
                if data[pos] == CARRIAGE_RETURN[0]:
                    pos += 1
                self._state = _State.OUTSIDE
            elif self._state is _State.OUTSIDE:
                start = data.find(START_BLOCK, pos)
                stop = n if start < 0 else start
                self._junk += len(data[pos:stop].strip(_INTER_BLOCK_WHITESPACE))
                if self._junk > self.max_message_bytes:
                    events.append(Discarded(self._junk, "data outside MLLP blocks", fatal=True))
                    self._junk = 0
                if start < 0:
                    break
                if self._junk:
                    events.append(Discarded(self._junk, "data outside MLLP blocks"))
                    self._junk = 0
                self._begin_block()
                pos = start + 1
            else:
                end = data.find(END_BLOCK, pos)
                stop = n if end < 0 else end
                restart = data.find(START_BLOCK, pos, stop)
                if restart >= 0:
                    self._take(data[pos:restart])
                    events.append(Discarded(self._size, "MLLP block cut short by a new start block"))
                    self._begin_block()
                    pos = restart + 1
                    continue
                self._take(data[pos:stop])
                if end < 0:
                    break
                events.append(Frame(bytes(self._buffer), self._size, self._size > self.max_message_bytes))
                self._buffer = bytearray()
                self._state = _State.AFTER_END
                pos = end + 1
        return events

    def end_of_stream(self) -> list[Discarded]:
        """What was left unfinished when the connection ended."""
        events = []
        if self._state is _State.INSIDE:
            events.append(Discarded(self._size, "connection ended inside an MLLP block"))
        elif self._junk:
            events.append(Discarded(self._junk, "data outside MLLP blocks"))
        self._state, self._buffer, self._size, self._junk = _State.OUTSIDE, bytearray(), 0, 0
        return events

    def _begin_block(self) -> None:
        self._state = _State.INSIDE
        self._buffer = bytearray()
        self._size = 0
        self.blocks_started += 1

    def _take(self, part: bytes) -> None:
        room = self.max_message_bytes - len(self._buffer)
        if room > 0:
            self._buffer += part[:room]
        self._size += len(part)


# ---------------------------------------------------------------------------------------------- TLS and peers


def server_ssl_context(certfile: str, keyfile: str | None = None, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS for the listener; with `client_ca`, clients must present a certificate signed by it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile or None)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def client_ssl_context(
    ca_file: str | None = None, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


class PeerAllowList:
    """Addresses and networks (``10.1.2.3``, ``10.0.0.0/8``, ``::1``) allowed to connect; empty allows all."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip()]

    @classmethod
    def parse(cls, text: str) -> PeerAllowList:
        return cls(text.split(","))

    def allows(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks if net.version == address.version)


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    #: The subject common name of a verified client certificate, when TLS with client certificates is on.
    certificate_name: str | None = None

    def __str__(self) -> str:
        who = f"{self.host}:{self.port}"
        # The certificate's name is the peer's choice: through the log sanitiser, like every protocol value.
        return f"{who} ({log_value(self.certificate_name)})" if self.certificate_name else who


#: Called on a worker thread for every complete frame; returns the bytes to send back, or None for no answer.
FrameHandler = Callable[[Frame, Peer], bytes | None]


# ---------------------------------------------------------------------------------------------- server


class MLLPServer:
    """An MLLP listener running an asyncio loop on a background thread; `start()` / `stop()` from any thread."""

    def __init__(
        self,
        handler: FrameHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_message_bytes: int = 1 << 20,
        idle_timeout: float = 300.0,
        read_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        allowed_peers: PeerAllowList | None = None,
        max_connections: int = 64,
        handler_threads: int = 4,
        first_byte_timeout: float = 10.0,
        max_connections_per_peer: int = 8,
        reserved_peers: PeerAllowList | None = None,
        reserved_connections: int = 0,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.ssl_context = ssl_context
        self.allowed_peers = allowed_peers or PeerAllowList()
        self.max_connections = max_connections
        #: A new connection must send its first byte within this many seconds (idle_timeout applies after).
        self.first_byte_timeout = min(first_byte_timeout, idle_timeout)
        #: Connections one peer address may hold at once (0: no limit); reserved peers are exempt.
        self.max_connections_per_peer = max_connections_per_peer
        #: Peers for which `reserved_connections` of the `max_connections` slots are kept free.
        self.reserved_peers = reserved_peers or PeerAllowList()
        self.reserved_connections = reserved_connections if self.reserved_peers.networks else 0
        self._peer_hosts: dict[asyncio.Task[None], str] = {}
        self._handler_threads = handler_threads
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def start(self, timeout: float = 10.0) -> None:
        """Bind and listen; returns once connections are accepted (`port` then holds the bound port)."""
        if self._thread is not None:
            return
        self._executor = ThreadPoolExecutor(self._handler_threads, thread_name_prefix="radtriage-mllp-handler")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="radtriage-mllp", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the MLLP listener did not start")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection, wait for handlers in progress to finish."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(_quiet_exception_handler)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._startup_error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._on_connection,
            self.host,
            self.port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.read_timeout if self.ssl_context else None,
        )
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("MLLP listener on %s:%d%s", self.host, self.port, " (TLS)" if self.ssl_context else "")
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.gather(*self._connections, return_exceptions=True)
        log.info("MLLP listener on %s:%d stopped", self.host, self.port)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername") or ("?", 0)
        peer = Peer(str(address[0]), int(address[1]), _certificate_name(writer))
        if not self.allowed_peers.allows(peer.host):
            log.warning("MLLP connection from %s refused: not in the allow-list", peer)
            await _close(writer)
            return
        refusal = self._refusal(peer)
        if refusal is not None:
            log.warning("MLLP connection from %s refused: %s", peer, refusal)
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._peer_hosts[task] = peer.host
        log.info("MLLP connection from %s", peer)
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("MLLP connection from %s lost: %s", peer, type(exc).__name__)
        except asyncio.CancelledError:
            pass  # the listener is stopping
        finally:
            self._connections.discard(task)
            self._peer_hosts.pop(task, None)
            await _close(writer)

    def _refusal(self, peer: Peer) -> str | None:
        """Why a new connection from `peer` is refused, or None (runs on the loop thread: no lock needed)."""
        open_now = len(self._connections)
        if open_now >= self.max_connections:
            return f"{open_now} connections open"
        reserved = self.reserved_peers.networks and self.reserved_peers.allows(peer.host)
        if reserved:
            return None
        if open_now >= self.max_connections - self.reserved_connections:
            return f"the last {self.reserved_connections} of {self.max_connections} slots are kept for reserved peers"
        if self.max_connections_per_peer:
            from_peer = sum(1 for host in self._peer_hosts.values() if host == peer.host)
            if from_peer >= self.max_connections_per_peer:
                return f"{from_peer} connections open from this address (limit {self.max_connections_per_peer})"
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        decoder = MLLPDecoder(self.max_message_bytes)
        block_seen, block_deadline = 0, 0.0
        silent = True  # nothing received yet on this connection
        while True:
            if decoder.in_block:
                if decoder.blocks_started != block_seen:
                    block_seen, block_deadline = decoder.blocks_started, loop.time() + self.read_timeout
                wait = block_deadline - loop.time()
            else:
                wait = self.first_byte_timeout if silent else self.idle_timeout
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    data = await reader.read(65536)
            except TimeoutError:
                if decoder.in_block:
                    log.warning("MLLP block from %s not finished within %.1f s; closing", peer, self.read_timeout)
                elif silent:
                    log.info("MLLP connection from %s sent nothing for %.1f s; closing", peer, wait)
                else:
                    log.info("MLLP connection from %s idle for %.1f s; closing", peer, self.idle_timeout)
                return
            silent = silent and not data
            if not data:
                for leftover in decoder.end_of_stream():
                    log.warning("MLLP from %s: %s (%d bytes) discarded", peer, leftover.reason, leftover.size)
                log.info("MLLP connection from %s closed by the peer", peer)
                return
            for event in decoder.feed(data):
                if isinstance(event, Discarded):
                    log.warning("MLLP from %s: %s (%d bytes) discarded", peer, event.reason, event.size)
                    if event.fatal:
                        return
                    continue
                if event.oversize:
                    limit = self.max_message_bytes
                    log.warning("MLLP from %s: message of %d bytes over the %d-byte limit", peer, event.size, limit)
                try:
                    answer = await loop.run_in_executor(self._executor, self.handler, event, peer)
                except Exception:
                    log.exception("MLLP handler failed on a message from %s; closing the connection", peer)
                    return
                if answer is not None:
                    writer.write(encode_frame(answer))
                    await writer.drain()


def _certificate_name(writer: asyncio.StreamWriter) -> str | None:
    cert = writer.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """TLS handshake failures and resets from peers are normal events for a listener, not crashes."""
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError):
        log.warning("MLLP: %s (%s)", context.get("message", "connection error"), type(exc).__name__)
        return
    loop.default_exception_handler(context)


# ---------------------------------------------------------------------------------------------- client


class MLLPNoAnswer(Exception):
    """The peer could not be reached, closed the connection, or did not answer in time."""


class MLLPClient:
    """A blocking MLLP client on one persistent connection (connects on first use, again after a failure)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.max_message_bytes = max_message_bytes
        self._sock: socket.socket | None = None
        self._decoder = MLLPDecoder(max_message_bytes)
        self._pending: deque[Frame] = deque()

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._decoder = MLLPDecoder(self.max_message_bytes)
        self._pending.clear()

    def request(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the next block received. Raises `MLLPNoAnswer`; after
        that the connection is closed, so a late answer can never be taken for the next message's."""
        try:
            sock = self._connect()
            sock.sendall(encode_frame(payload))
            return self._receive(sock)
        except (OSError, MLLPNoAnswer) as exc:
            self.close()
            if isinstance(exc, MLLPNoAnswer):
                raise
            raise MLLPNoAnswer(f"{type(exc).__name__}: {exc}") from exc

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            self._sock = sock
        return self._sock

    def _receive(self, sock: socket.socket) -> bytes:
        while not self._pending:
            data = sock.recv(65536)
            if not data:
                raise MLLPNoAnswer("the peer closed the connection")
            for event in self._decoder.feed(data):
                if isinstance(event, Frame) and not event.oversize:
                    self._pending.append(event)
                elif isinstance(event, Discarded):
                    log.warning("MLLP answer from %s:%d: %s discarded", self.host, self.port, event.reason)
        return self._pending.popleft().payload


def send_messages(host: str, port: int, payloads: Sequence[bytes], timeout: float = 30.0) -> list[bytes]:
    """Send several messages on one connection, one at a time; the answers in order. (For tools and tests.)"""
    with MLLPClient(host, port, timeout=timeout) as client:
        return [client.request(p) for p in payloads]
