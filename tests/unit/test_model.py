"""The rule model: wildcard patterns, limit descriptions, walking a rule set."""

from __future__ import annotations

import pytest

from hivemind_ratelimit.core.windows import Unit
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.rules.model import EMPTY_RULESET, Algorithm, Consistency, Limit, wildcard_pattern


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*", "", True),
        ("a*", "a", True),
        ("a*", "ba", False),
        ("*a", "ba", True),
        ("a*b*c", "a-b-c", True),
        ("a*b*c", "a-c-b", False),
        ("a?c", "abc", False),  # only '*' is special
        ("a?c", "a?c", True),
        ("[ab]", "a", False),
        ("[ab]", "[ab]", True),
        ("a.c", "abc", False),
        ("x**y", "xy", True),
        ("line*", "line\nbreak", True),  # '*' crosses newlines too
    ],
)
def test_wildcard_pattern(pattern: str, value: str, matches: bool) -> None:
    assert bool(wildcard_pattern(pattern).fullmatch(value)) is matches


@pytest.mark.parametrize(
    ("limit", "text"),
    [
        (Limit(5, Unit.SECOND), "5 per second"),
        (Limit(100, Unit.SECOND, unit_multiplier=30), "100 per 30 seconds"),
        (Limit(1, Unit.HOUR, algorithm=Algorithm.SLIDING_WINDOW), "1 per hour (sliding)"),
        (Limit(1, Unit.DAY, consistency=Consistency.LOCAL), "1 per day [local]"),
        (Limit(0, Unit.UNKNOWN, unlimited=True), "unlimited"),
    ],
)
def test_limit_describe(limit: Limit, text: str) -> None:
    assert limit.describe() == text


def test_window_seconds() -> None:
    assert Limit(1, Unit.MINUTE, unit_multiplier=5).window_seconds == 300


def test_walk_is_depth_first_per_domain_in_name_order() -> None:
    b = "domain: b\ndescriptors:\n  - key: x\n"
    a = (
        "domain: a\ndescriptors:\n"
        "  - key: k\n    descriptors:\n      - key: child\n"
        "  - key: k\n    value: v\n"
        "  - key: k\n    value: w*\n"
    )
    rules = load_texts([("b.yaml", b), ("a.yaml", a)])
    # exact, then wildcards, then defaults at each level; children right after their parent
    assert [r.stats_key for r in rules.walk()] == ["a.k_v", "a.k_w*", "a.k", "a.k.child", "b.x"]
    assert rules.sources == ("b.yaml", "a.yaml")


def test_empty_ruleset() -> None:
    assert list(EMPTY_RULESET.walk()) == []
    assert EMPTY_RULESET.dump() == ""
