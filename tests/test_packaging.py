"""The declared Python range holds for every pinned dependency, and every third-party import is pinned."""

import ast
import re
import sys
import tomllib
from importlib.metadata import metadata, packages_distributions

from packaging.specifiers import SpecifierSet

from .conftest import REPO

PINNED = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[A-Za-z0-9_,.-]+\])?==", re.MULTILINE)  # a name, its extras


def _normal(name: str) -> str:
    """A distribution name as PyPI compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pinned() -> set[str]:
    return {_normal(name) for name in PINNED.findall((REPO / "requirements.txt").read_text())}


def test_the_declared_python_range_is_what_the_dependencies_support():
    declared = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert [v in declared for v in ("3.10", "3.11", "3.12", "3.13", "3.14")] == [False, True, True, True, False]
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in declared
    for name in _pinned():
        needs = SpecifierSet(metadata(name).get("Requires-Python") or "")
        assert all(v in needs for v in ("3.11", "3.12", "3.13")), f"{name} needs Python {needs}"


def test_every_third_party_import_is_pinned():
    distributions = packages_distributions()
    imported = set()
    for path in [*(REPO / "dogscats").rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"dogscats", "stages"}
    unpinned = {m for m in third_party if not {_normal(d) for d in distributions.get(m, [])} & _pinned()}
    assert unpinned == set()
