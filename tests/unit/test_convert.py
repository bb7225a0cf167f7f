"""Protobuf <-> domain conversion: input bounds on the way in, every field on the way out."""

from __future__ import annotations

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format

from hivemind_ratelimit.core.limiter import (
    UINT32_MAX,
    Code,
    CurrentLimit,
    Decision,
    DescriptorStatus,
    Request,
    RequestDescriptor,
)
from hivemind_ratelimit.core.windows import Unit
from hivemind_ratelimit.errors import InvalidRequest
from hivemind_ratelimit.rls.convert import code_name, request_from_proto, response_to_proto
from hivemind_ratelimit.settings import RequestLimits

BOUNDS = RequestLimits()
Entry = ratelimit_pb2.RateLimitDescriptor.Entry


def descriptor(*pairs: tuple[str, str], **fields: object) -> ratelimit_pb2.RateLimitDescriptor:
    return ratelimit_pb2.RateLimitDescriptor(entries=[Entry(key=k, value=v) for k, v in pairs], **fields)


def request(*descriptors: ratelimit_pb2.RateLimitDescriptor, domain: str = "d", hits: int = 0) -> Request:
    message = rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)
    return request_from_proto(message, BOUNDS)


def test_request_fields() -> None:
    converted = request(
        descriptor(("a", "1"), ("b", "")),
        descriptor(
            ("c", "3"),
            limit=ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(
                requests_per_unit=7, unit=rls_pb2.RateLimitResponse.RateLimit.MINUTE
            ),
        ),
        descriptor(("d", "4"), hits_addend={"value": 0}),
        descriptor(("e", "5"), hits_addend={"value": 9}),
        hits=3,
    )
    assert converted == Request(
        "d",
        (
            RequestDescriptor((("a", "1"), ("b", ""))),
            RequestDescriptor((("c", "3"),), override=(7, Unit.MINUTE)),
            RequestDescriptor((("d", "4"),), hits_addend=0),  # set to 0 is not unset
            RequestDescriptor((("e", "5"),), hits_addend=9),
        ),
        3,
    )


def test_override_with_an_unknown_unit_number_becomes_unknown() -> None:
    converted = request(
        descriptor(
            ("c", "3"),
            limit=ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=7, unit=42),
        )
    )
    assert converted.descriptors[0].override == (7, Unit.UNKNOWN)


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (rls_pb2.RateLimitRequest(domain="", descriptors=[descriptor(("a", "1"))]), "domain"),
        (rls_pb2.RateLimitRequest(domain="x" * 257, descriptors=[descriptor(("a", "1"))]), "256 bytes"),
        (rls_pb2.RateLimitRequest(domain="é" * 129, descriptors=[descriptor(("a", "1"))]), "256 bytes"),
        (rls_pb2.RateLimitRequest(domain="d"), "at least one descriptor"),
        (rls_pb2.RateLimitRequest(domain="d", descriptors=[descriptor(("a", "1"))] * 65), "65 descriptors"),
        (rls_pb2.RateLimitRequest(domain="d", descriptors=[descriptor()]), "descriptors[0] has no entries"),
        (
            rls_pb2.RateLimitRequest(
                domain="d", descriptors=[descriptor(("a", "1")), descriptor(*[("k", "v")] * 33)]
            ),
            "descriptors[1] has 33 entries",
        ),
        (rls_pb2.RateLimitRequest(domain="d", descriptors=[descriptor(("", "1"))]), "empty key"),
        (rls_pb2.RateLimitRequest(domain="d", descriptors=[descriptor(("k" * 1025, "1"))]), "1024 bytes"),
        (rls_pb2.RateLimitRequest(domain="d", descriptors=[descriptor(("k", "v" * 1025))]), "1024 bytes"),
        (rls_pb2.RateLimitRequest(domain="d", descriptors=[descriptor(("k", "€" * 342))]), "1024 bytes"),
    ],
)
def test_bounds(message: rls_pb2.RateLimitRequest, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request_from_proto(message, BOUNDS)
    assert words in str(caught.value)


def test_at_the_bounds_is_fine() -> None:
    request_from_proto(
        rls_pb2.RateLimitRequest(
            domain="x" * 256,
            descriptors=[descriptor(("k" * 1024, "€" * 341), *[("k", "v")] * 31)] * 64,
        ),
        BOUNDS,
    )


def test_bounds_are_configurable() -> None:
    tight = RequestLimits(max_domain_bytes=3, max_descriptors=1, max_entries=1, max_entry_bytes=2)
    request_from_proto(rls_pb2.RateLimitRequest(domain="abc", descriptors=[descriptor(("ab", "cd"))]), tight)
    with pytest.raises(InvalidRequest):
        request_from_proto(
            rls_pb2.RateLimitRequest(domain="abcd", descriptors=[descriptor(("a", "b"))]), tight
        )
    with pytest.raises(InvalidRequest):
        request_from_proto(
            rls_pb2.RateLimitRequest(domain="a", descriptors=[descriptor(("abc", "b"))]), tight
        )


def test_invalid_request_maps_to_invalid_argument() -> None:
    import grpc

    assert InvalidRequest.grpc_status is grpc.StatusCode.INVALID_ARGUMENT
    assert InvalidRequest.metric_label == "invalid_request"


def test_response_fields() -> None:
    decision = Decision(
        Code.OVER_LIMIT,
        [
            DescriptorStatus(Code.OK),
            DescriptorStatus(Code.OK, None, UINT32_MAX),
            DescriptorStatus(Code.OK, CurrentLimit(10, Unit.MINUTE, "named"), 7, 42),
            DescriptorStatus(Code.OVER_LIMIT, CurrentLimit(1, Unit.SECOND), 0, 1),
        ],
        headers=[("RateLimit-Limit", "1"), ("RateLimit-Remaining", "0"), ("RateLimit-Reset", "1")],
    )
    response = response_to_proto(decision)
    assert response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    no_limit, unlimited, named, over = response.statuses
    assert no_limit.code == rls_pb2.RateLimitResponse.OK
    assert not no_limit.HasField("current_limit")
    assert not no_limit.HasField("duration_until_reset")
    assert no_limit.limit_remaining == 0
    assert unlimited.limit_remaining == 4294967295
    assert not unlimited.HasField("current_limit")
    assert named.current_limit.requests_per_unit == 10
    assert named.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
    assert named.current_limit.name == "named"
    assert named.limit_remaining == 7
    assert named.duration_until_reset.seconds == 42
    assert over.code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert over.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
    assert over.current_limit.name == ""
    assert over.limit_remaining == 0
    assert over.duration_until_reset.seconds == 1
    assert [(h.key, h.value) for h in response.response_headers_to_add] == decision.headers
    assert not response.HasField("dynamic_metadata")


def test_response_quota_mode_metadata() -> None:
    decision = Decision(Code.OK, [DescriptorStatus(Code.OK)] * 3, quota_violations=[0, 2], quota_mode=True)
    response = response_to_proto(decision)
    metadata = json_format.MessageToDict(response.dynamic_metadata)
    assert metadata == {"quotaModeEnabled": True, "quotaModeViolations": [0, 2]}


def test_code_name() -> None:
    assert code_name(Code.OK) == "OK"
    assert code_name(Code.OVER_LIMIT) == "OVER_LIMIT"
