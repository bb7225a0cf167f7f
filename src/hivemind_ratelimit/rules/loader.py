"""Load rule files: validate everything, report every problem with file, path and line.

The YAML is walked as a node tree (not as plain dicts) so that every problem carries
its line, keys that are not strings and keys given twice are caught, and one pass
collects all problems instead of stopping at the first. Loading builds a new RuleSet;
nothing is swapped unless the whole set is valid.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from hivemind_ratelimit.core.windows import UNIT_BY_NAME, Unit
from hivemind_ratelimit.errors import RuleConfigError, RuleProblem
from hivemind_ratelimit.rules.model import (
    Algorithm,
    Consistency,
    Domain,
    Level,
    Limit,
    Rule,
    RuleSet,
    wildcard_pattern,
)

ROOT_KEYS = {"domain", "descriptors"}
DESCRIPTOR_KEYS = {
    "key",
    "value",
    "rate_limit",
    "rate_limits",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
}
RATE_LIMIT_KEYS = {
    "requests_per_unit",
    "unit",
    "unlimited",
    "name",
    "replaces",
    "unit_multiplier",
    "algorithm",
    "consistency",
}
REPLACES_KEYS = {"name"}
UINT32_MAX = 4_294_967_295
RULE_SUFFIXES = (".yaml", ".yml")

_constructor = SafeConstructor()


def rule_files(path: Path) -> list[Path]:
    """The files a config path stands for: the file, or a directory's *.yaml / *.yml.

    Hidden entries are skipped, which also skips the `..data` machinery of a
    Kubernetes ConfigMap volume while following its visible symlinks.
    """
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if not p.name.startswith(".") and p.name.endswith(RULE_SUFFIXES) and p.is_file()
        )
    return [path]


def load_path(path: str | Path, *, merge_domains: bool = False) -> RuleSet:
    """Load a file or a directory of rule files; raises RuleConfigError with every problem."""
    root = Path(path)
    if not root.exists():
        raise RuleConfigError([RuleProblem(str(root), "", 0, "no such file or directory")])
    files = rule_files(root)
    texts: list[tuple[str, str]] = []
    problems: list[RuleProblem] = []
    for file in files:
        try:
            texts.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(RuleProblem(str(file), "", 0, f"cannot read: {exc}"))
    if problems:
        raise RuleConfigError(problems)
    return load_texts(texts, merge_domains=merge_domains)


def load_texts(texts: Iterable[tuple[str, str]], *, merge_domains: bool = False) -> RuleSet:
    """Load rule files given as (name, text) pairs."""
    builder = _Builder(merge_domains)
    digest = hashlib.sha256()
    names = []
    for name, text in texts:
        names.append(name)
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        builder.load(name, text)
    if builder.problems:
        raise RuleConfigError(builder.problems)
    return RuleSet(domains=builder.domains, version=digest.hexdigest()[:12], sources=tuple(names))


@dataclass
class _Builder:
    merge_domains: bool
    domains: dict[str, Domain] = field(default_factory=dict)
    problems: list[RuleProblem] = field(default_factory=list)
    _file: str = ""

    # -- reporting -------------------------------------------------------------------

    def problem(self, node: yaml.Node | None, where: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(RuleProblem(self._file, where, line, message))

    # -- files -----------------------------------------------------------------------

    def load(self, name: str, text: str) -> None:
        self._file = name
        try:
            document = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            self.problems.append(RuleProblem(name, "", line, f"malformed YAML: {exc}".replace("\n", " ")))
            return
        if document is None:
            self.problem(None, "", "config file cannot have empty domain (the file is empty)")
            return
        fields = self.mapping(document, "", ROOT_KEYS)
        if fields is None:
            return
        domain_node = fields.get("domain")
        domain = self.string(domain_node, "domain") if domain_node is not None else ""
        if not domain:
            self.problem(domain_node or document, "domain", "config file cannot have empty domain")
            return
        existing = self.domains.get(domain)
        if existing is not None and not self.merge_domains:
            self.problem(
                domain_node,
                "domain",
                f"duplicate domain '{domain}' (also in {', '.join(existing.files)}); "
                "set rate_limiting.merge_domains to spread a domain over several files",
            )
            return
        if existing is None:
            existing = Domain(name=domain, root=Level(), files=[])
            self.domains[domain] = existing
        existing.files.append(name)
        descriptors = fields.get("descriptors")
        if descriptors is not None:
            self.descriptors(descriptors, "descriptors", existing.root, domain)

    # -- descriptors -----------------------------------------------------------------

    def descriptors(self, node: yaml.Node, where: str, level: Level, parent_key: str) -> None:
        items = self.sequence(node, where)
        for index, item in enumerate(items or []):
            self.descriptor(item, f"{where}[{index}]", level, parent_key)

    def descriptor(self, node: yaml.Node, where: str, level: Level, parent_key: str) -> None:
        fields = self.mapping(node, where, DESCRIPTOR_KEYS)
        if fields is None:
            return
        key = self.string(fields.get("key"), f"{where}.key")
        if not key:
            self.problem(fields.get("key", node), f"{where}.key", "descriptor has empty key")
            return
        value = self.string(fields.get("value"), f"{where}.value")
        final_key = f"{key}_{value}" if value else key
        stats_key = f"{parent_key}.{final_key}"
        flags = {
            name: self.boolean(fields.get(name), f"{where}.{name}")
            for name in ("shadow_mode", "quota_mode", "detailed_metric", "value_to_metric", "share_threshold")
        }
        if flags["share_threshold"] and "*" not in value:
            self.problem(
                fields["share_threshold"],
                f"{where}.share_threshold",
                "share_threshold needs a wildcard value (one containing '*')",
            )
        limits = self.limits(fields, where)
        metadata = self.metadata(fields.get("metadata"), f"{where}.metadata")
        rule = Rule(
            key=key,
            value=value,
            limits=limits,
            stats_key=stats_key,
            source=f"{self._file}:{node.start_mark.line + 1}",
            metadata=metadata,
            shadow_mode=flags["shadow_mode"],
            quota_mode=flags["quota_mode"],
            detailed_metric=flags["detailed_metric"],
            value_to_metric=flags["value_to_metric"],
            share_threshold=flags["share_threshold"],
        )
        taken = (
            (key, value) in level.exact
            if value and "*" not in value
            else any(k == key and r.value == value for k, _, r in level.wildcards)
            if value
            else key in level.default
        )
        if taken:
            self.problem(node, where, f"duplicate descriptor composite key '{stats_key}'")
        elif not value:
            level.default[key] = rule
        elif "*" in value:
            level.wildcards.append((key, wildcard_pattern(value), rule))
        else:
            level.exact[(key, value)] = rule
        children = fields.get("descriptors")
        if children is not None:
            self.descriptors(children, f"{where}.descriptors", rule.children, stats_key)

    def limits(self, fields: dict[str, yaml.Node], where: str) -> tuple[Limit, ...]:
        single, many = fields.get("rate_limit"), fields.get("rate_limits")
        if single is not None and many is not None:
            self.problem(many, f"{where}.rate_limits", "give either rate_limit or rate_limits, not both")
            return ()
        if single is not None:
            if isinstance(single, yaml.ScalarNode) and single.tag.endswith(":null"):
                return ()
            limit = self.limit(single, f"{where}.rate_limit")
            return (limit,) if limit else ()
        if many is not None:
            out = []
            for index, item in enumerate(self.sequence(many, f"{where}.rate_limits") or []):
                limit = self.limit(item, f"{where}.rate_limits[{index}]")
                if limit:
                    out.append(limit)
            if any(limit.unlimited for limit in out) and len(out) > 1:
                self.problem(
                    many, f"{where}.rate_limits", "an unlimited limit cannot be combined with others"
                )
            return tuple(out)
        return ()

    def limit(self, node: yaml.Node, where: str) -> Limit | None:
        fields = self.mapping(node, where, RATE_LIMIT_KEYS)
        if fields is None:
            return None
        before = len(self.problems)
        unlimited = self.boolean(fields.get("unlimited"), f"{where}.unlimited")
        unit_text = self.string(fields.get("unit"), f"{where}.unit")
        unit = UNIT_BY_NAME.get(unit_text.lower())
        if unlimited and unit is not None:
            self.problem(
                fields.get("unit"), f"{where}.unit", "should not specify rate limit unit when unlimited"
            )
        elif not unlimited and unit is None:
            self.problem(fields.get("unit", node), f"{where}.unit", f"invalid rate limit unit '{unit_text}'")
        requests = self.integer(fields.get("requests_per_unit"), f"{where}.requests_per_unit", 0, UINT32_MAX)
        multiplier = self.integer(fields.get("unit_multiplier"), f"{where}.unit_multiplier", 1, 1_000_000)
        name = self.string(fields.get("name"), f"{where}.name")
        algorithm = self.choice(fields.get("algorithm"), f"{where}.algorithm", Algorithm)
        consistency = self.choice(fields.get("consistency"), f"{where}.consistency", Consistency)
        replaces = []
        for index, item in enumerate(self.sequence(fields.get("replaces"), f"{where}.replaces") or []):
            spot = f"{where}.replaces[{index}]"
            entry = self.mapping(item, spot, REPLACES_KEYS)
            if entry is None:
                continue
            target = self.string(entry.get("name"), f"{spot}.name")
            if not target:
                self.problem(item, spot, "should not have an empty replaces entry")
            elif target == name:
                self.problem(item, spot, "replaces should not contain name of same descriptor")
            else:
                replaces.append(target)
        if len(self.problems) > before:
            return None
        return Limit(
            requests_per_unit=requests if requests is not None else 0,
            unit=unit if unit is not None else Unit.UNKNOWN,
            unit_multiplier=multiplier if multiplier is not None else 1,
            algorithm=Algorithm(algorithm) if algorithm else Algorithm.FIXED_WINDOW,
            consistency=Consistency(consistency) if consistency else None,
            name=name,
            replaces=tuple(replaces),
            unlimited=unlimited,
        )

    # -- typed node readers --------------------------------------------------------------

    def mapping(self, node: yaml.Node, where: str, allowed: set[str]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, f"expected a mapping, got {_kind(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or not key_node.tag.endswith(":str"):
                self.problem(key_node, where, f"key is not of type string: {_text(key_node)}")
                continue
            key = key_node.value
            spot = f"{where}.{key}" if where else key
            if key not in allowed:
                self.problem(key_node, spot, f"unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")
                continue
            if key in out:
                self.problem(key_node, spot, f"key '{key}' is given twice")
                continue
            out[key] = value_node
        return out

    def sequence(self, node: yaml.Node | None, where: str) -> list[yaml.Node] | None:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return None
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, where, f"expected a list, got {_kind(node)}")
            return None
        return list(node.value)

    def string(self, node: yaml.Node | None, where: str) -> str:
        if node is None:
            return ""
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, where, f"expected a string, got {_kind(node)}")
            return ""
        if node.tag.endswith(":null"):
            return ""
        return str(node.value)  # numbers and booleans keep their text, as the reference does

    def boolean(self, node: yaml.Node | None, where: str) -> bool:
        if node is None:
            return False
        value = _scalar(node)
        if not isinstance(value, bool):
            self.problem(node, where, f"expected true or false, got {_text(node)}")
            return False
        return value

    def integer(self, node: yaml.Node | None, where: str, low: int, high: int) -> int | None:
        if node is None:
            return None
        value = _scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(node, where, f"expected a whole number, got {_text(node)}")
            return None
        if not low <= value <= high:
            self.problem(node, where, f"{value} is out of range ({low} to {high})")
            return None
        return value

    def choice(self, node: yaml.Node | None, where: str, options: type[Algorithm | Consistency]) -> str:
        text = self.string(node, where)
        allowed = [o.value for o in options]
        if text and text not in allowed:
            self.problem(node, where, f"'{text}' is not one of {', '.join(allowed)}")
            return ""
        return text

    def metadata(self, node: yaml.Node | None, where: str) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, f"expected a mapping, got {_kind(node)}")
            return {}
        value = _constructor.construct_object(node, deep=True)
        if any(not isinstance(k, str) for k in value):
            self.problem(node, where, "metadata keys must be strings")
            return {}
        return dict(value)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return node
    return _constructor.construct_object(node)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"'{node.value}'"


def _text(node: yaml.Node) -> str:
    return _kind(node) if not isinstance(node, yaml.ScalarNode) else repr(node.value)


def describe_path(path: str | Path) -> str:
    """A short text of what a config path holds, for logs."""
    p = Path(path)
    if p.is_dir():
        return f"{p} ({len(rule_files(p))} files)"
    return os.fspath(p)
