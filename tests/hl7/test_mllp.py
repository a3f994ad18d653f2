"""MLLP transport: framing under any chunking, and the listener's limits, over real loopback sockets."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7.client import MLLPClient as IndependentClient
from hypothesis import given
from hypothesis import strategies as st

from radtriage.hl7.mllp import (
    Discarded,
    Frame,
    MLLPClient,
    MLLPDecoder,
    MLLPNoAnswer,
    MLLPServer,
    Peer,
    PeerAllowList,
    client_ssl_context,
    encode_frame,
    server_ssl_context,
)

# ---------------------------------------------------------------------------------------------- framing

payload_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


@given(st.lists(payload_bytes, max_size=6), st.data())
def test_frames_survive_arbitrary_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    separators = data.draw(
        st.lists(st.sampled_from([b"", b"\r\n", b"\n", b"  "]), min_size=len(payloads), max_size=len(payloads))
    )
    stream = b"".join(encode_frame(p) + sep for p, sep in zip(payloads, separators, strict=True))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    decoder = MLLPDecoder(max_message_bytes=1000)
    events = [e for chunk in chunked(stream, cuts) for e in decoder.feed(chunk)]
    assert events == [Frame(p, len(p)) for p in payloads]
    assert not decoder.in_block
    assert decoder.end_of_stream() == []


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20))
def test_any_bytes_give_frames_or_reports_and_never_an_exception(stream: bytes, cuts: list[int]) -> None:
    decoder = MLLPDecoder(max_message_bytes=64)
    events = [e for chunk in chunked(stream, [c for c in cuts if c <= len(stream)]) for e in decoder.feed(chunk)]
    events += decoder.end_of_stream()
    for event in events:
        assert isinstance(event, Frame | Discarded)
        if isinstance(event, Frame):
            assert len(event.payload) <= 64 and event.oversize == (event.size > 64)
    assert sum(e.size for e in events) <= len(stream)


def test_an_oversized_frame_is_reported_with_its_head_and_the_next_frame_is_intact() -> None:
    decoder = MLLPDecoder(max_message_bytes=100)
    big = b"MSH|" + b"x" * 5000
    events = decoder.feed(encode_frame(big) + encode_frame(b"MSH|small"))
    assert events == [Frame(big[:100], len(big), oversize=True), Frame(b"MSH|small", 9)]


def test_leniencies_are_reported() -> None:
    decoder = MLLPDecoder()
    events = decoder.feed(b"garbage\x0bcut short\x0bwhole\x1c\x0bno CR after FS\x1cjunk")
    assert events == [
        Discarded(7, "data outside MLLP blocks"),
        Discarded(9, "MLLP block cut short by a new start block"),
        Frame(b"whole", 5),
        Frame(b"no CR after FS", 14),
    ]
    assert decoder.end_of_stream() == [Discarded(4, "data outside MLLP blocks")]
    decoder.feed(b"\x0bunfinished")
    assert decoder.end_of_stream() == [Discarded(10, "connection ended inside an MLLP block")]


def test_a_flood_without_any_block_is_fatal() -> None:
    decoder = MLLPDecoder(max_message_bytes=100)
    events = decoder.feed(b"GET / HTTP/1.1\r\n" * 10)
    assert any(isinstance(e, Discarded) and e.fatal for e in events)


def test_payloads_with_block_characters_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        encode_frame(b"a\x1cb")


# ---------------------------------------------------------------------------------------------- listener


def echo_handler(frame: Frame, peer: Peer) -> bytes:
    if frame.payload == b"boom":
        raise RuntimeError("handler failure")
    if frame.payload == b"slow":
        time.sleep(0.3)
    return (b"TOO BIG %d" % frame.size) if frame.oversize else b"ECHO " + frame.payload


@pytest.fixture
def server() -> Iterator[MLLPServer]:
    listener = MLLPServer(echo_handler, port=0, max_message_bytes=1000, idle_timeout=1.0, read_timeout=0.4)
    listener.start()
    yield listener
    listener.stop()


def receive_frames(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    sock.settimeout(timeout)
    decoder, frames = MLLPDecoder(), list[bytes]()
    while len(frames) < count:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # closed by the server before reading what was sent
            break
        if not data:
            break
        frames += [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
    return frames


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed the connection (b"" from recv); fails if it stays open longer."""
    start = time.monotonic()
    sock.settimeout(seconds)
    while True:
        try:
            data = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
        except TimeoutError:
            raise AssertionError(f"the connection was still open after {seconds} s") from None
        if not data:
            return time.monotonic() - start


def test_many_messages_on_one_connection_with_an_independent_client(server: MLLPServer) -> None:
    with IndependentClient(*server.address) as client:
        answers = [client.send_message(f"MSH|message {n}".encode()) for n in range(20)]
    assert answers == [encode_frame(f"ECHO MSH|message {n}".encode()) for n in range(20)]


def test_pipelined_messages_are_answered_in_order(server: MLLPServer) -> None:
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"".join(encode_frame(p) for p in (b"slow", b"one", b"two")))
        assert receive_frames(sock, 3) == [b"ECHO slow", b"ECHO one", b"ECHO two"]


def test_several_clients_at_once(server: MLLPServer) -> None:
    results: dict[int, list[bytes]] = {}

    def client(n: int) -> None:
        with MLLPClient(*server.address, timeout=5) as c:
            results[n] = [c.request(f"{n}-{i}".encode()) for i in range(10)]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {n: [f"ECHO {n}-{i}".encode() for i in range(10)] for n in range(8)}


def test_an_oversized_message_is_answered_and_the_connection_stays_usable(server: MLLPServer) -> None:
    with MLLPClient(*server.address, timeout=5) as client:
        assert client.request(b"x" * 50_000) == b"TOO BIG 50000"
        assert client.request(b"next") == b"ECHO next"


def test_an_idle_connection_is_closed(server: MLLPServer) -> None:
    with socket.create_connection(server.address) as sock:
        assert 0.8 < closed_within(sock, 3.0) < 2.5


def test_a_client_that_never_finishes_a_frame_is_disconnected(server: MLLPServer) -> None:
    """Trickling a byte now and then does not keep an unfinished frame alive: the deadline is per frame."""
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"\x0bMSH|")
        start, closed = time.monotonic(), False
        while not closed and time.monotonic() - start < 3:
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            time.sleep(0.05)
        assert closed, "the unfinished frame kept the connection open"
        assert time.monotonic() - start < 2.0
    with MLLPClient(*server.address, timeout=5) as client:  # the listener itself is fine
        assert client.request(b"after") == b"ECHO after"


def test_a_flood_of_non_mllp_bytes_closes_the_connection(server: MLLPServer) -> None:
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
        assert closed_within(sock, 3.0) < 1.0


def test_a_failing_handler_drops_only_that_connection(server: MLLPServer) -> None:
    with socket.create_connection(server.address) as sock:
        sock.sendall(encode_frame(b"boom"))
        closed_within(sock, 3.0)
    with MLLPClient(*server.address, timeout=5) as client:
        assert client.request(b"still here") == b"ECHO still here"


def test_stop_closes_open_connections() -> None:
    listener = MLLPServer(echo_handler, port=0)
    listener.start()
    sock = socket.create_connection(listener.address)
    try:
        time.sleep(0.1)
        listener.stop()
        assert closed_within(sock, 3.0) < 2.0
    finally:
        sock.close()


def test_peers_outside_the_allow_list_are_refused() -> None:
    listener = MLLPServer(echo_handler, port=0, allowed_peers=PeerAllowList(["10.0.0.0/8", "::1"]))
    listener.start()
    try:
        with socket.create_connection(listener.address) as sock:
            sock.sendall(encode_frame(b"hello"))
            assert receive_frames(sock, 1, timeout=3) == []
    finally:
        listener.stop()
    listener = MLLPServer(echo_handler, port=0, allowed_peers=PeerAllowList.parse("10.0.0.0/8, 127.0.0.1"))
    listener.start()
    try:
        with MLLPClient(*listener.address, timeout=5) as client:
            assert client.request(b"hello") == b"ECHO hello"
    finally:
        listener.stop()


def test_allow_list_matching() -> None:
    allow = PeerAllowList.parse("192.0.2.0/24,2001:db8::/32")
    assert allow.allows("192.0.2.7") and allow.allows("::ffff:192.0.2.8") and allow.allows("2001:db8::1")
    assert not allow.allows("198.51.100.1") and not allow.allows("not an address")
    assert PeerAllowList().allows("198.51.100.1")


def test_our_client_reports_no_answer() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(MLLPNoAnswer):
        MLLPClient("127.0.0.1", port, timeout=1).request(b"anyone?")
    silent = MLLPServer(lambda frame, peer: None, port=0)
    silent.start()
    try:
        with pytest.raises(MLLPNoAnswer):
            MLLPClient(*silent.address, timeout=0.3).request(b"hello")
    finally:
        silent.stop()


# ---------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl tool."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return d


def test_tls_with_client_certificates(pki: Path) -> None:
    context = server_ssl_context(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    seen: list[Peer] = []

    def handler(frame: Frame, peer: Peer) -> bytes:
        seen.append(peer)
        return b"ECHO " + frame.payload

    listener = MLLPServer(handler, port=0, ssl_context=context, read_timeout=2)
    listener.start()
    try:
        trusted = client_ssl_context(str(pki / "ca.pem"), str(pki / "client.pem"), str(pki / "client.key"))
        with MLLPClient(*listener.address, timeout=5, ssl_context=trusted) as client:
            assert client.request(b"over TLS") == b"ECHO over TLS"
        assert seen[0].certificate_name == "client"

        anonymous = client_ssl_context(str(pki / "ca.pem"))
        with pytest.raises(MLLPNoAnswer), MLLPClient(*listener.address, timeout=3, ssl_context=anonymous) as client:
            client.request(b"no certificate")

        with socket.create_connection(listener.address) as plain:  # no TLS at all: never answered
            plain.sendall(encode_frame(b"plain text"))
            plain.settimeout(3)
            try:
                assert b"ECHO" not in plain.recv(4096)
            except (ConnectionResetError, TimeoutError):
                pass
        assert len(seen) == 1
    finally:
        listener.stop()


def test_the_server_certificate_is_checked_by_our_client(pki: Path, server: MLLPServer) -> None:
    context = server_ssl_context(str(pki / "server.pem"), str(pki / "server.key"))
    listener = MLLPServer(echo_handler, port=0, ssl_context=context)
    listener.start()
    try:
        untrusting = ssl.create_default_context()  # the system CAs do not know the test CA
        with pytest.raises(MLLPNoAnswer):
            MLLPClient(*listener.address, timeout=3, ssl_context=untrusting).request(b"hello")
    finally:
        listener.stop()
