"""The RLS gRPC server on libnghttp2 (`server.transport: nghttp2`).

How it works. The event loop (uvloop when installed) owns the sockets: one asyncio
Protocol per connection, TLS through Python's ssl with ALPN `h2` when `server.tls` is
set. Each connection has a native HTTP/2 session (h2core.c, built by h2build.py) whose
nghttp2 callbacks are all C. `data_received` hands the bytes to C once; C collects
finished requests; Python then takes each one (`hm_next`), calls the servicer with the
request bytes and gets response bytes back (`RateLimitServicer.handle_bytes`, the same
seam as grpcio's, in bytes), answers (`hm_respond`), and writes whatever the session
has to send in one `transport.write`. So Python runs once per request, not once per
frame: the transport costs about as much as a few function calls.

What C answers by itself: unknown methods (UNIMPLEMENTED, 12), compressed messages
(grpc-encoding other than identity, or the compressed flag: UNIMPLEMENTED with a
message that says so), messages over `server.max_message_bytes`
(RESOURCE_EXHAUSTED), a request whose `grpc-timeout` has passed before it could be
handled (DEADLINE_EXCEEDED; a timer answers requests whose body is still incomplete
at their deadline), non-gRPC content types (HTTP 415) and methods other than POST
(HTTP 405).

Bounds: concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS), header
list bytes per request, message bytes per request, request bytes buffered per
connection. nghttp2 enforces the protocol, its flood and rapid-reset protections;
a connection that breaks the protocol gets a GOAWAY and is closed.

Backpressure: when the socket's write buffer is full the connection stops reading
until it drains, so a client that does not read cannot make the server buffer.

Shutdown: NOT_SERVING; stop accepting; a GOAWAY shutdown notice to every connection,
then, a little later, a GOAWAY with the last stream id; connections close once their
streams are done or when `grace` runs out.

The handler is synchronous and takes microseconds, so one thread serves everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from grpc_health.v1 import health_pb2

from hivemind_ratelimit.errors import HivemindError, ListenError, SettingsError
from hivemind_ratelimit.rls.h2build import BuildError, load
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.settings import ServerSettings

log = logging.getLogger("hivemind.rls")

HEALTH_SERVICES = ("", "ratelimit")
MAX_CONCURRENT_STREAMS = 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_BUFFERED_PER_CONNECTION = 64 * 1024 * 1024
EXPIRE_INTERVAL = 0.05  # seconds between checks for requests past their deadline
GOAWAY_DELAY = 0.1  # seconds between the shutdown notice and the final GOAWAY

METHOD_RLS = 1
METHOD_HEALTH_CHECK = 2
STATUS_NOT_FOUND = 5
STATUS_INTERNAL = 13

_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
_NOT_SERVING = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.NOT_SERVING
).SerializeToString()


def percent_encode(message: str) -> bytes:
    """grpc-message: printable ASCII except %, the rest percent-encoded as UTF-8."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out[:1024])


def _metadata(packed: bytes) -> list[tuple[str, str]]:
    """Trace context headers from C (`name\\0value\\0...`) as gRPC metadata pairs."""
    parts = packed.decode("latin-1").split("\0")
    return list(zip(parts[0:-1:2], parts[1:-1:2], strict=True))


class _Connection(asyncio.Protocol):
    __slots__ = ("_conn", "_ffi", "_lib", "_out", "_paused", "_request", "_server", "_transport")

    def __init__(self, server: H2RlsServer) -> None:
        self._server = server
        self._ffi, self._lib = server.ffi, server.lib
        self._conn: Any = None
        self._transport: asyncio.Transport | None = None
        self._paused = False

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._conn = self._lib.hm_new(
            MAX_CONCURRENT_STREAMS, server.max_message, MAX_HEADER_BYTES, MAX_BUFFERED_PER_CONNECTION
        )
        if self._conn == self._ffi.NULL:
            transport.abort()
            return
        self._request = self._ffi.new("hm_request *")
        self._out = self._ffi.new("const char **")
        server.connections.add(self)
        if server.draining:
            self._lib.hm_shutdown_notice(self._conn)
            self._lib.hm_goaway(self._conn)
        self.flush()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        lib = self._lib
        if lib.hm_feed(conn, data, len(data)) < 0:
            self.flush()
            self.close()
            return
        request = self._request
        if lib.hm_next(conn, request):
            self._dispatch(request)
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        conn, self._conn = self._conn, None
        if conn is not None:
            self._lib.hm_free(conn)
        self._transport = None

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
            self.flush()

    # -- work ---------------------------------------------------------------------

    def _dispatch(self, request: Any) -> None:
        """Answer every finished request (the first one is already in `request`)."""
        lib, ffi, conn = self._lib, self._ffi, self._conn
        server = self._server
        servicer = server.servicer
        handle = servicer.handle_bytes
        stats = servicer.stats
        while True:
            stream_id = request.stream_id
            body = ffi.buffer(request.body, request.len)[:] if request.len else b""
            if request.method == METHOD_RLS:
                try:
                    if servicer.observer is not None and request.meta_len:
                        answer = handle(body, _metadata(ffi.buffer(request.meta, request.meta_len)[:]))
                    else:
                        answer = handle(body)
                except HivemindError as exc:
                    stats.count_error(exc.metric_label)
                    status = exc.grpc_status.value[0]
                    lib.hm_respond(conn, stream_id, ffi.NULL, 0, status, percent_encode(str(exc)))
                except Exception:  # the boundary: count, log, answer INTERNAL, keep serving
                    stats.count_error("internal")
                    log.exception("ShouldRateLimit failed")
                    lib.hm_respond(conn, stream_id, ffi.NULL, 0, STATUS_INTERNAL, b"internal error")
                else:
                    lib.hm_respond(conn, stream_id, answer, len(answer), 0, ffi.NULL)
            else:  # METHOD_HEALTH_CHECK
                self._health(stream_id, body)
            if not lib.hm_next(conn, request):
                return

    def _health(self, stream_id: int, body: bytes) -> None:
        lib, ffi, conn = self._lib, self._ffi, self._conn
        try:
            service = health_pb2.HealthCheckRequest.FromString(body).service
        except Exception:
            lib.hm_respond(conn, stream_id, ffi.NULL, 0, 3, b"not a HealthCheckRequest")
            return
        if service not in HEALTH_SERVICES:
            lib.hm_respond(conn, stream_id, ffi.NULL, 0, STATUS_NOT_FOUND, b"unknown service")
            return
        answer = _SERVING if self._server.serving else _NOT_SERVING
        lib.hm_respond(conn, stream_id, answer, len(answer), 0, ffi.NULL)

    def flush(self) -> None:
        """Write what the session has to send; close when it is done."""
        conn, transport = self._conn, self._transport
        if conn is None or transport is None:
            return
        lib, out = self._lib, self._out
        while not self._paused:
            size = lib.hm_pending(conn, out)
            if not size:
                break
            transport.write(self._ffi.buffer(out[0], size)[:])
        if not lib.hm_want(conn):
            self.close()

    def expire(self) -> None:
        if self._conn is not None and self._lib.hm_expire(self._conn):
            self.flush()

    def shutdown_notice(self) -> None:
        if self._conn is not None:
            self._lib.hm_shutdown_notice(self._conn)
            self.flush()

    def goaway(self) -> None:
        if self._conn is not None:
            self._lib.hm_goaway(self._conn)
            self.flush()

    def open_streams(self) -> int:
        return int(self._lib.hm_open_streams(self._conn)) if self._conn is not None else 0

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class H2RlsServer:
    """Same surface as rls.server.RlsServer: start, set_serving, stop, addresses."""

    def __init__(self, settings: ServerSettings, servicer: RateLimitServicer) -> None:
        self._settings = settings
        self.servicer = servicer
        self.max_message = settings.max_message_bytes
        try:
            self.ffi, self.lib = load()
        except BuildError as exc:
            raise SettingsError(f"server.transport nghttp2 is not available: {exc}") from exc
        self.connections: set[_Connection] = set()
        self.serving = False
        self.draining = False
        self.addresses: list[str] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self._settings
        loop = asyncio.get_running_loop()
        context = _ssl_context(s)
        factory: Callable[[], _Connection] = lambda: _Connection(self)  # noqa: E731
        address = f"{s.host}:{s.grpc_port}"
        try:
            server = await loop.create_server(
                factory, s.host, s.grpc_port, ssl=context, reuse_address=True, backlog=1024
            )
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            self.addresses.append(f"{s.host}:{port}")
            if s.grpc_uds:
                address = f"unix:{s.grpc_uds}"
                with contextlib.suppress(FileNotFoundError):
                    if os.path.exists(s.grpc_uds) and not os.path.isdir(s.grpc_uds):
                        os.unlink(s.grpc_uds)  # a socket left by a previous run
                uds = await loop.create_unix_server(factory, s.grpc_uds, ssl=None, backlog=1024)
                self._servers.append(uds)
                self.addresses.append(address)
        except OSError as exc:
            await self._close_servers()
            raise ListenError(f"cannot listen for gRPC on {address}: {exc.strerror or exc}") from None
        self._expiry = asyncio.create_task(self._expire_loop())

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            for connection in list(self.connections):
                connection.expire()

    async def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    async def stop(self, grace: float) -> None:
        """GOAWAY, let open streams finish within `grace`, close."""
        self.serving = False
        self.draining = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + max(grace, 0.0)
        for connection in list(self.connections):
            connection.shutdown_notice()
        await asyncio.sleep(min(GOAWAY_DELAY, max(grace, 0.0)))
        for connection in list(self.connections):
            connection.goaway()
        while self.connections and time.monotonic() < deadline:
            if not any(c.open_streams() for c in self.connections):
                break
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.flush()
            connection.close()
        closing = time.monotonic() + 1.0  # for the last bytes to leave
        while self.connections and time.monotonic() < closing:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await self._close_servers()
        if self._settings.grpc_uds:
            with contextlib.suppress(OSError):
                os.unlink(self._settings.grpc_uds)


def _ssl_context(s: ServerSettings) -> ssl.SSLContext | None:
    tls = s.tls
    if not (tls.cert_file or tls.key_file):
        return None
    if not (tls.cert_file and tls.key_file):
        raise SettingsError("server.tls needs both cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"server.tls: {exc}") from exc
    return context
