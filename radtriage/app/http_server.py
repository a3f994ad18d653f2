"""The HTTP server (waitress) with deliberate limits, so that slow or greedy clients cannot take the API offline.

waitress reads requests asynchronously and hands complete ones to `http_threads` worker threads, so a slow
client costs a connection slot, not a thread; but slots are finite (`connection_limit`) and, on its own,
waitress keeps a connection that sends a byte now and then forever. So this server adds, on top of waitress's
own settings:

* a deadline for the request headers (`http_header_timeout`) and for the whole request
  (`http_request_timeout`), counted from its first byte, however the bytes trickle in (slowloris);
* a per-address connection limit (`http_connections_per_address`): one address cannot hold every slot; a
  connection over it is closed at once;
* waitress's connection limit, idle timeout between requests (`http_channel_timeout`), header size limit, and
  ``poll()`` instead of ``select()`` (which cannot watch more than 1024 sockets).

Behind a reverse proxy every connection comes from the proxy's address: there, set the per-address limit to 0
(off) and let the proxy limit each client (docs/operations.md lists the proxy settings).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from ..compliance.phi import log_value

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

#: How often (seconds) the server looks for connections past a deadline.
CHECK_INTERVAL_S = 1


class _DeadlineChannel(HTTPChannel):  # type: ignore[misc]  # waitress has no type hints
    """An HTTP connection that remembers when the request it is reading began."""

    request_started: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.monotonic()  # the first byte of a new request
        done: bool = super().received(data)
        if self.request is None:  # nothing half-read any more (complete, or nothing started)
            self.request_started = None
        return done


class GuardedWSGIServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress's TCP server with request deadlines and a per-address connection limit."""

    channel_class = _DeadlineChannel

    def __init__(
        self,
        application: Any,
        *,
        header_timeout: float,
        request_timeout: float,
        connections_per_address: int,
        **adjustments: Any,
    ) -> None:
        self.header_timeout = header_timeout
        self.request_timeout = request_timeout
        self.connections_per_address = connections_per_address
        self.refused_connections = 0
        self.timed_out_requests = 0
        super().__init__(application, map={}, adj=Adjustments(**adjustments))

    def handle_accept(self) -> None:
        try:
            accepted = self.accept()
            if accepted is None:
                return
            conn, addr = accepted
            self.set_socket_options(conn)
        except OSError:
            return  # the peer went away before we got to it
        addr = self.fix_addr(addr)
        if self.connections_per_address and self._open_from(addr[0]) >= self.connections_per_address:
            self.refused_connections += 1
            if self.refused_connections in (1, 10, 100) or self.refused_connections % 1000 == 0:
                log.warning(
                    "HTTP connections from %s over the limit of %d per address: closed (%d so far)",
                    log_value(addr[0]),
                    self.connections_per_address,
                    self.refused_connections,
                )
            conn.close()
            return
        self.channel_class(self, conn, addr, self.adj, map=self._map)

    def _open_from(self, host: str) -> int:
        return Counter(c.addr[0] for c in self.active_channels.values() if c.addr)[host]

    def maintenance(self, now: float) -> None:
        """waitress's idle check, then the request deadlines."""
        super().maintenance(now)
        clock = time.monotonic()
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            request = channel.request
            if started is None or request is None or channel.will_close:
                continue
            limit = self.request_timeout if request.headers_finished else self.header_timeout
            if clock - started > limit:
                self.timed_out_requests += 1
                channel.will_close = True  # waitress closes it on its next pass

    def stop(self) -> None:
        self.task_dispatcher.shutdown()  # let requests in progress finish before the sockets close
        self.close()


def create_http_server(app: Any, settings: Settings, *, host: str | None = None, port: int | None = None) -> Any:
    """The API's HTTP server, bound and listening (``.run()`` serves until stopped; ``.effective_port``)."""
    return GuardedWSGIServer(
        app,
        header_timeout=settings.http_header_timeout,
        request_timeout=settings.http_request_timeout,
        connections_per_address=settings.http_connections_per_address,
        host=host if host is not None else settings.host,
        port=port if port is not None else settings.port,
        threads=settings.http_threads,
        connection_limit=settings.http_connection_limit,
        channel_timeout=settings.http_channel_timeout,
        cleanup_interval=CHECK_INTERVAL_S,
        max_request_header_size=settings.http_max_header_bytes,
        asyncore_use_poll=True,
    )
