"""rls/wire.py against the protobuf runtime: the fast path never answers differently.

- `parse_request` gives exactly `request_from_proto(FromString(bytes))` whenever it
  gives anything, and gives None (the full path decides) for anything it does not
  handle: overrides, descriptor hits_addend, unknown fields, broken bounds, bad UTF-8.
- `response_bytes` equals `response_to_proto(decision).SerializeToString()`.
"""

from __future__ import annotations

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.core.limiter import Code, CurrentLimit, Decision, DescriptorStatus
from hivemind_ratelimit.core.windows import Unit
from hivemind_ratelimit.errors import InvalidRequest
from hivemind_ratelimit.rls.convert import request_from_proto, response_to_proto
from hivemind_ratelimit.rls.wire import parse_request, response_bytes
from hivemind_ratelimit.settings import RequestLimits

BOUNDS = RequestLimits(max_descriptors=8, max_entries=4, max_entry_bytes=40, max_domain_bytes=30)
Entry = ratelimit_pb2.RateLimitDescriptor.Entry

text = st.text(max_size=50)
entries = st.lists(st.tuples(text, text), max_size=6)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    message = rls_pb2.RateLimitRequest(domain=draw(text), hits_addend=draw(st.integers(0, 2**32 - 1)))
    for pairs in draw(st.lists(entries, max_size=10)):
        descriptor = message.descriptors.add()
        for key, value in pairs:
            descriptor.entries.append(Entry(key=key, value=value))
        if draw(st.booleans()) and draw(st.booleans()):
            descriptor.limit.requests_per_unit = draw(st.integers(0, 100))
            descriptor.limit.unit = draw(st.integers(0, 7))
        if draw(st.booleans()) and draw(st.booleans()):
            descriptor.hits_addend.value = draw(st.integers(0, 100))
    data = message.SerializeToString()
    if draw(st.booleans()) and draw(st.booleans()):
        data += draw(st.binary(max_size=8))  # unknown or broken trailing fields
    return data


def slow(data: bytes) -> object:
    try:
        return request_from_proto(rls_pb2.RateLimitRequest.FromString(data), BOUNDS)
    except (InvalidRequest, DecodeError) as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(requests())
def test_parse_request_agrees_with_protobuf(data: bytes) -> None:
    fast = parse_request(data, BOUNDS)
    if fast is not None:
        assert fast == slow(data)


def test_parse_request_takes_the_common_shape() -> None:
    message = rls_pb2.RateLimitRequest(domain="edge", hits_addend=3)
    message.descriptors.add().entries.append(Entry(key="remote_address", value="10.0.0.1"))
    message.descriptors.add().entries.extend([Entry(key="a", value="é" * 10), Entry(key="b", value="")])
    data = message.SerializeToString()
    assert parse_request(data, BOUNDS) == slow(data)
    assert parse_request(data, BOUNDS) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x0a\x00",
        b"\x0a\x02\xff\xfe\x12\x05\x0a\x03\x0a\x01k",
        b"\x12\x00",
        b"\x0a\x01d\x12\x02\x0a\x00",
    ],
)
def test_parse_request_leaves_odd_input_to_the_full_path(data: bytes) -> None:
    assert parse_request(data, BOUNDS) is None


limits = st.builds(
    CurrentLimit,
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(Unit)),
    st.text(max_size=20),
)
statuses = st.builds(
    DescriptorStatus,
    st.sampled_from(list(Code)),
    st.none() | limits,
    st.integers(0, 2**32 - 1),
    st.integers(0, 400 * 86400),
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(Code)),
    st.lists(statuses, max_size=6),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3),
)
def test_response_bytes_equal_protobuf(
    overall: Code, items: list[DescriptorStatus], headers: list[tuple[str, str]]
) -> None:
    decision = Decision(overall, items, headers=headers)
    assert response_bytes(decision) == response_to_proto(decision).SerializeToString()


def test_response_bytes_with_quota_metadata() -> None:
    decision = Decision(Code.OK, [DescriptorStatus(Code.OK)], quota_violations=[0], quota_mode=True)
    assert rls_pb2.RateLimitResponse.FromString(response_bytes(decision)) == response_to_proto(decision)
