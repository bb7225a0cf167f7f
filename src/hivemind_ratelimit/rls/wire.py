"""A fast path for RLS bytes: RateLimitRequest bytes -> Request, Decision -> response bytes.

Reading a request through the protobuf runtime and its message objects costs about
10 µs for two descriptors here, most of it in creating a Python wrapper per nested
message; writing the response through message objects about 6 µs. A native transport
hands the servicer bytes, so the common shapes are read and written directly in the
protobuf wire format instead:

- `parse_request` reads the shape Envoy sends: `domain`, `descriptors` with `entries`
  (key, value), `hits_addend`, single-byte tags in any order. Anything else (a rate
  limit override, a descriptor-level hits_addend, unknown fields, a bound broken,
  invalid UTF-8) returns None and the caller takes the full path through
  `convert.request_from_proto`, which gives the answer and the error message. So this
  never changes behaviour; it only skips the slow path when the fast one is certain.
- `response_bytes` writes exactly the fields `convert.response_to_proto` sets, in
  field-number order, as protobuf serialises them; a decision with quota-mode metadata
  (a Struct) goes through protobuf.

Both are checked against the protobuf runtime in tests/transport/test_wire.py.
"""

from __future__ import annotations

from hivemind_ratelimit.core.limiter import (
    Code,
    CurrentLimit,
    Decision,
    DescriptorStatus,
    Plan,
    Request,
    RequestDescriptor,
)
from hivemind_ratelimit.rls.convert import response_to_proto
from hivemind_ratelimit.settings import RequestLimits

_new_descriptor = RequestDescriptor._make
_new_request = Request._make


def _varint(value: int) -> bytes:
    if value < 0x4000:
        return _VARINTS[value]
    if value < 0x10000000:  # 14 bits at a time from the tables
        return _LOW14[value & 0x3FFF] + _VARINTS[value >> 14]
    if value < 0x40000000000:
        return _LOW14[value & 0x3FFF] + _LOW14[(value >> 14) & 0x3FFF] + _VARINTS[value >> 28]
    return _encode_varint(value)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# One and two bytes (~0.6 MB each): the low 14 bits of a longer varint, with their
# continuation bits, and whole varints below 2**14.
_VARINTS = [_encode_varint(n) for n in range(0x4000)]
_LOW14 = [bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(0x4000)]
_SMALL = _VARINTS[:0x80]


def parse_request(data: bytes, bounds: RequestLimits) -> Request | None:
    """The request, or None when the full path must decide (see the module docstring)."""
    n = len(data)
    i = 0
    domain = b""
    descriptors: list[RequestDescriptor] = []
    hits = 0
    max_descriptors = bounds.max_descriptors
    max_entries = bounds.max_entries
    max_bytes = bounds.max_entry_bytes
    try:
        while i < n:
            tag = data[i]
            i += 1
            if tag == 0x18:  # hits_addend: uint32 varint
                hits = 0
                shift = 0
                while True:
                    b = data[i]
                    i += 1
                    hits |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 28:
                        return None
                if hits > 0xFFFFFFFF:
                    return None
                continue
            size = data[i]
            i += 1
            if size & 0x80:
                size = (size & 0x7F) | (data[i] << 7)
                i += 1
                if size >= 0x4000:  # a longer field is no common case
                    return None
            end = i + size
            if end > n:
                return None
            if tag == 0x0A:  # domain
                domain = data[i:end]
            elif tag == 0x12:  # a descriptor: only entries (field 1)
                if len(descriptors) == max_descriptors:
                    return None
                pairs: list[tuple[str, str]] = []
                while i < end:
                    if data[i] != 0x0A:
                        return None
                    size = data[i + 1]
                    if size & 0x80:
                        return None
                    i += 2
                    stop = i + size
                    if stop > end or len(pairs) == max_entries:
                        return None
                    key = value = ""
                    while i < stop:  # an Entry: key (1), value (2)
                        field = data[i]
                        size = data[i + 1]
                        if size & 0x80 or size > max_bytes:
                            return None
                        i += 2
                        if i + size > stop:
                            return None
                        if field == 0x0A:
                            key = data[i : i + size].decode()
                        elif field == 0x12:
                            value = data[i : i + size].decode()
                        else:
                            return None
                        i += size
                    if not key:
                        return None
                    pairs.append((key, value))
                if not pairs:
                    return None
                descriptors.append(_new_descriptor((tuple(pairs), None, None)))
            else:
                return None
            i = end
    except (IndexError, UnicodeDecodeError):
        return None
    if not domain or len(domain) > bounds.max_domain_bytes or not descriptors:
        return None
    try:
        text = domain.decode()
    except UnicodeDecodeError:
        return None
    return _new_request((text, tuple(descriptors), hits))


# id(limit) -> (limit, encoded): the limiter hands out one CurrentLimit object per rule
# limit, so identity finds it without hashing the dataclass; the object is kept alive
# here so its id cannot be reused while cached.
_LIMIT_BYTES: dict[int, tuple[CurrentLimit, bytes]] = {}


def _limit_bytes(limit: CurrentLimit) -> bytes:
    """The encoded `current_limit` field (tag, length, message); cached per limit object."""
    cached = _LIMIT_BYTES.get(id(limit))
    if cached is not None and cached[0] is limit:
        return cached[1]
    body = b""
    if limit.requests_per_unit:
        body += b"\x08" + _varint(limit.requests_per_unit)
    if limit.unit:
        body += b"\x10" + _varint(int(limit.unit))
    if limit.name:
        name = limit.name.encode()
        body += b"\x1a" + _varint(len(name)) + name
    found = b"\x12" + _varint(len(body)) + body
    if len(_LIMIT_BYTES) > 4096:
        _LIMIT_BYTES.clear()
    _LIMIT_BYTES[id(limit)] = (limit, found)
    return found


_CODE = [b"\x08" + _SMALL[n] for n in range(3)]  # field 1 (code) of either message


def response_bytes(decision: Decision) -> bytes:
    """The serialised RateLimitResponse for a decision, as response_to_proto + serialise."""
    if decision.quota_mode:
        return response_to_proto(decision).SerializeToString()  # type: ignore[no-any-return]
    varint = _varint
    parts = [_CODE[decision.overall]] if decision.overall else []
    for status in decision.statuses:
        parts.append(_status_bytes(status))
    for key, value in decision.headers:
        k, v = key.encode(), value.encode()
        body = (b"\x0a" + varint(len(k)) + k if k else b"") + (b"\x12" + varint(len(v)) + v if v else b"")
        parts.append(b"\x1a" + varint(len(body)) + body)
    return b"".join(parts)


def _status_bytes(status: DescriptorStatus) -> bytes:
    """One encoded `statuses` field (tag, length, DescriptorStatus)."""
    code, limit, remaining, reset = status
    body = _CODE[code] if code else b""
    if limit is not None:
        body += _limit_bytes(limit)
    body += _remaining_field(remaining)
    if limit is not None:  # duration_until_reset is set whenever the limit is
        body += _reset_field(reset)
    return b"\x12" + _varint(len(body)) + body


class PlanEncoder:
    """Response bytes for the results of `Limiter.decide_plan`, as `response_bytes`
    writes them for the same decision: each descriptor's constant part (its limit, or
    the whole status of a descriptor without one) is encoded once per plan.
    """

    __slots__ = ("_items", "plan")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        items: list[tuple[bytes, bytes, bytes]] = []
        for item in plan.items:
            limit = item.current
            if limit is None:
                assert item.status is not None
                items.append((_status_bytes(item.status), b"", b""))
            else:
                encoded = _limit_bytes(limit)
                items.append((b"", _CODE[Code.OK] + encoded, _CODE[Code.OVER_LIMIT] + encoded))
        self._items = tuple(items)

    def encode(self, results: list[int]) -> bytes:
        # Table lookups inline: this runs once per request.
        remaining_table, reset_table, heads, table = _REMAINING, _RESET, _STATUS_HEADS, _TABLE
        parts = [_CODE[results[0]]]
        i = 1
        for fixed, ok, over in self._items:
            if fixed:
                parts.append(fixed)
                i += 2
                continue
            remaining = results[i]
            reset = results[i + 1]
            i += 2
            tail = reset_table[reset] if reset < table else _reset_field(reset)
            if remaining < 0:
                body = over + tail
            elif remaining < table:
                body = ok + remaining_table[remaining] + tail
            else:
                body = ok + b"\x18" + _varint(remaining) + tail
            size = len(body)
            parts.append(heads[size] + body if size < 0x80 else b"\x12" + _varint(size) + body)
        return b"".join(parts)


def _remaining_field(remaining: int) -> bytes:
    """`limit_remaining` (absent when 0)."""
    return _REMAINING[remaining] if remaining < _TABLE else b"\x18" + _varint(remaining)


def _reset_field(seconds: int) -> bytes:
    """`duration_until_reset` as a Duration of whole seconds (empty when 0)."""
    if seconds < _TABLE:
        return _RESET[seconds]
    encoded = _varint(seconds)
    return b"\x22" + _SMALL[len(encoded) + 1] + b"\x08" + encoded


_TABLE = 3601  # remaining counts and reset seconds up to an hour: precomputed (~0.3 MB)
_REMAINING = [b""] + [b"\x18" + _varint(n) for n in range(1, _TABLE)]
_RESET = [b"\x22\x00"] + [
    b"\x22" + _SMALL[len(_varint(n)) + 1] + b"\x08" + _varint(n) for n in range(1, _TABLE)
]
_STATUS_HEADS = [b"\x12" + _SMALL[n] for n in range(0x80)]  # tag and length of a short status
