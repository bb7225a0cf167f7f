"""Rule files (spec §3.2): what envoyproxy/ratelimit accepts loads, what it rejects is
rejected with every problem named by file, location inside the file and line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hivemind_ratelimit.core.windows import Unit
from hivemind_ratelimit.errors import RuleConfigError, RuleProblem
from hivemind_ratelimit.rules.loader import load_path, load_texts, rule_files
from hivemind_ratelimit.rules.model import Algorithm, Consistency, Rule, RuleSet

CONFIGS = Path(__file__).parent / "configs"
BAD = CONFIGS / "bad"
GOOD = CONFIGS / "good"

# file -> (location, line, a piece of the message)
EXPECTED_PROBLEMS: dict[str, tuple[str, int, str]] = {
    "unknown_key.yaml": ("descriptors[0].ratelimit", 5, "unknown key 'ratelimit'"),
    "unknown_root_key.yaml": ("version", 2, "unknown key 'version'"),
    "unknown_rate_limit_key.yaml": ("descriptors[0].rate_limit.burst", 7, "unknown key 'burst'"),
    "empty_domain.yaml": ("domain", 1, "empty domain"),
    "missing_domain.yaml": ("domain", 1, "empty domain"),
    "empty_file.yaml": ("", 0, "empty domain"),
    "empty_key.yaml": ("descriptors[0].key", 3, "empty key"),
    "duplicate_composite_key.yaml": (
        "descriptors[0].descriptors[1]",
        10,
        "duplicate descriptor composite key 'duplicate_composite_key.k1_v1.k2'",
    ),
    "duplicate_mapping_key.yaml": ("descriptors[0].value", 5, "given twice"),
    "invalid_unit.yaml": ("descriptors[0].rate_limit.unit", 5, "invalid rate limit unit 'fortnight'"),
    "missing_unit.yaml": ("descriptors[0].rate_limit.unit", 5, "invalid rate limit unit ''"),
    "unit_with_unlimited.yaml": (
        "descriptors[0].rate_limit.unit",
        6,
        "should not specify rate limit unit when unlimited",
    ),
    "empty_replaces.yaml": (
        "descriptors[0].rate_limit.replaces[0]",
        9,
        "should not have an empty replaces entry",
    ),
    "self_replaces.yaml": (
        "descriptors[0].rate_limit.replaces[0]",
        9,
        "replaces should not contain name of same descriptor",
    ),
    "share_threshold_without_wildcard.yaml": ("descriptors[0].share_threshold", 5, "wildcard"),
    "non_string_key.yaml": ("descriptors[0]", 4, "key is not of type string: '123'"),
    "malformed.yaml": ("", 5, "malformed YAML"),
    "requests_per_unit_too_large.yaml": (
        "descriptors[0].rate_limit.requests_per_unit",
        6,
        "4294967296 is out of range",
    ),
    "negative_requests_per_unit.yaml": ("descriptors[0].rate_limit.requests_per_unit", 6, "out of range"),
    "non_integer_requests_per_unit.yaml": (
        "descriptors[0].rate_limit.requests_per_unit",
        6,
        "expected a whole number",
    ),
    "rate_limit_and_rate_limits.yaml": ("descriptors[0].rate_limits", 8, "not both"),
    "unlimited_in_rate_limits.yaml": ("descriptors[0].rate_limits", 5, "unlimited"),
    "bad_algorithm.yaml": ("descriptors[0].rate_limit.algorithm", 7, "'token_bucket' is not one of"),
    "bad_consistency.yaml": ("descriptors[0].rate_limit.consistency", 7, "'strong' is not one of"),
    "bad_unit_multiplier.yaml": ("descriptors[0].rate_limit.unit_multiplier", 7, "0 is out of range"),
    "bad_boolean.yaml": ("descriptors[0].shadow_mode", 4, "expected true or false"),
    "not_a_mapping.yaml": ("", 1, "expected a mapping"),
    "descriptors_not_a_list.yaml": ("descriptors", 3, "expected a list"),
}


def problems_of(path: Path, *, merge_domains: bool = False) -> list[RuleProblem]:
    with pytest.raises(RuleConfigError) as caught:
        load_path(path, merge_domains=merge_domains)
    assert caught.value.problems, "a RuleConfigError carries at least one problem"
    return caught.value.problems


def test_every_bad_file_has_an_expectation() -> None:
    on_disk = {p.name for p in BAD.glob("*.yaml")} - {"several_problems.yaml"}
    assert on_disk == set(EXPECTED_PROBLEMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PROBLEMS))
def test_bad_file_is_rejected_with_file_location_and_line(name: str) -> None:
    location, line, message = EXPECTED_PROBLEMS[name]
    problems = problems_of(BAD / name)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.file == str(BAD / name)
    assert problem.location == location
    assert problem.line == line
    assert message in problem.message
    # The text people read carries all of it.
    text = str(problem)
    assert text.startswith(str(BAD / name))
    assert location in text
    if line:
        assert f"{BAD / name}:{line}" in text


@pytest.mark.parametrize("name", sorted(EXPECTED_PROBLEMS))
def test_bad_text_is_rejected_the_same_way_by_load_texts(name: str) -> None:
    text = (BAD / name).read_text()
    with pytest.raises(RuleConfigError) as caught:
        load_texts([("inline.yaml", text)])
    assert [p.file for p in caught.value.problems] == ["inline.yaml"]
    assert caught.value.problems[0].location == EXPECTED_PROBLEMS[name][0]


def test_a_file_with_several_problems_reports_all_of_them() -> None:
    problems = problems_of(BAD / "several_problems.yaml")
    found = [(p.location, p.line) for p in problems]
    assert found == [
        ("descriptors[0].rate_limit.unit", 5),
        ("descriptors[1].key", 7),
        ("descriptors[2].colour", 9),
        ("descriptors[2].rate_limit.algorithm", 13),
    ]
    assert {p.file for p in problems} == {str(BAD / "several_problems.yaml")}
    message = str(RuleConfigError(problems))
    assert message.count("\n") == 3  # one line per problem


def test_problems_of_several_files_are_all_reported() -> None:
    texts = [(name, (BAD / name).read_text()) for name in ("invalid_unit.yaml", "empty_key.yaml")]
    with pytest.raises(RuleConfigError) as caught:
        load_texts(texts)
    assert [p.file for p in caught.value.problems] == ["invalid_unit.yaml", "empty_key.yaml"]


def test_rule_problem_text() -> None:
    assert str(RuleProblem("r.yaml", "descriptors[0].key", 3, "descriptor has empty key")) == (
        "r.yaml:3: descriptors[0].key: descriptor has empty key"
    )
    assert str(RuleProblem("r.yaml", "", 0, "no such file")) == "r.yaml: no such file"


def test_missing_path_is_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent.yaml")
    assert problems[0].file == str(tmp_path / "absent.yaml")
    assert "no such file" in problems[0].message


def test_undecodable_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"domain: caf\xe9\n")
    problems = problems_of(tmp_path / "latin1.yaml")
    assert problems[0].file == str(tmp_path / "latin1.yaml")
    assert "cannot read" in problems[0].message


# -- good files ------------------------------------------------------------------------------


def rules_by_stats_key(rules: RuleSet) -> dict[str, Rule]:
    return {rule.stats_key: rule for rule in rules.walk()}


@pytest.mark.parametrize("path", sorted(GOOD.glob("*.yaml")), ids=lambda p: p.name)
def test_good_files_load(path: Path) -> None:
    rules = load_path(path)
    assert rules.sources == (str(path),)
    assert len(rules.version) == 12


def test_every_field_is_understood() -> None:
    rules = load_path(GOOD / "every_field.yaml")
    assert list(rules.domains) == ["every_field"]
    by_key = rules_by_stats_key(rules)

    default = by_key["every_field.generic_key_default"]
    assert default.key == "generic_key" and default.value == "default"
    assert default.limits[0].requests_per_unit == 5
    assert default.limits[0].unit is Unit.SECOND
    assert default.limits[0].name == "default_limit"
    assert default.source == f"{GOOD / 'every_field.yaml'}:5"

    assert by_key["every_field.user_vip"].limits[0].replaces == ("default_limit",)
    internal = by_key["every_field.user_internal"]
    assert internal.unlimited and internal.limits[0].unlimited
    assert by_key["every_field.user_allowlisted"].limits == ()

    assert by_key["every_field.shadow"].shadow_mode
    assert by_key["every_field.quota"].quota_mode
    assert by_key["every_field.client"].value_to_metric
    assert by_key["every_field.remote_address.path_/login"].detailed_metric
    assert by_key["every_field.remote_address.path_/login"].limits[0].unit is Unit.HOUR

    shared = by_key["every_field.path_/api/*"]
    assert shared.share_threshold and shared.is_wildcard
    assert by_key["every_field.path_/v*/users/*"].is_wildcard

    assert by_key["every_field.tenant"].metadata == {"owner": "team-a", "tags": ["gold", "eu"]}
    assert by_key["every_field.tenant"].limits[0].unit is Unit.WEEK

    window = by_key["every_field.window"].limits[0]
    assert window.unit_multiplier == 30
    assert window.window_seconds == 30
    assert window.algorithm is Algorithm.SLIDING_WINDOW
    assert window.consistency is Consistency.EVENTUAL

    burst, sustained = by_key["every_field.burst_and_sustained"].limits
    assert (burst.name, burst.requests_per_unit, burst.unit, burst.consistency) == (
        "burst",
        10,
        Unit.SECOND,
        Consistency.LOCAL,
    )
    assert (sustained.name, sustained.unit, sustained.algorithm, sustained.consistency) == (
        "sustained",
        Unit.HOUR,
        Algorithm.FIXED_WINDOW,
        Consistency.BOUNDED,
    )
    # Unit names are case-insensitive, as in the reference; the full uint32 range is allowed.
    assert by_key["every_field.long.month"].limits[0].unit is Unit.MONTH
    assert by_key["every_field.long.month"].limits[0].requests_per_unit == 4_294_967_295
    assert by_key["every_field.long.year"].limits[0].unit is Unit.YEAR
    # A limit without algorithm/consistency takes the defaults.
    assert default.limits[0].algorithm is Algorithm.FIXED_WINDOW
    assert default.limits[0].consistency is None
    assert default.limits[0].unit_multiplier == 1


def test_reference_nested_example_tree() -> None:
    rules = load_path(GOOD / "reference_nested.yaml")
    root = rules.domains["edge_proxy_per_ip"].root
    assert set(root.default) == {"remote_address"}
    assert set(root.exact) == {("remote_address", "50.0.0.5"), ("to_cluster", "ext_auth")}
    ext_auth = root.exact[("to_cluster", "ext_auth")]
    assert ext_auth.limits == ()
    assert ("remote_address", "10.0.0.1") in ext_auth.children.exact
    assert "remote_address" in ext_auth.children.default
    # requests_per_unit 0 blocks everything and is valid
    assert root.exact[("remote_address", "50.0.0.5")].limits[0].requests_per_unit == 0


def test_dump_lists_one_line_per_limit() -> None:
    dump = load_path(GOOD / "every_field.yaml").dump()
    lines = dump.splitlines()
    assert "every_field.generic_key_default: 5 per second (name=default_limit)" in lines
    assert "every_field.user_internal: unlimited" in lines
    assert "every_field.window: 100 per 30 seconds (sliding) [eventual]" in lines
    assert "every_field.shadow: 1 per second (shadow_mode)" in lines
    assert "every_field.quota: 1000 per day (quota_mode)" in lines
    assert sum(line.startswith("every_field.burst_and_sustained:") for line in lines) == 2
    # the allowlist entry has no limit, so no line
    assert not any("allowlisted" in line for line in lines)
    assert load_path(GOOD / "empty_descriptors.yaml").dump() == ""


def test_numbers_and_booleans_keep_their_text_as_values() -> None:
    rules = load_texts(
        [
            (
                "n.yaml",
                "domain: 42\ndescriptors:\n  - key: port\n    value: 8080\n    rate_limit: {unit: second, "
                "requests_per_unit: 1}\n  - key: flag\n    value: true\n",
            )
        ]
    )
    root = rules.domains["42"].root
    assert ("port", "8080") in root.exact
    assert ("flag", "true") in root.exact


def test_version_changes_with_content() -> None:
    text = (GOOD / "reference_example.yaml").read_text()
    a = load_texts([("a.yaml", text)])
    b = load_texts([("a.yaml", text)])
    c = load_texts([("a.yaml", text.replace("500", "501"))])
    assert a.version == b.version != c.version


def test_null_rate_limit_and_descriptors_are_allowed() -> None:
    rules = load_texts(
        [("n.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n    descriptors:\n")]
    )
    assert rules.domains["d"].root.default["k"].limits == ()


# -- directories -------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def domain_file(domain: str, key: str = "k") -> str:
    return (
        f"domain: {domain}\ndescriptors:\n"
        f"  - key: {key}\n    rate_limit: {{unit: second, requests_per_unit: 1}}\n"
    )


def test_directory_loads_only_visible_yaml_files(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", domain_file("b"))
    write(tmp_path / "a.yml", domain_file("a"))
    write(tmp_path / "README.md", "not a rule file: [")
    write(tmp_path / "c.yaml.bak", "not a rule file: [")
    write(tmp_path / ".hidden.yaml", "not a rule file: [")
    write(tmp_path / ".git" / "x.yaml", "not a rule file: [")
    write(tmp_path / "sub" / "nested.yaml", domain_file("nested"))  # not recursive
    (tmp_path / "dir.yaml").mkdir()  # a directory named like a file
    files = rule_files(tmp_path)
    assert files == [tmp_path / "a.yml", tmp_path / "b.yaml"]
    rules = load_path(tmp_path)
    assert set(rules.domains) == {"a", "b"}
    assert rules.sources == (str(tmp_path / "a.yml"), str(tmp_path / "b.yaml"))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_directory_follows_a_configmap_layout(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap volume: ..2024_xx/ holds the files, ..data links to it and
    the visible names link through ..data; only the visible names are loaded."""
    real = tmp_path / "..2024_01_01_00_00_00.000000"
    write(real / "rules.yaml", domain_file("configmap"))
    (tmp_path / "..data").symlink_to(real.name)
    (tmp_path / "rules.yaml").symlink_to(Path("..data") / "rules.yaml")
    assert rule_files(tmp_path) == [tmp_path / "rules.yaml"]
    assert set(load_path(tmp_path).domains) == {"configmap"}


def test_empty_directory_loads_no_domains(tmp_path: Path) -> None:
    rules = load_path(tmp_path)
    assert rules.domains == {}
    assert rules.sources == ()


def test_duplicate_domain_across_files_is_rejected() -> None:
    problems = problems_of(CONFIGS / "duplicate_domain")
    assert len(problems) == 1
    problem = problems[0]
    assert problem.file == str(CONFIGS / "duplicate_domain" / "duplicate_domain_b.yaml")
    assert problem.location == "domain"
    assert problem.line == 1
    assert "duplicate domain 'duplicated'" in problem.message
    assert "duplicate_domain_a.yaml" in problem.message  # where the first one is
    assert "merge_domains" in problem.message  # and how to allow it


def test_duplicate_domain_merges_with_merge_domains() -> None:
    rules = load_path(CONFIGS / "duplicate_domain", merge_domains=True)
    domain = rules.domains["duplicated"]
    assert set(domain.root.default) == {"a", "b"}
    assert domain.files == [
        str(CONFIGS / "duplicate_domain" / "duplicate_domain_a.yaml"),
        str(CONFIGS / "duplicate_domain" / "duplicate_domain_b.yaml"),
    ]


def test_merged_domains_still_reject_duplicate_composite_keys(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", domain_file("d", key="same"))
    write(tmp_path / "b.yaml", domain_file("d", key="same"))
    problems = problems_of(tmp_path, merge_domains=True)
    assert [(p.file, p.location) for p in problems] == [(str(tmp_path / "b.yaml"), "descriptors[0]")]
    assert "duplicate descriptor composite key 'd.same'" in problems[0].message


def test_one_bad_file_in_a_directory_fails_the_whole_load(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", domain_file("a"))
    write(tmp_path / "b.yaml", (BAD / "invalid_unit.yaml").read_text())
    problems = problems_of(tmp_path)
    assert [p.file for p in problems] == [str(tmp_path / "b.yaml")]


def test_same_value_in_different_parents_is_not_a_duplicate() -> None:
    text = (
        "domain: d\ndescriptors:\n"
        "  - key: a\n    descriptors:\n"
        "      - key: x\n        rate_limit: {unit: second, requests_per_unit: 1}\n"
        "  - key: b\n    descriptors:\n"
        "      - key: x\n        rate_limit: {unit: second, requests_per_unit: 2}\n"
    )
    rules = load_texts([("d.yaml", text)])
    assert {r.stats_key for r in rules.walk()} == {"d.a", "d.a.x", "d.b", "d.b.x"}


def test_duplicate_wildcards_and_defaults_are_rejected() -> None:
    text = (
        "domain: d\ndescriptors:\n"
        "  - key: p\n    value: /a/*\n  - key: p\n    value: /a/*\n"
        "  - key: q\n  - key: q\n"
    )
    with pytest.raises(RuleConfigError) as caught:
        load_texts([("d.yaml", text)])
    assert [p.location for p in caught.value.problems] == ["descriptors[1]", "descriptors[3]"]
