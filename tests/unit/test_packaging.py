"""The hand-written package list in pyproject.toml misses nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "swim_as").rglob("__init__.py")
    }
    found |= {"swim_as.migrations", "swim_as.migrations.versions"}
    assert found == listed
