"""Hostile input on the gRPC port, against every transport.

Random bytes, a truncated preface, frames for closed streams, a header block far over
the limit, 10,000 streams opened and reset. After each the server is up and answers
a well-behaved client; after several rounds its memory is back near where it was
after the first (per-stream and per-connection state is freed, nothing leaks).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from integration.hivemind_harness import LOOPBACK, RPC_TIMEOUT, HivemindProcess, grpc_channel, make_request
from transport.conftest import DOMAIN
from transport.h2raw import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    RST_STREAM,
    RawH2,
    frame,
    grpc_message,
    request_headers,
)

pytestmark = pytest.mark.integration

RESETS = 10_000
# RSS growth allowed over 2 rounds once 2 rounds have let the allocators settle. grpcio's
# RSS climbs by ~60 MB over its first rounds of rapid resets and then stays (allocator
# high-water mark); the nghttp2 transport's does not move.
MEMORY_SLACK = 16 * 1024 * 1024
GRPCIO_MEMORY_SLACK = 96_000_000


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def assert_answers(server: HivemindProcess) -> None:
    """A well-behaved client gets an answer.

    The native transport must answer the first call. grpcio, just after a flood of
    rapid resets, now and then answers a fresh channel's first call with CANCELLED
    (seen here, not a Hivemind bug): a grpcio server gets two more tries.
    """
    assert server.running, server.log_tail()
    tries = 3 if "server.transport=grpcio" in " ".join(server.command()) else 1
    for attempt in range(tries):
        with grpc_channel(server.grpc_target) as channel:
            stub: Any = rls_pb2_grpc.RateLimitServiceStub(channel)
            try:
                reply = stub.ShouldRateLimit(make_request(DOMAIN, {"k": "good"}), timeout=RPC_TIMEOUT)
            except grpc.RpcError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.5)
                continue
        assert reply.overall_code == rls_pb2.RateLimitResponse.OK
        return


def _drain(sock: socket.socket, limit: float = 1.0) -> None:
    sock.settimeout(limit)
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


def random_bytes(server: HivemindProcess, seed: int) -> None:
    noise = random.Random(seed).randbytes(64 * 1024)
    for payload in (noise, PREFACE + noise, PREFACE + frame(4, 0, 0) + noise):
        with socket.create_connection((LOOPBACK, server.grpc_port), timeout=5) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(payload)
            _drain(sock)


def truncated_preface(server: HivemindProcess) -> None:
    with socket.create_connection((LOOPBACK, server.grpc_port), timeout=5) as sock:
        sock.sendall(PREFACE[:11])
    # ...and one left hanging while a good client is served.
    with socket.create_connection((LOOPBACK, server.grpc_port), timeout=5) as idle:
        idle.sendall(PREFACE[:7])
        assert_answers(server)


def frames_for_closed_streams(server: HivemindProcess) -> None:
    body = grpc_message(make_request(DOMAIN, {"k": "closed"}).SerializeToString())
    with RawH2(LOOPBACK, server.grpc_port) as h2:
        h2.connect()
        stream = h2.request(body)
        h2.pump(5.0, until=stream)
        assert h2.streams[stream].header("grpc-status") == "0"
        # DATA, RST_STREAM and WINDOW_UPDATE on the finished stream, DATA on one never opened.
        with contextlib.suppress(OSError):
            h2.send(frame(DATA, END_STREAM, stream, body))
            h2.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))
            h2.send(frame(8, 0, stream, struct.pack(">I", 1000)))
            h2.send(frame(DATA, 0, stream + 100, body))
            # HEADERS reusing the closed stream's id: a connection error.
            h2.send(h2.headers_frame(stream, request_headers(), end_stream=True))
        h2.pump(1.0)


def oversized_header_block(server: HivemindProcess) -> None:
    with RawH2(LOOPBACK, server.grpc_port) as h2:
        h2.connect()
        stream_id = h2.new_stream()
        headers = request_headers(extra=[(f"x-big-{i}", "v" * 16000) for i in range(64)])  # ~1 MB
        block = h2.encoder.encode(headers)
        chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
        with contextlib.suppress(OSError):
            h2.send(frame(HEADERS, 0, stream_id, chunks[0]))
            for i, chunk in enumerate(chunks[1:], start=1):
                h2.send(frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, stream_id, chunk))
        h2.pump(2.0, until=stream_id)
        answer = h2.streams.get(stream_id)
        # Never served: refused (a reset, an error status, the connection closed) or ignored.
        assert answer is None or answer.reset is not None or answer.header("grpc-status") != "0", answer


def streams_opened_and_reset(server: HivemindProcess, count: int) -> None:
    """HEADERS without END_STREAM, then RST_STREAM(CANCEL), `count` times.

    Servers protect themselves against rapid reset by closing such connections (nghttp2
    after about 1,000 resets); this reconnects and goes on until `count` were sent.
    """
    sent = 0
    while sent < count:
        with RawH2(LOOPBACK, server.grpc_port) as h2:
            h2.connect()
            batch = b""
            try:
                while sent < count:
                    stream_id = h2.new_stream()
                    batch += h2.headers_frame(stream_id, request_headers(), end_stream=False)
                    batch += frame(RST_STREAM, 0, stream_id, struct.pack(">I", 8))
                    sent += 1
                    if sent % 100 == 0:
                        h2.send(batch)
                        batch = b""
                        h2.pump(0.0)
                        if h2.closed or h2.goaway is not None:
                            break
                if batch:
                    h2.send(batch)
                h2.pump(0.5)
            except OSError:
                pass  # closed by the server: reconnect


HOSTILE = {
    "random bytes": lambda server, n: random_bytes(server, n),
    "truncated preface": lambda server, n: truncated_preface(server),
    "frames for closed streams": lambda server, n: frames_for_closed_streams(server),
    "oversized header block": lambda server, n: oversized_header_block(server),
    "10,000 streams opened and reset": lambda server, n: streams_opened_and_reset(server, RESETS),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_leaves_the_server_answering(case: str, server: HivemindProcess) -> None:
    HOSTILE[case](server, 1)
    assert_answers(server)


def test_memory_returns_near_baseline_after_rounds_of_hostile_input(
    server: HivemindProcess, transport: str
) -> None:
    # grpcio's RSS keeps rising for several rounds of rapid resets (+60 MB, then +25 MB)
    # before it levels off: it gets a wider bound, still one that a leak would break.
    slack = GRPCIO_MEMORY_SLACK if transport == "grpcio" else MEMORY_SLACK
    assert server.pid is not None
    for round_index in range(2):  # allocators and caches settle
        for run in HOSTILE.values():
            run(server, round_index)
    assert_answers(server)
    baseline = rss(server.pid)
    for round_index in range(2):
        for run in HOSTILE.values():
            run(server, 3 + round_index)
        assert_answers(server)
    grown = rss(server.pid) - baseline
    assert grown < slack, f"RSS grew by {grown / 1e6:.1f} MB over 2 rounds"
