"""The loaded rules: immutable snapshots that are swapped whole on reload.

A domain is a tree of descriptor rules. Each level of the tree is looked up the way
envoyproxy/ratelimit does it: an exact `key`+`value` entry first, then the first
wildcard value that matches (in file order), then the key-only default.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hivemind_ratelimit.core.windows import Unit, window_length


class Algorithm(StrEnum):
    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"


class Consistency(StrEnum):
    BOUNDED = "bounded"
    EVENTUAL = "eventual"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Limit:
    requests_per_unit: int
    unit: Unit
    unit_multiplier: int = 1
    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    consistency: Consistency | None = None  # None: the service default
    name: str = ""
    replaces: tuple[str, ...] = ()
    unlimited: bool = False

    @property
    def window_seconds(self) -> int:
        return window_length(self.unit, self.unit_multiplier)

    def describe(self) -> str:
        if self.unlimited:
            return "unlimited"
        per = self.unit.name.lower()
        if self.unit_multiplier != 1:
            per = f"{self.unit_multiplier} {per}s"
        text = f"{self.requests_per_unit} per {per}"
        if self.algorithm is Algorithm.SLIDING_WINDOW:
            text += " (sliding)"
        if self.consistency is not None:
            text += f" [{self.consistency.value}]"
        return text


@dataclass(slots=True)
class Level:
    """The children of one node, indexed for lookup."""

    exact: dict[tuple[str, str], Rule] = field(default_factory=dict)
    default: dict[str, Rule] = field(default_factory=dict)
    wildcards: list[tuple[str, re.Pattern[str], Rule]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.exact or self.default or self.wildcards)

    def rules(self) -> Iterator[Rule]:
        """Children in a stable order: exact, wildcard, default."""
        yield from self.exact.values()
        for _, _, rule in self.wildcards:
            yield rule
        yield from self.default.values()


@dataclass(slots=True, eq=False)
class Rule:
    key: str
    value: str
    limits: tuple[Limit, ...]
    stats_key: str
    source: str  # file:line, for people
    shadow_mode: bool = False
    quota_mode: bool = False
    detailed_metric: bool = False
    value_to_metric: bool = False
    share_threshold: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    children: Level = field(default_factory=Level)

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.value

    @property
    def unlimited(self) -> bool:
        return any(limit.unlimited for limit in self.limits)


@dataclass(slots=True)
class Domain:
    name: str
    root: Level
    files: list[str]


@dataclass(frozen=True, slots=True)
class RuleSet:
    domains: Mapping[str, Domain]
    version: str  # content hash, short
    sources: tuple[str, ...]

    def walk(self) -> Iterator[Rule]:
        """Every rule of every domain, depth first."""
        stack: list[Rule] = []
        for domain in sorted(self.domains):
            stack.extend(reversed(list(self.domains[domain].root.rules())))
            while stack:
                rule = stack.pop()
                yield rule
                stack.extend(reversed(list(rule.children.rules())))

    def dump(self) -> str:
        """One line per rule with a limit, like envoyproxy/ratelimit's /rlconfig."""
        lines = []
        for rule in self.walk():
            for limit in rule.limits:
                extra = []
                if rule.shadow_mode:
                    extra.append("shadow_mode")
                if rule.quota_mode:
                    extra.append("quota_mode")
                if limit.name:
                    extra.append(f"name={limit.name}")
                flags = f" ({', '.join(extra)})" if extra else ""
                lines.append(f"{rule.stats_key}: {limit.describe()}{flags}")
        return "\n".join(lines) + ("\n" if lines else "")


EMPTY_RULESET = RuleSet(domains={}, version="empty", sources=())


def wildcard_pattern(value: str) -> re.Pattern[str]:
    """`*` matches any run of characters (also none), anywhere, any number of times."""
    parts = (".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", value))
    return re.compile("".join(parts), re.DOTALL)
