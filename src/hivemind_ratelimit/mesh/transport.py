"""gRPC streams that drive the mesh core: listening, dialing, handshakes, a ticker.

Each pair of peers keeps one bidirectional `Connect` stream. Both sides may dial at
once; the stream dialed by the node with the smaller id wins and the other is closed,
so both sides keep the same one. The handshake proves the cluster secret when
`mesh.secret_file` is set: each side sends a fresh nonce and answers the other's with
HMAC-SHA256(secret, role | nonces). A malformed or unexpected message closes its
stream (the peer redials and both sides exchange full state again); it never reaches
the rest of the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode, Tracer

from hivemind_ratelimit.core.clock import Clock
from hivemind_ratelimit.errors import SettingsError
from hivemind_ratelimit.mesh.membership import State
from hivemind_ratelimit.mesh.proto import mesh_pb2 as pb
from hivemind_ratelimit.mesh.proto import mesh_pb2_grpc
from hivemind_ratelimit.mesh.protocol import PROTOCOL_VERSION, MeshCore, Out
from hivemind_ratelimit.settings import MeshSettings

log = logging.getLogger("hivemind.mesh")

_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - missing from the type stubs
_MEMBER_STATES = frozenset(int(state) for state in State)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
HANDSHAKE_TIMEOUT = 5.0
QUEUE_LIMIT = 20_000  # messages waiting for a slow peer; past it the stream is dropped
DIAL_EVERY = 0.5
RESOLVE_EVERY = 5.0
MAX_BACKOFF = 10.0
CLOCK_WARNING = 1.0  # seconds of peer clock offset worth a warning (once a minute per peer)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class HandshakeError(Exception):
    pass


class _Stream(Protocol):
    async def read(self) -> Any: ...
    async def write(self, message: Any) -> None: ...


def _proof(
    secret: bytes, role: bytes, dialer_nonce: bytes, acceptor_nonce: bytes, dialer: str, acceptor: str
) -> bytes:
    """HMAC over the role, both nonces and both node ids: a proof fits one handshake only."""
    message = b"|".join((role, dialer_nonce, acceptor_nonce, dialer.encode(), acceptor.encode()))
    return hmac.new(secret, message, hashlib.sha256).digest()


class _Link:
    """One established stream to a peer: a writer task fed by a queue."""

    def __init__(self, peer: str, dialer: str, stream: _Stream, on_bytes: Callable[[int], None]) -> None:
        self.peer = peer
        self.dialer = dialer  # node id of the side that dialed
        self.stream = stream
        self.queue: asyncio.Queue[pb.Envelope | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._on_bytes = on_bytes
        self.writer = asyncio.create_task(self._write_loop())

    def send(self, envelope: pb.Envelope) -> None:
        if self.queue.qsize() >= QUEUE_LIMIT:
            log.warning("peer %s is not keeping up; dropping its stream", self.peer)
            self.close()
            return
        self.queue.put_nowait(envelope)

    async def _write_loop(self) -> None:
        try:
            while True:
                envelope = await self.queue.get()
                try:
                    if envelope is None:
                        return
                    self._on_bytes(envelope.ByteSize())
                    await self.stream.write(envelope)
                finally:
                    self.queue.task_done()
        except (grpc.RpcError, asyncio.InvalidStateError, RuntimeError, grpc.aio.UsageError):
            pass
        finally:
            self.closed.set()

    async def flush(self, timeout: float) -> None:
        """Until everything queued is written; the stream stays open (the peer, having
        read a leave announcement, is the one to close it, so nothing is cut short)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)

    def close(self) -> None:
        self.closed.set()
        self.writer.cancel()


class MeshTransport:
    def __init__(
        self, core: MeshCore, settings: MeshSettings, clock: Clock, tracer: Tracer | None = None
    ) -> None:
        self.core = core
        self.tracer = tracer or NoOpTracer()  # spans: join (warm-up) and each link's full sync
        self._syncing: dict[str, Span] = {}  # peer -> its open full-sync span
        self.settings = settings
        self.clock = clock
        self.secret = _read_secret(settings.secret_file)
        self.links: dict[str, _Link] = {}
        self.bound_port = 0
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dialing: set[str] = set()
        self._backoff: dict[str, tuple[float, float]] = {}  # address -> (next try, delay)
        self._own_addresses: set[str] = set()
        self._address_peer: dict[str, str] = {}  # dialed address -> the node that answered
        self._clock_warned: dict[str, float] = {}  # peer -> when to warn about its clock again
        self._bootstrap: set[str] = set()
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        server = self._server = grpc.aio.server(options=[*_CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
        mesh_pb2_grpc.add_MeshServicer_to_server(_Servicer(self), server)
        credentials = _server_credentials(s)
        address = f"{s.host}:{s.port}"
        if credentials is not None:
            self.bound_port = server.add_secure_port(address, credentials)
        else:
            self.bound_port = server.add_insecure_port(address)
        await server.start()
        self._tasks.append(asyncio.create_task(self._ticker()))
        self._tasks.append(asyncio.create_task(self._dialer()))

    async def warm_up(self, timeout: float) -> bool:
        """Wait until every peer we linked to has sent its full state (bounded)."""
        if not self.settings.bootstrap_peers:
            return True
        with self.tracer.start_as_current_span("hivemind.mesh.join") as span:
            span.set_attribute("hivemind.mesh.bootstrap_peers", len(self.settings.bootstrap_peers))
            deadline = self.clock.now() + timeout
            while self.clock.now() < deadline:
                linked = set(self.links)
                if linked and linked <= self.core.full_state_from:
                    span.set_attribute("hivemind.mesh.peers", len(linked))
                    return True
                await asyncio.sleep(0.02)
            span.set_attribute("hivemind.mesh.peers", len(self.core.full_state_from & set(self.links)))
            span.set_status(Status(StatusCode.ERROR, f"warm-up incomplete after {timeout:.1f}s"))
            return False

    async def leave(self, timeout: float = 2.0) -> None:
        """Final counts and the leave announcement to every peer, then close."""
        self._stopping = True
        self._dispatch(self.core.leave(self.clock.now()))
        await asyncio.gather(*(link.flush(timeout) for link in list(self.links.values())))
        # A written message may still sit in a socket buffer: wait (bounded) until the
        # peers, having read the announcement, drop their streams to us.
        deadline = self.clock.now() + timeout
        while self.links and self.clock.now() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self.links.values()):
            link.close()
        if self._server is not None:
            await self._server.stop(0.5)

    # -- the core's clock --------------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = min(self.core.timing.sync_interval, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                now = self.clock.now()
                self._dispatch(self.core.tick(now))
                self._drop_departed()
                self._check_clocks(now)
            except Exception:  # a bug here must not stop the mesh: log and go on
                log.exception("mesh tick failed")

    def _check_clocks(self, now: float) -> None:
        """Windows come from each node's own clock: warn about a peer more than 1 s off."""
        for peer, member in self.core.membership.members.items():
            offset = member.clock_offset
            if offset is None or abs(offset) <= CLOCK_WARNING:
                continue
            if now >= self._clock_warned.get(peer, 0.0):
                self._clock_warned[peer] = now + 60.0
                log.warning("clock of %s is %+.3f s off ours: windows will disagree; check NTP", peer, offset)

    def _dispatch(self, outs: list[Out]) -> None:
        for peer, envelope in outs:
            link = self.links.get(peer)
            if link is not None:
                link.send(envelope)
        if self.core.events:
            events, self.core.events = self.core.events, []
            for change in events:
                if change.node_id == self.core.node_id:
                    log.warning(
                        "refuted a rumour that this node is %s (incarnation now %d)",
                        change.previous.name.lower() if change.previous else "?",
                        change.incarnation,
                    )
                else:
                    log.info(
                        "member %s: %s -> %s (incarnation %d, %s)",
                        change.node_id,
                        change.previous.name.lower() if change.previous else "new",
                        change.state.name.lower(),
                        change.incarnation,
                        change.address,
                    )

    def _drop_departed(self) -> None:
        for peer in list(self.core.disconnect):
            link = self.links.get(peer)
            if link is not None:
                link.close()
            self.core.disconnect.discard(peer)

    def _count_sent(self, size: int) -> None:
        self.core.stats.bytes_sent += size

    # -- dialing -----------------------------------------------------------------------------

    async def _dialer(self) -> None:
        next_resolve = 0.0
        while True:
            now = self.clock.now()
            if now >= next_resolve:
                next_resolve = now + RESOLVE_EVERY
                self._bootstrap = await _resolve(self.settings.bootstrap_peers)
            for address in self._targets():
                retry_at, _ = self._backoff.get(address, (0.0, 0.0))
                if now >= retry_at and address not in self._dialing:
                    self._dialing.add(address)
                    self._tasks.append(asyncio.create_task(self._dial(address)))
            self._tasks = [t for t in self._tasks if not t.done()]
            await asyncio.sleep(DIAL_EVERY)

    def _targets(self) -> set[str]:
        """Addresses to dial: members we should be linked to, and the bootstrap names.

        Dead members are dialed too (with backoff): after a partition heals, the two
        sides find each other again this way, and the member that was declared dead
        refutes it with a higher incarnation once it sees the news in our full state.
        Members that left are not dialed; a restarted node comes back with a new
        incarnation through its own bootstrap.
        """
        members = self.core.membership.members
        linked = {m.address for p, m in members.items() if p in self.links and m.address}
        wanted = {
            m.address
            for p, m in members.items()
            if m.state is not State.LEFT and p not in self.links and m.address
        }
        linked |= {a for a, p in self._address_peer.items() if p in self.links}
        own = self._own_addresses | {self.core.membership.address}
        return (wanted | self._bootstrap) - linked - own

    async def _dial(self, address: str) -> None:
        channel = _channel(address, self.settings)
        try:
            stub = mesh_pb2_grpc.MeshStub(channel)
            call = stub.Connect()
            await self._run_dialed(address, call)
            self._backoff.pop(address, None)
        except (grpc.RpcError, HandshakeError, TimeoutError, OSError, ValueError) as exc:
            _, delay = self._backoff.get(address, (0.0, 0.0))
            delay = min(MAX_BACKOFF, max(0.25, delay * 2))
            self._backoff[address] = (self.clock.now() + delay, delay)
            if isinstance(exc, HandshakeError):
                log.warning("mesh handshake with %s failed: %s", address, exc)
        finally:
            self._dialing.discard(address)
            await channel.close(grace=None)

    async def _run_dialed(self, address: str, call: Any) -> None:
        nonce = os.urandom(16)
        await call.write(self.core.hello(nonce=nonce, secret_set=self.secret is not None))
        reply = await asyncio.wait_for(call.read(), HANDSHAKE_TIMEOUT)
        if reply is _EOF or reply.WhichOneof("body") != "hello":
            raise HandshakeError("the peer did not answer with hello")
        hello = reply.hello
        self._address_peer[address] = hello.node_id
        if hello.node_id == self.core.node_id:
            self._own_addresses.add(address)
            await call.done_writing()
            return
        if hello.node_id in self.links:
            # Linked already (this dial started before the peer's own stream came up):
            # keep that stream rather than replace it and exchange full states again.
            await call.done_writing()
            return
        self._check_hello(hello)
        if self.secret is not None:
            if not hmac.compare_digest(
                hello.proof,
                _proof(self.secret, b"acceptor", nonce, hello.nonce, self.core.node_id, hello.node_id),
            ):
                self.core.stats.refused += 1
                raise HandshakeError(f"{hello.node_id} at {address} does not know the cluster secret")
            await call.write(
                pb.Envelope(
                    auth=pb.Auth(
                        proof=_proof(
                            self.secret, b"dialer", nonce, hello.nonce, self.core.node_id, hello.node_id
                        )
                    )
                )
            )
        else:
            await call.write(pb.Envelope(auth=pb.Auth()))
        await self._serve_link(hello, self.core.node_id, call)

    def _check_hello(self, hello: pb.Hello) -> None:
        if hello.protocol_version != PROTOCOL_VERSION:
            self.core.stats.refused += 1
            raise HandshakeError(f"{hello.node_id} speaks protocol {hello.protocol_version}")
        if hello.secret_set != (self.secret is not None):
            self.core.stats.refused += 1
            raise HandshakeError(f"{hello.node_id}: one side has a cluster secret and the other has none")
        if not hello.node_id:
            raise HandshakeError("hello without a node id")
        if any(m.state not in _MEMBER_STATES for m in hello.members):
            self.core.stats.malformed += 1  # checked here: a bad hello must not half-open a link
            raise HandshakeError(f"{hello.node_id}: a member with an unknown state in its hello")

    async def accept(self, stream: _Stream, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        first = await asyncio.wait_for(stream.read(), HANDSHAKE_TIMEOUT)
        if first is _EOF or first.WhichOneof("body") != "hello":
            self.core.stats.malformed += 1
            raise HandshakeError("the first message was not hello")
        hello = first.hello
        nonce = os.urandom(16)
        if hello.node_id == self.core.node_id:
            await stream.write(self.core.hello(nonce=nonce))
            return
        self._check_hello(hello)
        proof = (
            _proof(self.secret, b"acceptor", hello.nonce, nonce, hello.node_id, self.core.node_id)
            if self.secret is not None
            else b""
        )
        await stream.write(self.core.hello(nonce=nonce, proof=proof, secret_set=self.secret is not None))
        auth = await asyncio.wait_for(stream.read(), HANDSHAKE_TIMEOUT)
        if auth is _EOF or auth.WhichOneof("body") != "auth":
            if auth is not _EOF:
                self.core.stats.malformed += 1
            raise HandshakeError(f"{hello.node_id} did not finish the handshake")
        if self.secret is not None and not hmac.compare_digest(
            auth.auth.proof,
            _proof(self.secret, b"dialer", hello.nonce, nonce, hello.node_id, self.core.node_id),
        ):
            self.core.stats.refused += 1
            log.warning("refused %s (%s): it does not know the cluster secret", hello.node_id, context.peer())
            raise HandshakeError("wrong cluster secret")
        await self._serve_link(hello, hello.node_id, stream)

    # -- an established stream ----------------------------------------------------------------

    async def _serve_link(self, hello: pb.Hello, dialer: str, stream: _Stream) -> None:
        peer = hello.node_id
        existing = self.links.get(peer)
        if existing is not None:
            keep_new = dialer == min(peer, self.core.node_id) and existing.dialer != dialer
            if not keep_new:
                return  # the stream we have wins; this one closes
            existing.close()
            self.core.link_down(peer)
        link = _Link(peer, dialer, stream, self._count_sent)
        self.links[peer] = link
        now = self.clock.now()
        self.core._gossip(hello.members, now)
        sync = self.tracer.start_span(
            "hivemind.mesh.full_sync",
            attributes={"hivemind.mesh.peer": peer, "hivemind.mesh.address": hello.address},
        )
        if sync.is_recording():
            self._syncing[peer] = sync  # ends when the peer's last full-state message arrives
        self._dispatch(self.core.link_up(peer, hello.incarnation, hello.address, now))
        log.info("mesh link up: %s (%s)", peer, hello.address)
        reader = asyncio.create_task(self._read_loop(peer, stream))
        try:
            await asyncio.wait(
                [reader, asyncio.create_task(link.closed.wait())], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if self._syncing.get(peer) is sync:
                del self._syncing[peer]
                sync.set_status(Status(StatusCode.ERROR, "the link closed before the full state arrived"))
                sync.end()
            reader.cancel()
            link.close()
            if self.links.get(peer) is link:
                del self.links[peer]
                self.core.link_down(peer)
                log.info("mesh link down: %s", peer)

    async def _read_loop(self, peer: str, stream: _Stream) -> None:
        while True:
            try:
                envelope = await stream.read()
            except DecodeError as exc:
                self.core.stats.malformed += 1
                log.warning("closing the stream of %s: undecodable message: %s", peer, exc)
                return
            if envelope is _EOF:
                return
            self.core.stats.bytes_received += envelope.ByteSize()
            try:
                outs = self.core.receive(peer, envelope, self.clock.now())
            except (ValueError, KeyError) as exc:
                self.core.stats.malformed += 1
                log.warning("closing the stream of %s: bad message: %s", peer, exc)
                return
            if peer in self._syncing and peer in self.core.full_state_from:
                self._syncing.pop(peer).end()
            self._dispatch(outs)


class _Servicer(mesh_pb2_grpc.MeshServicer):  # type: ignore[misc]
    def __init__(self, transport: MeshTransport) -> None:
        self._transport = transport

    async def Connect(
        self, request_iterator: AsyncIterator[pb.Envelope], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        try:
            await self._transport.accept(context, context)
        except (HandshakeError, TimeoutError) as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except DecodeError as exc:  # a handshake message that does not parse
            self._transport.core.stats.malformed += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable message: {exc}")
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass


async def _resolve(peers: tuple[str, ...]) -> set[str]:
    """Every address of every bootstrap name (a headless Service resolves to all pods)."""
    out: set[str] = set()
    loop = asyncio.get_running_loop()
    for peer in peers:
        host, _, port = peer.rpartition(":")
        if not host or not port.isdigit():
            continue
        try:
            infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError:
            continue
        for family, *_, sockaddr in infos:
            ip = sockaddr[0]
            out.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return out


def _read_secret(path: str) -> bytes | None:
    if not path:
        return None
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SettingsError(f"mesh.secret_file {path}: {exc.strerror or exc}") from exc
    if not secret:
        raise SettingsError(f"mesh.secret_file {path} is empty")
    return secret


def _server_credentials(s: MeshSettings) -> grpc.ServerCredentials | None:
    tls = s.tls
    if not (tls.cert_file or tls.key_file or tls.ca_file):
        return None
    if not (tls.cert_file and tls.key_file and tls.ca_file):
        raise SettingsError("mesh.tls needs cert_file, key_file and ca_file (mutual TLS)")
    return grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=Path(tls.ca_file).read_bytes(),
        require_client_auth=True,
    )


def _channel(address: str, s: MeshSettings) -> grpc.aio.Channel:
    tls = s.tls
    if tls.cert_file:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(tls.ca_file).read_bytes(),
            private_key=Path(tls.key_file).read_bytes(),
            certificate_chain=Path(tls.cert_file).read_bytes(),
        )
        return grpc.aio.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
