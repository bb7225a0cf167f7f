"""A small raw HTTP/2 client for hostile and edge-case tests: frames written by hand.

Enough to open streams with any headers (HPACK through the `hpack` package), send
DATA, RST_STREAM, CONTINUATION and arbitrary bytes, and read frames back, decoding
response headers. Not a general client: no flow control beyond a large window.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1

RLS_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def grpc_message(body: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + struct.pack(">I", len(body)) + body


def request_headers(path: str = RLS_PATH, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass
class Stream:
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class RawH2:
    """One connection; `connect()` sends the preface and a SETTINGS frame."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.streams: dict[int, Stream] = {}
        self.goaway: Frame | None = None
        self.closed = False
        self.next_id = 1

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def connect(self) -> RawH2:
        # A large connection window so responses are never held back by us.
        self.send(PREFACE + frame(SETTINGS, 0, 0) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))
        return self

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _reply(self, data: bytes) -> None:
        """A frame sent in answer while reading: the server may have closed already."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def headers_frame(
        self, stream_id: int, headers: Iterable[tuple[str, str]], *, end_stream: bool = False
    ) -> bytes:
        block = self.encoder.encode(list(headers))
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, block)

    def new_stream(self) -> int:
        stream_id = self.next_id
        self.next_id += 2
        return stream_id

    def request(
        self,
        body: bytes | None,
        *,
        path: str = RLS_PATH,
        extra: Sequence[tuple[str, str]] = (),
        end_stream: bool = True,
    ) -> int:
        """Open a stream with a gRPC request (body already framed, or None)."""
        stream_id = self.new_stream()
        headers = self.headers_frame(stream_id, request_headers(path, extra), end_stream=body is None)
        data = b"" if body is None else frame(DATA, END_STREAM if end_stream else 0, stream_id, body)
        self.send(headers + data)
        return stream_id

    # -- reading ---------------------------------------------------------------------

    def read_frame(self, deadline: float) -> Frame | None:
        while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                self.closed = True
                return None
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk
        length = int.from_bytes(self.buffer[:3], "big")
        kind, flags = self.buffer[3], self.buffer[4]
        stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
        payload, self.buffer = self.buffer[9 : 9 + length], self.buffer[9 + length :]
        return Frame(kind, flags, stream_id, payload)

    def pump(self, timeout: float, until: int | None = None) -> None:
        """Read frames for `timeout` seconds, or until stream `until` has ended."""
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and (s := self.streams.get(until)) and (s.ended or s.reset is not None):
                return
            got = self.read_frame(deadline)
            if got is None:
                return
            self.handle(got)

    def handle(self, f: Frame) -> None:
        stream = self.streams.setdefault(f.stream_id, Stream()) if f.stream_id else None
        if f.kind == SETTINGS and not f.flags & ACK:
            self._reply(frame(SETTINGS, ACK, 0))
        elif f.kind == PING and not f.flags & ACK:
            self._reply(frame(PING, ACK, 0, f.payload))
        elif f.kind == GOAWAY:
            self.goaway = f
        elif f.kind == HEADERS and stream is not None:
            block = f.payload
            if f.flags & 0x8:  # PADDED
                block = block[1 : len(block) - block[0]]
            if f.flags & 0x20:  # PRIORITY
                block = block[5:]
            stream.headers += [(str(k), str(v)) for k, v in self.decoder.decode(block)]
            stream.ended = stream.ended or bool(f.flags & END_STREAM)
        elif f.kind == DATA and stream is not None:
            stream.data += f.payload
            stream.ended = stream.ended or bool(f.flags & END_STREAM)
            if f.payload:
                self._reply(frame(WINDOW_UPDATE, 0, f.stream_id, struct.pack(">I", len(f.payload))))
        elif f.kind == RST_STREAM and stream is not None:
            stream.reset = int.from_bytes(f.payload[:4], "big")
