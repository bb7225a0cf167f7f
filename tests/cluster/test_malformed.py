"""Junk on the mesh port: raw bytes, and a real gRPC client that breaks the peer protocol.

None of it may hurt the node: it keeps answering RLS, its link to its real peer stays
up (the link never re-forms: no second full state arrives from the peer), counts keep
flowing, and the bad streams are closed and counted as malformed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from cluster.cluster_harness import BIG_LIMIT, DOMAIN, RULES, Cluster
from cluster.conftest import ClusterFactory
from hivemind_ratelimit.mesh.proto import mesh_pb2 as pb
from integration.hivemind_harness import LOOPBACK, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

CONNECT = "/hivemind.mesh.v1.Mesh/Connect"
STEP_TIMEOUT = 10.0  # the node's handshake timeout is 5 s
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def envelope(**body: Any) -> bytes:
    return pb.Envelope(**body).SerializeToString()


def hello(node_id: str, **extra: Any) -> bytes:
    # An address nobody listens on: the node may dial it, and fails.
    return envelope(
        hello=pb.Hello(node_id=node_id, incarnation=1, address=f"{LOOPBACK}:1", protocol_version=1, **extra)
    )


# -- raw TCP -----------------------------------------------------------------------------


def send_raw(port: int, payload: bytes, *, linger: float = 0.2) -> None:
    with socket.create_connection((LOOPBACK, port), timeout=5.0) as sock, contextlib.suppress(OSError):
        sock.sendall(payload)
        sock.settimeout(linger)
        with contextlib.suppress(TimeoutError):
            sock.recv(65536)


def raw_junk(port: int) -> None:
    rng = random.Random(7)
    send_raw(port, b"")  # connect and close
    send_raw(port, rng.randbytes(64 * 1024))
    send_raw(port, b"GET /mesh HTTP/1.1\r\nHost: x\r\n\r\n")
    send_raw(port, H2_PREFACE + rng.randbytes(4096))
    # A well-formed HTTP/2 frame header announcing a huge frame, then nothing.
    send_raw(port, H2_PREFACE + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")
    for _ in range(20):
        send_raw(port, rng.randbytes(rng.randrange(1, 512)), linger=0.0)


# -- gRPC sessions -----------------------------------------------------------------------

Session = Callable[[Any], Awaitable[None]]


async def _read_until_closed(call: Any) -> None:
    """Read until the node ends the stream (EOF or an error status)."""
    with contextlib.suppress(grpc.RpcError):
        while await call.read() is not grpc.aio.EOF:
            pass


async def _handshake(call: Any, node_id: str) -> None:
    await call.write(hello(node_id))
    reply = pb.Envelope.FromString(await call.read())
    assert reply.WhichOneof("body") == "hello", reply
    await call.write(envelope(auth=pb.Auth()))
    first = pb.Envelope.FromString(await call.read())  # the node's full state
    assert first.WhichOneof("body") == "full_state", first


async def not_hello_first(call: Any) -> None:
    await call.write(envelope(sync=pb.Sync()))
    await _read_until_closed(call)


async def bytes_after_hello(call: Any) -> None:
    await call.write(hello("intruder-bytes"))
    await call.read()
    await call.write(b"\xff\xfe\xfd not a protobuf message at all")
    await _read_until_closed(call)


async def ping_instead_of_auth(call: Any) -> None:
    await call.write(hello("intruder-ping"))
    await call.read()
    await call.write(envelope(ping=pb.Ping(seq=1)))
    await _read_until_closed(call)


async def hello_with_unknown_member_state(call: Any) -> None:
    member = pb.Member(node_id="ghost", incarnation=1, address=f"{LOOPBACK}:1", state=42)  # type: ignore[arg-type]
    await call.write(hello("intruder-state", members=[member]))
    await call.read()
    await call.write(envelope(auth=pb.Auth()))
    await _read_until_closed(call)


async def second_hello_on_a_link(call: Any) -> None:
    await _handshake(call, "intruder-hello")
    await call.write(hello("intruder-hello"))
    await _read_until_closed(call)


async def empty_envelope_on_a_link(call: Any) -> None:
    await _handshake(call, "intruder-empty")
    await call.write(b"")
    await _read_until_closed(call)


async def ragged_deltas_on_a_link(call: Any) -> None:
    await _handshake(call, "intruder-ragged")
    deltas = pb.Deltas(slot="intruder-ragged#1", keys=["a", "b"], window_starts=[0], counts=[1, 2, 3])
    await call.write(envelope(sync=pb.Sync(deltas=deltas)))
    await _read_until_closed(call)


async def garbage_on_a_link(call: Any) -> None:
    await _handshake(call, "intruder-garbage")
    await call.write(random.Random(3).randbytes(2048))
    await _read_until_closed(call)


async def oversized_message(call: Any) -> None:
    await call.write(hello("intruder-big"))
    await call.read()
    await call.write(b"\x0a" + b"\xff" * (9 * 1024 * 1024))  # beyond the 8 MiB bound
    await _read_until_closed(call)


SESSIONS: list[Session] = [
    not_hello_first,
    bytes_after_hello,
    ping_instead_of_auth,
    hello_with_unknown_member_state,
    second_hello_on_a_link,
    empty_envelope_on_a_link,
    ragged_deltas_on_a_link,
    garbage_on_a_link,
    oversized_message,
]
# Every session but the oversized one sends a message the node reads and rejects: each
# such stream is closed and counted as malformed. (gRPC itself refuses a message over
# the size bound before the node sees it.)
COUNTED = len(SESSIONS) - 1


async def run_sessions(address: str) -> None:
    for session in SESSIONS:
        async with grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            connect = channel.stream_stream(CONNECT)  # bytes in, bytes out
            call = connect(timeout=STEP_TIMEOUT)
            try:
                await asyncio.wait_for(session(call), STEP_TIMEOUT)
            except grpc.RpcError:
                pass  # the node ended the call while we wrote or read: what we want
            finally:
                call.cancel()


def malformed(cluster: Cluster, index: int) -> int:
    return int(cluster[index].http("/mesh").json()["sync"]["malformed_messages"])


def full_states_received(cluster: Cluster, index: int) -> int:
    return int(cluster[index].http("/mesh").json()["sync"]["messages_received"].get("full_state", 0))


def test_junk_on_the_mesh_port_does_not_hurt_the_node(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(RULES, 2)
    cluster.wait_linked()
    entries = {"big": "junk"}
    assert cluster.clients.hit(cluster[0].grpc_target, DOMAIN, entries, 1) == 1
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - 1)
    links_before = [full_states_received(cluster, i) for i in (0, 1)]
    malformed_before = malformed(cluster, 0)

    raw_junk(cluster[0].mesh_port)
    asyncio.run(run_sessions(cluster[0].mesh_address))
    raw_junk(cluster[0].mesh_port)

    assert cluster[0].running, cluster[0].log_tail()
    wait_until(
        lambda: malformed(cluster, 0) >= malformed_before + COUNTED,
        5.0,
        what=f"{COUNTED} streams counted as malformed",
    )
    # Still answering, still linked to its peer on the same stream, still sharing counts.
    assert cluster[0].http("/ready").status == 200
    assert cluster.clients.hit(cluster[0].grpc_target, DOMAIN, entries, 1) == 1
    assert cluster.clients.hit(cluster[1].grpc_target, DOMAIN, entries, 1) == 1
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - 3)
    peer = cluster.members(0)["n1"]
    assert (peer["state"], peer["linked"]) == ("alive", True), peer
    assert [full_states_received(cluster, i) for i in (0, 1)] == links_before
    assert "Traceback" not in cluster[0].log(), cluster[0].log_tail()
