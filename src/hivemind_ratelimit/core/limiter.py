"""ShouldRateLimit decisions, following envoyproxy/ratelimit's semantics.

`Limiter.decide` takes a plain request and returns a plain decision; the gRPC layer
converts protobufs on either side. A decision runs in three steps:

1. resolve: find each descriptor's limits (request override, tree match, unlimited),
   then drop limits that another descriptor `replaces` by name;
2. evaluate: read each limit's counter for the current window (sliding windows also
   weigh the previous one) and decide over/under with the hits this request adds;
3. commit: add the hits (all of them unless `stop_increment_when_over_limit` and a
   descriptor is over), update the per-rule stats, apply shadow and quota modes.

Counting: a window's counter starts at 0; a request is over limit when the count after
adding its hits exceeds the limit, so a limit of N admits exactly N per window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import Clock
from hivemind_ratelimit.core.store import Counter, CounterStore
from hivemind_ratelimit.core.windows import Unit, seconds_until_reset, sliding_weight_count, window_start
from hivemind_ratelimit.rules import matcher
from hivemind_ratelimit.rules.model import EMPTY_RULESET, Algorithm, Consistency, Domain, Limit, Rule, RuleSet
from hivemind_ratelimit.telemetry.stats import RuleStats, ServiceStats

UINT32_MAX = 4_294_967_295
KEY_SEPARATOR = "\x1e"


class Code(IntEnum):
    """Values match envoy.service.ratelimit.v3.RateLimitResponse.Code."""

    UNKNOWN = 0
    OK = 1
    OVER_LIMIT = 2


class OverflowPolicy(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class RequestDescriptor:
    entries: tuple[tuple[str, str], ...]
    override: tuple[int, Unit] | None = None  # (requests_per_unit, unit) from Envoy
    hits_addend: int | None = None  # the descriptor's own hits_addend, when set


@dataclass(frozen=True, slots=True)
class Request:
    domain: str
    descriptors: tuple[RequestDescriptor, ...]
    hits_addend: int = 0


@dataclass(frozen=True, slots=True)
class CurrentLimit:
    requests_per_unit: int
    unit: Unit
    name: str = ""


@dataclass(frozen=True, slots=True)
class DescriptorStatus:
    code: Code
    limit: CurrentLimit | None = None
    remaining: int = 0
    reset_seconds: int = 0


STATUS_NO_LIMIT = DescriptorStatus(Code.OK)
STATUS_UNLIMITED = DescriptorStatus(Code.OK, remaining=UINT32_MAX)


@dataclass(slots=True)
class Decision:
    overall: Code
    statuses: list[DescriptorStatus]
    headers: list[tuple[str, str]] = field(default_factory=list)
    quota_violations: list[int] = field(default_factory=list)
    quota_mode: bool = False  # a quota-mode rule took part (the reference's quotaModeEnabled)
    quota_descriptors: int = 0


@dataclass(frozen=True, slots=True)
class LimiterOptions:
    near_limit_ratio: float = 0.8
    shadow_mode: bool = False
    stop_increment_when_over_limit: bool = False
    response_headers: bool = False
    on_counter_overflow: OverflowPolicy = OverflowPolicy.ALLOW
    default_consistency: Consistency = Consistency.BOUNDED
    grace_seconds: float = 2.0  # counters outlive their window by this much


@dataclass(slots=True)
class _Check:
    """One limit of one descriptor, evaluated."""

    limit: Limit
    counter: Counter | None  # None: the store is full (overflow)
    before: int
    after: int
    over: bool
    reset: int
    count: bool = True  # add the hits to this node's slot (False: refused by the allowance)
    spend: bool = False  # bounded mode: the hits spend this node's allowance

    @property
    def remaining(self) -> int:
        return 0 if self.over else max(self.limit.requests_per_unit - self.after, 0)


@dataclass(slots=True)
class _Plan:
    rule: Rule | None  # None for a request override
    limits: tuple[Limit, ...]
    counter_path: str
    stats_key: str
    checks: list[_Check] = field(default_factory=list)


class Limiter:
    def __init__(
        self,
        *,
        store: CounterStore,
        clock: Clock,
        stats: ServiceStats,
        options: LimiterOptions | None = None,
        rules: RuleSet = EMPTY_RULESET,
        cluster: ClusterView | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.stats = stats
        self.options = options or LimiterOptions()
        self.rules = rules  # swapped whole on reload; read once per decision
        self.cluster = cluster  # None: a single node, nothing is shared

    def decide(self, request: Request) -> Decision:
        rules = self.rules
        domain = rules.domains.get(request.domain)
        if domain is None:
            self.stats.domain_not_found += 1
            return Decision(Code.OK, [STATUS_NO_LIMIT] * len(request.descriptors))
        now = self.clock.now()
        plans = [self._resolve(domain.name, domain, d) for d in request.descriptors]
        self._apply_replaces(plans)

        default_hits = max(request.hits_addend, 1)
        any_over = False
        # Hits that earlier descriptors of this request will add to the same counter (two
        # descriptors can share one, e.g. through share_threshold): the reference counts
        # them one after the other, so the later descriptor sees the earlier one's hits.
        pending: dict[int, int] = {}
        for plan, descriptor in zip(plans, request.descriptors, strict=True):
            if plan is None or not plan.limits or plan.limits[0].unlimited:
                continue
            hits = descriptor.hits_addend if descriptor.hits_addend is not None else default_hits
            mine: set[int] = set()  # limits of one window length share one counter
            for limit in plan.limits:
                check = self._evaluate(domain.name, plan.counter_path, limit, hits, now)
                if check.counter is not None:
                    earlier = pending.get(id(check.counter), 0)
                    if earlier:
                        check.before += earlier
                        check.after += earlier
                        check.over = check.over or check.after > limit.requests_per_unit
                    mine.add(id(check.counter))
                plan.checks.append(check)
                any_over = any_over or check.over
            for counter_id in mine:
                pending[counter_id] = pending.get(counter_id, 0) + hits

        commit = not (any_over and self.options.stop_increment_when_over_limit)
        decision = Decision(Code.OK, [])
        for index, (plan, descriptor) in enumerate(zip(plans, request.descriptors, strict=True)):
            if plan is None or not plan.limits:
                decision.statuses.append(STATUS_NO_LIMIT)
                continue
            if plan.limits[0].unlimited:
                decision.statuses.append(STATUS_UNLIMITED)
                continue
            hits = descriptor.hits_addend if descriptor.hits_addend is not None else default_hits
            decision.statuses.append(self._commit(domain.name, plan, hits, commit, index, decision))

        # Quota mode (as the reference since its "all limits exceeded" fix): quota rules
        # over their limit let the request through, unless every one of them is over.
        all_quota_over = 0 < decision.quota_descriptors == len(decision.quota_violations)
        if all_quota_over or any(s.code is Code.OVER_LIMIT for s in decision.statuses):
            if self.options.shadow_mode:
                self.stats.global_shadow_mode += 1
            else:
                decision.overall = Code.OVER_LIMIT
        if self.options.response_headers:
            decision.headers = _headers(decision.statuses)
        return decision

    # -- step 1 ------------------------------------------------------------------------

    def _resolve(self, domain_name: str, domain: Domain, descriptor: RequestDescriptor) -> _Plan | None:
        entries = descriptor.entries
        if descriptor.override is not None and descriptor.override[1] is not Unit.UNKNOWN:
            requests, unit = descriptor.override
            path = matcher.COUNTER_SEPARATOR.join(f"{k}={v}" for k, v in entries)
            # Keys only: request values would make the metric's cardinality unbounded.
            stats_key = ".".join([domain_name, *(k for k, _ in entries)])
            return _Plan(None, (Limit(requests, unit),), path, stats_key)
        match = matcher.find(domain, entries)
        if match is None:
            return None
        return _Plan(match.rule, match.rule.limits, match.counter_path, match.stats_key)

    @staticmethod
    def _apply_replaces(plans: Sequence[_Plan | None]) -> None:
        replaced = {name for p in plans if p is not None for lim in p.limits for name in lim.replaces}
        if not replaced:
            return
        for plan in plans:
            if plan is not None:
                plan.limits = tuple(lim for lim in plan.limits if not (lim.name and lim.name in replaced))

    # -- step 2 ------------------------------------------------------------------------

    def _evaluate(self, domain: str, path: str, limit: Limit, hits: int, now: float) -> _Check:
        length = limit.window_seconds
        start = window_start(now, length)
        key = f"{domain}{KEY_SEPARATOR}{path}{KEY_SEPARATOR}{length}"
        sliding = limit.algorithm is Algorithm.SLIDING_WINDOW
        retain = start + length * (2 if sliding else 1) + self.options.grace_seconds
        counter = self.store.get_or_create(key, start, length, retain, now)
        reset = seconds_until_reset(now, length)
        if counter is None:
            if self.options.on_counter_overflow is OverflowPolicy.DENY:
                # As if the window were already full: every hit of the request is over limit.
                full = limit.requests_per_unit
                return _Check(limit, None, full, full + hits, True, reset)
            return _Check(limit, None, 0, 0, False, reset)
        counter.limit = limit.requests_per_unit
        mode = limit.consistency or self.options.default_consistency
        if mode is Consistency.LOCAL:
            counter.shared = False
        before = counter.total
        if sliding:
            previous = self.store.get(key, start - length)
            if previous is not None:
                before = sliding_weight_count(previous.total, before, now, start, length)
        after = before + hits
        over = after > limit.requests_per_unit
        cluster = self.cluster
        if over or mode is not Consistency.BOUNDED or cluster is None or not cluster.active:
            return _Check(limit, counter, before, after, over, reset)
        # Bounded: within the global limit, but this node may only spend its allowance,
        # a share of the budget left at the last merge (core/allowance.py).
        if counter.allowance < 0:
            counter.allowance = cluster.allowance(key, limit.requests_per_unit - before)
            counter.spent = 0
            counter.fresh = cluster.is_new(key)
        if counter.spent + hits <= counter.allowance:
            return _Check(limit, counter, before, after, False, reset, spend=True)
        if counter.fresh and counter.allowance == 0 and counter.spent == 0 and hits <= 1:
            # Cold start: demand is not known yet; one hit per member may pass.
            return _Check(limit, counter, before, after, False, reset, spend=True)
        # Refused by the allowance while the global count is under the limit: not
        # counted, or refused hits would eat the budget the busy node needs.
        return _Check(limit, counter, before, after, True, reset, count=False)

    # -- step 3 ------------------------------------------------------------------------

    def _commit(
        self, domain: str, plan: _Plan, hits: int, commit: bool, index: int, decision: Decision
    ) -> DescriptorStatus:
        dirty = self.store.dirty
        done: set[int] = set()  # two limits of one window length share a counter: add once
        for check in plan.checks:
            counter = check.counter
            if counter is None or id(counter) in done:
                continue
            done.add(id(counter))
            if commit and hits and check.count:
                counter.own += hits
                if not check.over:
                    counter.admitted += hits
                if check.spend:
                    counter.spent += hits
            if counter.shared and hits:
                counter.seen += hits
                dirty.add(counter)
        if any(c.counter is None for c in plan.checks):
            self.stats.counter_overflow += 1
        # The most restrictive limit: the first one over, else the one with least left.
        over = [c for c in plan.checks if c.over]
        check = over[0] if over else min(plan.checks, key=lambda c: c.remaining)
        rule = plan.rule
        stats = self.stats.rule(domain, plan.stats_key)
        self._count(stats, check, hits)
        limit = CurrentLimit(check.limit.requests_per_unit, check.limit.unit, check.limit.name)
        if rule is not None and rule.quota_mode:
            decision.quota_mode = True
            decision.quota_descriptors += 1
        if not check.over:
            return DescriptorStatus(Code.OK, limit, check.remaining, check.reset)
        if rule is not None and rule.quota_mode:
            decision.quota_violations.append(index)
            return DescriptorStatus(Code.OK, limit, 0, check.reset)
        if rule is not None and rule.shadow_mode:
            stats.shadow_mode += hits
            return DescriptorStatus(Code.OK, limit, 0, check.reset)
        return DescriptorStatus(Code.OVER_LIMIT, limit, 0, check.reset)

    def _count(self, stats: RuleStats, check: _Check, hits: int) -> None:
        """Per-rule stats, split the way envoyproxy/ratelimit splits them."""
        limit = check.limit.requests_per_unit
        near = math.floor(limit * self.options.near_limit_ratio)
        before, after = check.before, check.after
        stats.total_hits += hits
        if check.over:
            if before >= limit:
                stats.over_limit += hits
            else:
                stats.over_limit += after - limit
                stats.near_limit += limit - max(near, before)
        else:
            if after > near:
                stats.near_limit += hits if before >= near else after - near
            stats.within_limit += hits


def _headers(statuses: Sequence[DescriptorStatus]) -> list[tuple[str, str]]:
    """RateLimit-* headers from the descriptor closest to its limit.

    As the reference: the one with the least remaining, but a descriptor that is over
    limit always wins over one that merely has 0 left (the last one over, if several).
    """
    tightest: DescriptorStatus | None = None
    for status in statuses:
        if status.limit is None:
            continue
        if status.code is Code.OVER_LIMIT or tightest is None or status.remaining < tightest.remaining:
            tightest = status
    if tightest is None or tightest.limit is None:
        return []
    return [
        ("RateLimit-Limit", str(tightest.limit.requests_per_unit)),
        ("RateLimit-Remaining", str(tightest.remaining)),
        ("RateLimit-Reset", str(tightest.reset_seconds)),
    ]
