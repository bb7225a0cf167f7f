"""The deployment documents' links lead somewhere: every relative link names a file of
the repository, and every #anchor a heading of the document it points into."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.conftest import REPO

DOCUMENTS = [
    "README.md",
    "docs/deployment.md",
    "docs/operations.md",
    "docs/migration.md",
    "deploy/docker/README.md",
]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_resolve(document: str) -> None:
    source = REPO / document
    broken = []
    for target in _LINK.findall(source.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        missing_anchor = bool(anchor) and file.suffix == ".md" and anchor not in _anchors(file)
        if not file.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{document}: {broken}"
