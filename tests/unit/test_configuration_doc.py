"""docs/configuration.md documents every settings key and every rule field, and only
keys that exist: a documented key works, a key that works is documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from hivemind_ratelimit.rules.loader import DESCRIPTOR_KEYS, RATE_LIMIT_KEYS, ROOT_KEYS
from hivemind_ratelimit.settings import Settings

DOC = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
SECTIONS = ("server", "mesh", "rate_limiting", "observability")


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _keys(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_setting_is_documented() -> None:
    missing = [key for key in _keys(Settings) if f"`{key}`" not in DOC]
    assert missing == []


def test_every_documented_setting_exists() -> None:
    known = set(_keys(Settings))
    pattern = r"^\| `((?:" + "|".join(SECTIONS) + r")\.[a-z_.]+)`"
    documented = set(re.findall(pattern, DOC, flags=re.M))
    assert documented, "the settings tables were not found"
    assert documented - known == set()


def test_every_rule_field_is_documented() -> None:
    missing = [key for key in sorted(ROOT_KEYS | DESCRIPTOR_KEYS | RATE_LIMIT_KEYS) if f"`{key}`" not in DOC]
    assert missing == []
