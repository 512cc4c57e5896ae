"""Every subpackage ships: pyproject.toml lists packages by hand."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_package_is_listed() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "swim_as").rglob("__init__.py")
    }
    assert found - listed == set(), (
        f"add to [tool.setuptools] packages: {found - listed}"
    )
