"""Descriptor matching, exactly as envoyproxy/ratelimit does it.

At each level of the tree: the exact `key`+`value` rule first, else the first wildcard
rule (file order) whose pattern matches the value, else the key-only default. A rule
is found only when the request's last entry lands on a node with a limit:
- a request shallower than the tree uses the node it stops on;
- a request deeper than the tree gets no limit (there is no fallback to a parent);
- a node without a limit is an allowlist.
Matching is case-sensitive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hivemind_ratelimit.rules.model import Domain, Rule

COUNTER_SEPARATOR = "\x1f"


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    counter_path: str  # which counter: the request's values (or a shared wildcard pattern)
    stats_key: str  # the metric key, as the reference's stats key


def find(domain: Domain, entries: Sequence[tuple[str, str]]) -> Match | None:
    level = domain.root
    counter_parts: list[str] = []
    stats_parts: list[str] = [domain.name]
    last = len(entries) - 1
    for index, (key, value) in enumerate(entries):
        rule = level.exact.get((key, value))
        if rule is None:
            for wild_key, pattern, candidate in level.wildcards:
                if wild_key == key and pattern.fullmatch(value):
                    rule = candidate
                    break
            else:
                rule = level.default.get(key)
                if rule is None:
                    return None
        # share_threshold: every value matching the wildcard shares one counter.
        counter_parts.append(f"{key}={rule.value if rule.share_threshold else value}")
        if rule.value_to_metric:
            stats_parts.append(f"{key}_{value}" if value else key)
        else:
            stats_parts.append(f"{key}_{rule.value}" if rule.value else key)
        if index == last:
            if not rule.limits:
                return None  # an allowlist entry
            if rule.detailed_metric:
                stats_key = ".".join([domain.name, *(f"{k}_{v}" if v else k for k, v in entries)])
            else:
                stats_key = ".".join(stats_parts)
            return Match(rule, COUNTER_SEPARATOR.join(counter_parts), stats_key)
        if not rule.children:
            return None  # the request is deeper than the tree
        level = rule.children
    return None
