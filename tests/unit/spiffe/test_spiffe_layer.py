"""The SPIFFE layer stays pure: it imports no I/O and nothing else of swim-as."""

from __future__ import annotations

import ast
from pathlib import Path

import swim_as.spiffe

PACKAGE = Path(swim_as.spiffe.__file__).parent
ALLOWED_ROOTS = {
    "__future__",
    "base64",
    "binascii",
    "collections",
    "cryptography",
    "dataclasses",
    "datetime",
    "hashlib",
    "json",
    "jwt",
    "re",
    "types",
    "typing",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_imports_stay_inside_the_layer() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in PACKAGE.glob("*.py")
        for name in _imports(path)
        if not (
            name == "swim_as.spiffe"
            or name.startswith("swim_as.spiffe.")
            or name.split(".")[0] in ALLOWED_ROOTS
        )
    }

    assert offenders == set()


def test_package_exports_exist() -> None:
    for name in swim_as.spiffe.__all__:
        assert getattr(swim_as.spiffe, name) is not None
