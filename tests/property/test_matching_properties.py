"""Matching: random rule trees against an independent model of envoyproxy/ratelimit's
lookup, and the properties an operator relies on when editing a rule file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.errors import RuleConfigError
from hivemind_ratelimit.rules import matcher
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.rules.model import RuleSet

FAST = settings(max_examples=60, deadline=None)

KEYS = ["k1", "k2", "k3"]
EXACT_VALUES = ["a", "b", "ab", "ba", "a.b"]
RULE_VALUES = ["", *EXACT_VALUES, "*", "a*", "*b", "a*b", "*a*", "a.*"]
REQUEST_VALUES = ["", "a", "b", "ab", "ba", "aab", "abb", "a.b", "axb", "bab", "c", "a\nb"]


@dataclass
class Node:
    key: str
    value: str
    limited: bool
    children: list[Node] = field(default_factory=list)
    name: str = ""


def dedupe(nodes: list[Node]) -> list[Node]:
    seen = set()
    out = []
    for node in nodes:
        if (node.key, node.value) not in seen:
            seen.add((node.key, node.value))
            out.append(node)
    return out


def node_strategy(children: st.SearchStrategy[list[Node]]) -> st.SearchStrategy[Node]:
    return st.builds(Node, st.sampled_from(KEYS), st.sampled_from(RULE_VALUES), st.booleans(), children)


leaf = st.builds(Node, st.sampled_from(KEYS), st.sampled_from(RULE_VALUES), st.booleans())
trees = st.recursive(
    st.lists(leaf, max_size=4).map(dedupe),
    lambda inner: st.lists(node_strategy(inner), max_size=4).map(dedupe),
    max_leaves=20,
)


def name_all(nodes: list[Node], prefix: str = "r") -> None:
    for index, node in enumerate(nodes):
        node.name = f"{prefix}.{index}"
        name_all(node.children, node.name)


def to_yaml(nodes: list[Node]) -> list[dict[str, Any]]:
    out = []
    for node in nodes:
        item: dict[str, Any] = {"key": node.key}
        if node.value:
            item["value"] = node.value
        if node.limited:
            item["rate_limit"] = {"name": node.name, "unit": "second", "requests_per_unit": 1}
        if node.children:
            item["descriptors"] = to_yaml(node.children)
        out.append(item)
    return out


def load(nodes: list[Node]) -> RuleSet:
    text = json.dumps({"domain": "d", "descriptors": to_yaml(nodes)})  # JSON is YAML
    return load_texts([("tree.yaml", text)])


def glob(pattern: str, text: str) -> bool:
    """'*' matches any run of characters; nothing else is special."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    head, *middle, tail = parts
    if len(text) < len(head) + len(tail) or not text.startswith(head) or not text.endswith(tail):
        return False
    position, end = len(head), len(text) - len(tail)
    for part in middle:
        found = text.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


def model_find(nodes: list[Node], entries: list[tuple[str, str]]) -> str | None:
    """envoyproxy/ratelimit's GetLimit, over the tree as written in the file."""
    level = nodes
    for index, (key, value) in enumerate(entries):
        found = next(
            (n for n in level if n.key == key and n.value == value and value and "*" not in value), None
        )
        if found is None:
            found = next((n for n in level if n.key == key and "*" in n.value and glob(n.value, value)), None)
        if found is None:
            found = next((n for n in level if n.key == key and not n.value), None)
        if found is None:
            return None
        if index == len(entries) - 1:
            return found.name if found.limited else None
        if not found.children:
            return None
        level = found.children
    return None


def found_name(rules: RuleSet, entries: list[tuple[str, str]]) -> str | None:
    match = matcher.find(rules.domains["d"], entries)
    return match.rule.limits[0].name if match is not None else None


def exact_paths(nodes: list[Node], prefix: tuple[tuple[str, str], ...] = ()) -> list[tuple[Node, tuple]]:
    out = []
    for node in nodes:
        if node.value and "*" not in node.value:
            path = (*prefix, (node.key, node.value))
            out.append((node, path))
            out.extend(exact_paths(node.children, path))
    return out


def draw_request(data: st.DataObject, nodes: list[Node]) -> list[tuple[str, str]]:
    """A request that mostly follows the tree (so that it often matches), sometimes not."""
    entries: list[tuple[str, str]] = []
    level = nodes
    while True:
        if level and data.draw(st.integers(0, 9)) > 0:
            node = data.draw(st.sampled_from(level))
            if node.value and "*" not in node.value:
                value = node.value
            else:
                value = data.draw(st.sampled_from([v for v in REQUEST_VALUES if glob(node.value or "*", v)]))
            entries.append((node.key, value))
            level = node.children
        else:
            entries.append((data.draw(st.sampled_from(KEYS)), data.draw(st.sampled_from(REQUEST_VALUES))))
            level = []
        if len(entries) == 5 or not data.draw(st.booleans()):
            return entries


@FAST
@given(trees, st.data())
def test_matcher_agrees_with_the_reference_model(nodes: list[Node], data: st.DataObject) -> None:
    name_all(nodes)
    rules = load(nodes)
    for _ in range(6):
        entries = draw_request(data, nodes)
        expected = model_find(nodes, entries)
        event("matched" if expected else "no limit")
        assert found_name(rules, entries) == expected, entries


@FAST
@given(trees)
def test_a_request_equal_to_an_exact_rule_path_finds_that_rule(nodes: list[Node]) -> None:
    name_all(nodes)
    rules = load(nodes)
    for node, path in exact_paths(nodes):
        expected = node.name if node.limited else None
        assert found_name(rules, list(path)) == expected


@FAST
@given(trees, st.data())
def test_adding_an_unrelated_rule_never_changes_another_paths_match(
    nodes: list[Node], data: st.DataObject
) -> None:
    name_all(nodes)
    before = load(nodes)
    paths = exact_paths(nodes)
    # Add one rule anywhere: at the root or under any existing node.
    parents: list[list[Node]] = [nodes]
    stack = list(nodes)
    while stack:
        node = stack.pop()
        parents.append(node.children)
        stack.extend(node.children)
    siblings = data.draw(st.sampled_from(parents))
    extra = Node(
        data.draw(st.sampled_from(KEYS)), data.draw(st.sampled_from(RULE_VALUES)), True, name="extra"
    )
    assume(all((n.key, n.value) != (extra.key, extra.value) for n in siblings))
    siblings.append(extra)
    try:
        after = load(nodes)
    except RuleConfigError as exc:  # pragma: no cover - the generator avoids duplicates
        raise AssertionError(exc.problems) from exc
    for _, path in paths:
        assert found_name(after, list(path)) == found_name(before, list(path))
