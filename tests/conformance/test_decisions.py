"""Decision semantics (spec §4) through `Limiter.decide`, with a manual clock and rules
loaded from text, checked against envoyproxy/ratelimit's behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.limiter import (
    UINT32_MAX,
    Code,
    CurrentLimit,
    Decision,
    DescriptorStatus,
    Limiter,
    LimiterOptions,
    OverflowPolicy,
    Request,
    RequestDescriptor,
)
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.core.windows import Unit
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.telemetry.stats import RuleStats, ServiceStats

T0 = 1_700_006_400.0  # a multiple of one day: every window of a day or less starts here
OK, OVER = Code.OK, Code.OVER_LIMIT


def desc(
    *entries: str, hits: int | None = None, override: tuple[int, Unit] | None = None
) -> RequestDescriptor:
    """desc("k=v", "k2=v2"): a request descriptor."""
    pairs = tuple((key, value) for key, _, value in (e.partition("=") for e in entries))
    return RequestDescriptor(pairs, override, hits)


@dataclass
class Env:
    limiter: Limiter
    clock: ManualClock
    stats: ServiceStats
    store: CounterStore
    domain: str = "test"
    log: list[Decision] = field(default_factory=list)

    def ask(self, *descriptors: RequestDescriptor, hits: int = 0, domain: str | None = None) -> Decision:
        decision = self.limiter.decide(Request(domain or self.domain, descriptors, hits))
        assert len(decision.statuses) == len(descriptors)
        return decision

    def one(self, *entries: str, hits: int | None = None) -> DescriptorStatus:
        """Ask with a single descriptor; its status."""
        decision = self.ask(desc(*entries, hits=hits))
        assert decision.overall is decision.statuses[0].code
        return decision.statuses[0]

    def run(self, *entries: str, times: int) -> list[Code]:
        return [self.one(*entries).code for _ in range(times)]

    def rule_stats(self, stats_key: str) -> RuleStats:
        return self.stats.rules[(self.domain, stats_key)]


def build(
    descriptors_yaml: str,
    *,
    start: float = T0,
    max_counters: int = 10_000,
    domain: str = "test",
    **options: object,
) -> Env:
    text = f"domain: {domain}\ndescriptors:\n{descriptors_yaml}"
    clock = ManualClock(start)
    stats = ServiceStats()
    store = CounterStore(max_counters)
    limiter = Limiter(
        store=store,
        clock=clock,
        stats=stats,
        options=LimiterOptions(**options),  # type: ignore[arg-type]
        rules=load_texts([("rules.yaml", text)]),
    )
    return Env(limiter, clock, stats, store, domain)


def limit_name(status: DescriptorStatus) -> str | None:
    return status.limit.name if status.limit is not None else None


# -- matching --------------------------------------------------------------------------------

PRECEDENCE = """
  - key: path
    value: /api/exact
    rate_limit: {name: exact, unit: second, requests_per_unit: 3}
  - key: path
    value: /api/*
    rate_limit: {name: first_wildcard, unit: second, requests_per_unit: 2}
  - key: path
    value: /api/v1/*
    rate_limit: {name: later_wildcard, unit: second, requests_per_unit: 4}
  - key: path
    rate_limit: {name: default, unit: second, requests_per_unit: 1}
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/api/exact", "exact"),  # exact beats wildcard
        ("/api/other", "first_wildcard"),  # wildcard beats default
        ("/api/v1/users", "first_wildcard"),  # the first matching wildcard in file order
        ("/api/", "first_wildcard"),  # '*' also matches nothing
        ("/other", "default"),
        ("", "default"),
        ("/API/exact", "default"),  # case-sensitive
        ("/Api/other", "default"),
    ],
)
def test_exact_beats_wildcard_beats_default(value: str, expected: str) -> None:
    env = build(PRECEDENCE)
    assert limit_name(env.one(f"path={value}")) == expected


def test_key_is_case_sensitive() -> None:
    env = build(PRECEDENCE)
    assert env.one("PATH=/api/exact").limit is None
    assert env.one("Path=/other").limit is None


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("a*b*c", ["abc", "a1b2c", "aabbcc", "a*b*c", "ab-bc"], ["ab", "abcd", "xabc", "acb", "ABC"]),
        ("*.example.com", ["www.example.com", ".example.com"], ["example.com", "www.example.comx"]),
        ("pre*", ["pre", "prefix"], ["xpre", "pr"]),
        ("*mid*", ["mid", "amidb"], ["mi d"]),
        ("*", ["", "anything"], []),
        ("a.b*", ["a.b", "a.bc"], ["aXb", "aXbc"]),  # '.' is literal
        ("(x)+*", ["(x)+y"], ["xx"]),  # regex characters are literal
    ],
)
def test_wildcard_anywhere_and_several_times(pattern: str, matches: list[str], misses: list[str]) -> None:
    env = build(f"""
  - key: k
    value: "{pattern}"
    rate_limit: {{name: wild, unit: second, requests_per_unit: 100}}
""")
    for value in matches:
        assert limit_name(env.one(f"k={value}")) == "wild", value
    for value in misses:
        assert env.one(f"k={value}").limit is None, value


ALLOWLIST = """
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: remote_address
    value: 10.0.0.1
"""


def test_exact_node_without_limit_is_an_allowlist() -> None:
    env = build(ALLOWLIST)
    for _ in range(5):
        status = env.one("remote_address=10.0.0.1")
        assert status == DescriptorStatus(OK)  # no current_limit, nothing remaining
    assert env.run("remote_address=10.0.0.2", times=2) == [OK, OVER]
    assert len(env.store) == 1  # the allowlisted address got no counter


DEPTH = """
  - key: remote_address
    rate_limit: {name: per_address, unit: minute, requests_per_unit: 60}
    descriptors:
      - key: path
        value: /login
        rate_limit: {name: login, unit: hour, requests_per_unit: 10}
  - key: to_cluster
    value: ext_auth
    descriptors:
      - key: remote_address
        rate_limit: {name: ext_auth_per_address, unit: second, requests_per_unit: 5}
"""


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["remote_address=1.2.3.4"], "per_address"),  # shallower: the node it stops on
        (["remote_address=1.2.3.4", "path=/login"], "login"),
        (["remote_address=1.2.3.4", "path=/other"], None),  # no fallback to the parent
        (["remote_address=1.2.3.4", "path=/login", "extra=1"], None),  # deeper than the tree
        (["remote_address=1.2.3.4", "other=x"], None),
        (["to_cluster=ext_auth"], None),  # the node it stops on has no limit
        (["to_cluster=ext_auth", "remote_address=1.2.3.4"], "ext_auth_per_address"),
        (["to_cluster=other", "remote_address=1.2.3.4"], None),
        (["path=/login"], None),  # order matters
    ],
)
def test_request_depth(entries: list[str], expected: str | None) -> None:
    env = build(DEPTH)
    assert limit_name(env.one(*entries)) == expected


def test_unknown_domain_is_ok_without_limits() -> None:
    env = build(DEPTH)
    decision = env.ask(desc("remote_address=1.2.3.4"), desc("x=y"), domain="elsewhere")
    assert decision.overall is OK
    assert decision.statuses == [DescriptorStatus(OK), DescriptorStatus(OK)]
    assert env.stats.domain_not_found == 1
    assert len(env.store) == 0


def test_no_matching_rule_is_ok_without_limit() -> None:
    env = build(DEPTH)
    decision = env.ask(desc("nothing=here"))
    assert decision.overall is OK
    assert decision.statuses == [DescriptorStatus(OK)]
    assert decision.headers == []


def test_statuses_follow_descriptor_order_and_any_over_makes_overall_over() -> None:
    env = build("""
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 5}
""")
    first = env.ask(desc("a=1"), desc("none=1"), desc("b=1"))
    assert [s.code for s in first.statuses] == [OK, OK, OK]
    assert [s.remaining for s in first.statuses] == [0, 0, 4]
    assert first.overall is OK
    second = env.ask(desc("a=1"), desc("none=1"), desc("b=1"))
    assert [s.code for s in second.statuses] == [OVER, OK, OK]
    assert second.overall is OVER
    assert second.statuses[2].remaining == 3


# -- counters per value or shared ---------------------------------------------------------------


def test_key_only_default_counts_each_value_separately() -> None:
    env = build("""
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 2}
""")
    assert env.run("remote_address=a", times=3) == [OK, OK, OVER]
    assert env.run("remote_address=b", times=3) == [OK, OK, OVER]
    assert len(env.store) == 2
    # ... but the stats key has no values in it
    assert set(env.stats.rules) == {("test", "test.remote_address")}
    assert env.rule_stats("test.remote_address").total_hits == 6


def test_wildcard_counts_each_value_separately_without_share_threshold() -> None:
    env = build("""
  - key: path
    value: /api/*
    rate_limit: {unit: minute, requests_per_unit: 2}
""")
    assert env.run("path=/api/a", times=3) == [OK, OK, OVER]
    assert env.run("path=/api/b", times=2) == [OK, OK]
    assert len(env.store) == 2


def test_share_threshold_shares_one_counter_among_matching_values() -> None:
    env = build("""
  - key: path
    value: /api/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 3}
""")
    assert env.one("path=/api/a").remaining == 2
    assert env.one("path=/api/b").remaining == 1
    assert env.one("path=/api/c").remaining == 0
    assert env.one("path=/api/d").code is OVER
    assert len(env.store) == 1


def test_stats_keys_follow_detailed_metric_and_value_to_metric() -> None:
    env = build("""
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 9}
  - key: by_value
    value_to_metric: true
    rate_limit: {unit: minute, requests_per_unit: 9}
  - key: wild
    value: w*
    value_to_metric: true
    rate_limit: {unit: minute, requests_per_unit: 9}
  - key: parent
    value: p
    descriptors:
      - key: child
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 9}
""")
    env.one("plain=x")
    env.one("by_value=x")
    env.one("wild=wx")
    env.one("parent=p", "child=c1")
    assert set(env.stats.rules) == {
        ("test", "test.plain"),
        ("test", "test.by_value_x"),
        ("test", "test.wild_wx"),
        ("test", "test.parent_p.child_c1"),
    }


# -- request override ------------------------------------------------------------------------------


def test_request_limit_override_replaces_the_tree() -> None:
    env = build("""
  - key: k
    rate_limit: {unit: second, requests_per_unit: 100}
""")
    override = (2, Unit.MINUTE)
    statuses = [env.ask(desc("k=v", override=override)).statuses[0] for _ in range(3)]
    assert [s.code for s in statuses] == [OK, OK, OVER]
    assert statuses[0].limit == CurrentLimit(2, Unit.MINUTE)
    assert statuses[0].remaining == 1
    assert statuses[0].reset_seconds == 60
    # The override applies even to descriptors the tree does not know.
    assert env.ask(desc("unknown=v", override=(1, Unit.HOUR))).statuses[0].limit == CurrentLimit(1, Unit.HOUR)


def test_request_limit_override_needs_a_known_domain() -> None:
    env = build("  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n")
    decision = env.ask(desc("k=v", override=(1, Unit.MINUTE)), domain="nope")
    assert decision.statuses == [DescriptorStatus(OK)]


def test_request_limit_override_with_unknown_unit_is_ignored() -> None:
    env = build("  - key: k\n    rate_limit: {unit: second, requests_per_unit: 7}\n")
    status = env.ask(desc("k=v", override=(1, Unit.UNKNOWN))).statuses[0]
    assert status.limit == CurrentLimit(7, Unit.SECOND)


# -- unlimited ----------------------------------------------------------------------------------------


def test_unlimited_is_ok_with_max_remaining_and_counts_nothing() -> None:
    env = build("""
  - key: user
    value: internal
    rate_limit: {unlimited: true}
""")
    for _ in range(5):
        decision = env.ask(desc("user=internal", hits=1000))
        assert decision.overall is OK
        assert decision.statuses == [DescriptorStatus(OK, None, UINT32_MAX, 0)]
    assert len(env.store) == 0
    assert env.stats.rules == {}


# -- counting, windows -------------------------------------------------------------------------------


def test_limit_of_20_per_minute_admits_exactly_20() -> None:
    env = build(
        "  - key: k\n    rate_limit: {name: twenty, unit: minute, requests_per_unit: 20}\n",
        start=T0 + 45,  # 15 seconds before the minute ends
    )
    statuses = [env.one("k=v") for _ in range(20)]
    assert [s.code for s in statuses] == [OK] * 20
    assert [s.remaining for s in statuses] == list(range(19, -1, -1))
    assert {s.reset_seconds for s in statuses} == {15}
    assert {s.limit for s in statuses} == {CurrentLimit(20, Unit.MINUTE, "twenty")}

    over = env.one("k=v")
    assert over == DescriptorStatus(OVER, CurrentLimit(20, Unit.MINUTE, "twenty"), 0, 15)
    env.clock.advance(14.9)  # T0 + 59.9: same window
    over = env.one("k=v")
    assert (over.code, over.remaining, over.reset_seconds) == (OVER, 0, 1)

    env.clock.set(T0 + 60)  # the next window, aligned to the epoch
    fresh = env.one("k=v")
    assert (fresh.code, fresh.remaining, fresh.reset_seconds) == (OK, 19, 60)


@pytest.mark.parametrize(
    ("unit", "length"),
    [("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)],
)
def test_windows_are_aligned_to_the_epoch(unit: str, length: int) -> None:
    env = build(f"  - key: k\n    rate_limit: {{unit: {unit}, requests_per_unit: 1}}\n")
    offset = length * 0.75
    env.clock.set(T0 + offset)
    status = env.one("k=v")
    assert status.reset_seconds == length - int(offset) % length
    assert env.one("k=v").code is OVER
    env.clock.set(T0 + length)
    assert env.one("k=v").code is OK


def test_week_month_year_windows() -> None:
    env = build("""
  - key: w
    rate_limit: {unit: week, requests_per_unit: 1}
  - key: m
    rate_limit: {unit: month, requests_per_unit: 1}
  - key: y
    rate_limit: {unit: year, requests_per_unit: 1}
""")
    now = int(T0)
    for key, length in (("w", 7 * 86400), ("m", 30 * 86400), ("y", 365 * 86400)):
        status = env.one(f"{key}=v")
        assert status.reset_seconds == length - now % length
        assert 1 <= status.reset_seconds <= length


def test_zero_requests_per_unit_refuses_everything() -> None:
    env = build("  - key: k\n    rate_limit: {unit: second, requests_per_unit: 0}\n")
    assert env.run("k=v", times=2) == [OVER, OVER]


def test_unit_multiplier_makes_longer_aligned_windows() -> None:
    env = build(
        "  - key: k\n    rate_limit: {unit: second, unit_multiplier: 30, requests_per_unit: 2}\n",
        start=T0 + 35,  # window [T0+30, T0+60)
    )
    first = env.one("k=v")
    assert (first.code, first.remaining, first.reset_seconds) == (OK, 1, 25)
    assert first.limit == CurrentLimit(2, Unit.SECOND)
    assert env.run("k=v", times=2) == [OK, OVER]
    env.clock.set(T0 + 59)
    assert env.one("k=v").code is OVER
    env.clock.set(T0 + 60)
    status = env.one("k=v")
    assert (status.code, status.reset_seconds) == (OK, 30)


def test_over_limit_hits_are_counted() -> None:
    env = build("  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n")
    assert env.run("k=v", times=4) == [OK, OK, OVER, OVER]
    (counter,) = list(env.store)
    assert counter.total == 4


def test_stop_increment_when_over_limit() -> None:
    env = build(
        """
  - key: small
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: big
    rate_limit: {unit: minute, requests_per_unit: 100}
""",
        stop_increment_when_over_limit=True,
    )
    assert env.run("small=v", times=3) == [OK, OVER, OVER]
    small = env.limiter.store.get(next(c.key for c in env.store), int(T0))
    assert small is not None and small.total == 1

    # One descriptor over: nothing of the request is counted, not even the others.
    first = env.ask(desc("big=v"))
    assert first.statuses[0].remaining == 99
    both = env.ask(desc("small=v"), desc("big=v"))
    assert [s.code for s in both.statuses] == [OVER, OK]
    assert both.statuses[1].remaining == 98  # what it would have been
    assert env.ask(desc("big=v")).statuses[0].remaining == 98  # ... but it was not counted


# -- hits_addend ----------------------------------------------------------------------------------------


def test_hits_addend() -> None:
    env = build("  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n")
    # descriptor-level 0: check without counting
    assert env.ask(desc("k=v", hits=0)).statuses[0].remaining == 5
    assert env.ask(desc("k=v", hits=0)).statuses[0].remaining == 5
    # descriptor-level N counts N
    assert env.ask(desc("k=v", hits=3)).statuses[0].remaining == 2
    # request-level used when the descriptor's is unset
    assert env.ask(desc("k=v"), hits=2).statuses[0].remaining == 0
    # request-level 0 means 1
    over = env.ask(desc("k=v"), hits=0).statuses[0]
    assert (over.code, over.remaining) == (OVER, 0)
    # the descriptor's own value wins over the request's
    check = env.ask(desc("k=v", hits=0), hits=50).statuses[0]
    assert check.code is OVER  # 6 counted already: over even without adding
    (counter,) = list(env.store)
    assert counter.total == 6


def test_hits_addend_zero_at_exactly_the_limit_is_ok() -> None:
    env = build("  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n")
    env.ask(desc("k=v"), hits=2)
    status = env.ask(desc("k=v", hits=0)).statuses[0]
    assert (status.code, status.remaining) == (OK, 0)


def test_one_request_of_many_hits_over_the_limit() -> None:
    env = build("  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 10}\n")
    assert env.ask(desc("k=v"), hits=11).overall is OVER
    assert env.ask(desc("k=v"), hits=1).overall is OVER  # the 11 were counted


def test_descriptor_hits_apply_per_descriptor() -> None:
    env = build("""
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 10}
""")
    decision = env.ask(desc("a=1", hits=4), desc("b=1"), hits=3)
    assert [s.remaining for s in decision.statuses] == [6, 7]


# -- replaces --------------------------------------------------------------------------------------------

REPLACES = """
  - key: key1
    value: value1
    rate_limit: {name: limit1, unit: second, requests_per_unit: 1}
  - key: key2
    value: value2
    rate_limit:
      name: limit2
      unit: minute
      requests_per_unit: 10
      replaces:
        - name: limit1
  - key: key3
    rate_limits:
      - {name: limit1_too, unit: second, requests_per_unit: 1}
      - {name: limit3, unit: hour, requests_per_unit: 3}
  - key: key4
    rate_limit:
      name: limit4
      unit: minute
      requests_per_unit: 10
      replaces:
        - name: limit1_too
"""


def test_replaces_drops_the_named_limit_of_other_descriptors() -> None:
    env = build(REPLACES)
    for _ in range(3):
        decision = env.ask(desc("key1=value1"), desc("key2=value2"))
        assert decision.overall is OK
        assert decision.statuses[0] == DescriptorStatus(OK)
    assert decision.statuses[1].limit == CurrentLimit(10, Unit.MINUTE, "limit2")
    assert decision.statuses[1].remaining == 7
    # Without the replacing descriptor, limit1 applies (and was never counted).
    assert env.run("key1=value1", times=2) == [OK, OVER]


def test_replaces_drops_only_the_named_limit_of_a_list() -> None:
    env = build(REPLACES)
    decision = env.ask(desc("key3=x"), desc("key4=x"))
    assert decision.statuses[0].limit == CurrentLimit(3, Unit.HOUR, "limit3")
    decision = env.ask(desc("key3=x"), desc("key4=x"))
    assert decision.overall is OK  # limit1_too (1 per second) is not applied


# -- shadow mode and quota mode ------------------------------------------------------------------------


def test_rule_shadow_mode_answers_ok_and_counts_shadow_stats() -> None:
    env = build("""
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
""")
    first = env.ask(desc("shadow=v"))
    second = env.ask(desc("shadow=v"), hits=3)
    assert first.overall is OK and second.overall is OK
    assert second.statuses[0] == DescriptorStatus(OK, CurrentLimit(1, Unit.MINUTE), 0, 60)
    stats = env.rule_stats("test.shadow")
    assert (stats.total_hits, stats.within_limit, stats.over_limit, stats.shadow_mode) == (4, 1, 3, 3)
    assert env.stats.global_shadow_mode == 0


def test_global_shadow_mode_keeps_statuses_but_answers_ok() -> None:
    env = build(
        """
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: other
    rate_limit: {unit: minute, requests_per_unit: 5}
""",
        shadow_mode=True,
    )
    assert env.ask(desc("k=v")).overall is OK
    decision = env.ask(desc("k=v"), desc("other=v"))
    assert decision.overall is OK
    assert [s.code for s in decision.statuses] == [OVER, OK]
    assert env.stats.global_shadow_mode == 1
    assert env.rule_stats("test.k").over_limit == 1
    assert env.rule_stats("test.k").shadow_mode == 0


def test_quota_mode_answers_ok_and_reports_violations() -> None:
    # As envoyproxy/ratelimit (PR 1045, then 1059): a quota-mode rule over its limit lets
    # the request through and reports its index, unless every quota-mode descriptor is over.
    env = build("""
  - key: quota
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: normal
    rate_limit: {unit: minute, requests_per_unit: 2}
""")
    first = env.ask(desc("normal=v"), desc("quota=v"), desc("quota2=v"))
    assert first.overall is OK
    assert first.quota_violations == []
    assert first.quota_mode  # quotaModeEnabled: a quota rule took part

    second = env.ask(desc("normal=v"), desc("quota=v"), desc("quota2=v"))
    assert second.overall is OK  # quota over, quota2 still has room
    assert second.quota_violations == [1]
    assert second.statuses[1] == DescriptorStatus(OK, CurrentLimit(1, Unit.MINUTE), 0, 60)

    third = env.ask(desc("normal=v"), desc("quota=v"))  # now the normal limit is over too
    assert third.overall is OVER
    assert [s.code for s in third.statuses] == [OVER, OK]
    assert third.quota_violations == [1]


def test_quota_mode_denies_when_every_quota_descriptor_is_over() -> None:
    env = build("""
  - key: quota
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
""")
    assert env.ask(desc("quota=v")).overall is OK
    over = env.ask(desc("quota=v"))
    assert over.overall is OVER
    assert over.quota_violations == [0]
    assert [s.code for s in over.statuses] == [OK]


# -- response headers ------------------------------------------------------------------------------------

HEADERS = """
  - key: wide
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: narrow
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: one
    rate_limit: {unit: second, requests_per_unit: 1}
"""


def test_response_headers_come_from_the_most_restrictive_descriptor() -> None:
    env = build(HEADERS, response_headers=True, start=T0 + 20)
    decision = env.ask(desc("wide=v"), desc("narrow=v"), desc("none=v"))
    assert decision.headers == [
        ("RateLimit-Limit", "3"),
        ("RateLimit-Remaining", "2"),
        ("RateLimit-Reset", "40"),
    ]


def test_response_headers_prefer_an_over_limit_descriptor() -> None:
    env = build(HEADERS, response_headers=True, start=T0 + 20)
    env.ask(desc("narrow=v"), hits=2)
    env.ask(desc("one=v"))
    # narrow reaches its limit exactly (OK, 0 left); one is over (0 left too).
    decision = env.ask(desc("narrow=v"), desc("one=v"))
    assert [s.code for s in decision.statuses] == [OK, OVER]
    assert decision.headers == [
        ("RateLimit-Limit", "1"),
        ("RateLimit-Remaining", "0"),
        ("RateLimit-Reset", "1"),
    ]


def test_no_response_headers_without_a_limit_or_when_disabled() -> None:
    env = build(HEADERS, response_headers=True)
    assert env.ask(desc("none=v")).headers == []
    assert build(HEADERS).ask(desc("wide=v")).headers == []


def test_response_headers_ignore_unlimited() -> None:
    env = build(
        "  - key: u\n    rate_limit: {unlimited: true}\n" + HEADERS,
        response_headers=True,
    )
    decision = env.ask(desc("u=v"), desc("wide=v"))
    assert ("RateLimit-Limit", "10") in decision.headers


# -- near / over / within stats, split as the reference does -----------------------------------------

TEN = "  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 10}\n"


def stats_tuple(stats: RuleStats) -> tuple[int, int, int, int]:
    return (stats.total_hits, stats.within_limit, stats.near_limit, stats.over_limit)


def test_stats_one_hit_at_a_time() -> None:
    # limit 10, ratio 0.8: near threshold floor(8.0) = 8. Hits 1..8 are within only;
    # 9 and 10 are within and near (the count before them had reached 8); 11 and 12 are
    # over (the count before them had reached the limit), and not near.
    env = build(TEN, near_limit_ratio=0.8)
    seen = []
    for _ in range(12):
        env.one("k=v")
        seen.append(stats_tuple(env.rule_stats("test.k")))
    assert seen[7] == (8, 8, 0, 0)
    assert seen[8] == (9, 9, 1, 0)
    assert seen[9] == (10, 10, 2, 0)
    assert seen[10] == (11, 10, 2, 1)
    assert seen[11] == (12, 10, 2, 2)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (total, within, near, over) after all steps
        ([7, 3], (10, 10, 2, 0)),  # 7 -> 10: the part above 8 is near
        ([7, 5], (12, 7, 2, 2)),  # 7 -> 12: over is 12-10, near is 10-max(8,7)
        ([9, 5], (14, 9, 2, 4)),  # 9 (1 near) -> 14: over 4, near 10-max(8,9)=1
        ([10, 4], (14, 10, 2, 4)),  # all 4 over: the count before had reached the limit
        ([12], (12, 0, 2, 2)),  # one request from 0 to 12
        ([9], (9, 9, 1, 0)),
    ],
)
def test_stats_with_several_hits_per_request(steps: list[int], expected: tuple[int, int, int, int]) -> None:
    env = build(TEN, near_limit_ratio=0.8)
    for hits in steps:
        env.ask(desc("k=v"), hits=hits)
    assert stats_tuple(env.rule_stats("test.k")) == expected


def test_near_limit_ratio_is_configurable() -> None:
    env = build(TEN, near_limit_ratio=0.5)
    for _ in range(10):
        env.one("k=v")
    assert stats_tuple(env.rule_stats("test.k")) == (10, 10, 5, 0)


# -- counter capacity -----------------------------------------------------------------------------------

CAPACITY = "  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n"


def test_counter_overflow_allow() -> None:
    env = build(CAPACITY, max_counters=1, on_counter_overflow=OverflowPolicy.ALLOW)
    assert env.run("k=a", times=3) == [OK, OK, OVER]
    assert env.run("k=b", times=5) == [OK] * 5  # no counter: allowed, uncounted
    status = env.one("k=b")
    assert status.limit == CurrentLimit(2, Unit.MINUTE)
    assert env.stats.counter_overflow == 6
    assert len(env.store) == 1


def test_counter_overflow_deny() -> None:
    env = build(CAPACITY, max_counters=1, on_counter_overflow=OverflowPolicy.DENY)
    assert env.run("k=a", times=1) == [OK]
    status = env.one("k=b")
    assert (status.code, status.remaining) == (OVER, 0)
    assert env.stats.counter_overflow == 1


def test_counter_overflow_stats_count_every_hit_once() -> None:
    wide = "  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 100}\n"
    deny = build(wide, max_counters=1, on_counter_overflow=OverflowPolicy.DENY)
    deny.one("k=a")
    deny.ask(desc("k=b"), hits=3)
    # all 3 refused hits are over the limit; none of them was near it
    assert stats_tuple(deny.rule_stats("test.k")) == (4, 1, 0, 3)
    allow = build(wide, max_counters=1, on_counter_overflow=OverflowPolicy.ALLOW)
    allow.one("k=a")
    allow.ask(desc("k=b"), hits=3)
    assert stats_tuple(allow.rule_stats("test.k")) == (4, 4, 0, 0)


def test_expired_counters_make_room() -> None:
    env = build(CAPACITY, max_counters=1, on_counter_overflow=OverflowPolicy.DENY, start=T0)
    assert env.one("k=a").code is OK
    assert env.one("k=b").code is OVER  # full of live counters
    # After the window and its grace period the old counter can go.
    env.clock.set(T0 + 60 + env.limiter.options.grace_seconds + 1)
    assert env.one("k=b").code is OK
    assert len(env.store) == 1
    assert env.store.get(next(iter(env.store)).key, int(T0) + 60) is not None


# -- sliding windows -------------------------------------------------------------------------------------


def test_sliding_window_weights_the_previous_window() -> None:
    env = build(
        "  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: sliding_window}\n",
        start=T0 + 30,
    )
    # First window: nothing before it, so exactly 10.
    assert env.run("k=v", times=10) == [OK] * 10
    # 15 s into the next window the previous 10 weigh 10 x 45/60 = 7.5 -> 8 (rounded up).
    env.clock.set(T0 + 75)
    statuses = [env.one("k=v") for _ in range(3)]
    assert [s.code for s in statuses] == [OK, OK, OVER]
    assert [s.remaining for s in statuses] == [1, 0, 0]
    assert statuses[0].reset_seconds == 45
    # 45 s in, the previous window weighs 10 x 15/60 = 2.5 -> 3; this window holds 3 (the
    # refused hit counts too), so 4 more fit.
    env.clock.set(T0 + 105)
    assert env.run("k=v", times=5) == [OK, OK, OK, OK, OVER]
    # Two windows later the first one weighs nothing; the second (8 hits) weighs fully at
    # the start of the third.
    env.clock.set(T0 + 120)
    assert env.one("k=v").remaining == 1


def test_fixed_window_forgets_the_previous_window() -> None:
    env = build("  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 10}\n", start=T0 + 59)
    assert env.run("k=v", times=10) == [OK] * 10
    env.clock.set(T0 + 60)
    assert env.run("k=v", times=10) == [OK] * 10


# -- several limits on one descriptor --------------------------------------------------------------------

BURST_AND_SUSTAINED = """
  - key: k
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 2}
      - {name: sustained, unit: minute, requests_per_unit: 4}
"""
BURST = CurrentLimit(2, Unit.SECOND, "burst")
SUSTAINED = CurrentLimit(4, Unit.MINUTE, "sustained")


def test_rate_limits_list_is_over_if_any_is_and_reports_the_most_restrictive() -> None:
    env = build(BURST_AND_SUSTAINED, start=T0)
    first = env.one("k=v")  # burst 1 left, sustained 3 left
    assert (first.code, first.limit, first.remaining, first.reset_seconds) == (OK, BURST, 1, 1)
    second = env.one("k=v")  # burst 0 left, sustained 2 left
    assert (second.code, second.limit, second.remaining) == (OK, BURST, 0)
    third = env.one("k=v")  # burst over
    assert (third.code, third.limit, third.remaining, third.reset_seconds) == (OVER, BURST, 0, 1)

    env.clock.set(T0 + 1)  # burst resets; sustained holds 3 (the refused hit counted too)
    fourth = env.one("k=v")  # burst 1 left, sustained 0 left
    assert (fourth.code, fourth.limit, fourth.remaining, fourth.reset_seconds) == (OK, SUSTAINED, 0, 59)
    fifth = env.one("k=v")  # burst exactly at its limit, sustained over: the over one is reported
    assert (fifth.code, fifth.limit, fifth.remaining, fifth.reset_seconds) == (OVER, SUSTAINED, 0, 59)

    env.clock.set(T0 + 60)  # both reset
    assert env.run("k=v", times=3) == [OK, OK, OVER]


def test_ties_between_limits_report_the_first() -> None:
    env = build(BURST_AND_SUSTAINED.replace("requests_per_unit: 4", "requests_per_unit: 2"), start=T0)
    status = env.one("k=v")
    assert (status.limit, status.remaining) == (BURST, 1)


def test_limits_of_one_window_length_count_each_hit_once() -> None:
    env = build("""
  - key: k
    rate_limits:
      - {name: small, unit: minute, requests_per_unit: 5}
      - {name: large, unit: minute, requests_per_unit: 10}
""")
    statuses = [env.one("k=v") for _ in range(6)]
    assert [s.code for s in statuses] == [OK] * 5 + [OVER]
    assert [s.limit.name for s in statuses if s.limit] == ["small"] * 6
    (counter,) = list(env.store)
    assert counter.total == 6


# -- several descriptors of one request on one counter -----------------------------------------------


def test_descriptors_of_one_request_sharing_a_counter_see_each_others_hits() -> None:
    # As the reference, which adds each descriptor's hits in turn: the second descriptor
    # sees the count after the first one's hits.
    env = build("""
  - key: path
    value: /api/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 1}
""")
    decision = env.ask(desc("path=/api/a"), desc("path=/api/b"))
    assert [(s.code, s.remaining) for s in decision.statuses] == [(OK, 2), (OK, 1)]
    decision = env.ask(desc("path=/api/c"), desc("path=/api/d"))
    assert [(s.code, s.remaining) for s in decision.statuses] == [(OK, 0), (OVER, 0)]
    assert decision.overall is OVER

    twice = env.ask(desc("k=v"), desc("k=v"))
    assert [s.code for s in twice.statuses] == [OK, OVER]
