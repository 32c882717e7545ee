"""The layers (docs/architecture.md): the import contract in pyproject.toml holds, and breaks when a module imports
across it; every stage in dvc.yaml depends on every module it runs."""

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import grimp
import pytest
import yaml

from .conftest import REPO

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
# The params' checks decide whether a stage runs, not what it writes: a stage does not rerun when they change (the
# params themselves are tracked by each stage's `params:`), and the modules reached only through them are not its deps.
SERVER = "dogscats.product.server"
WEB_MODULES = {SERVER, "dogscats.product.review_api"}  # the web stack: the serve extra
PARAMS_CHECKS = {"dogscats.base.params", "dogscats.base.schema", "dogscats.base.vocabulary"}


def _lint_imports(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=project, capture_output=True, text=True)


def test_the_import_contract_holds():
    result = _lint_imports(REPO)
    assert result.returncode == 0 and "3 kept, 0 broken" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("product/cli.py", "import keras", "The product imports no TensorFlow, Keras, tf2onnx or SciPy"),
        ("product/classifier.py", "from dogscats.models.blending import choose", "The product imports no Tens"),
        ("base/scoring.py", "from dogscats.data import images", "The base imports no layer above it"),
        ("engine/workers.py", "from dogscats.models import head", "Stages over product over models over engine"),
        ("networks/backbones.py", "from dogscats.data import images", "Stages over product over models over engine"),
    ],
)
def test_the_import_contract_breaks_when_a_module_imports_across_it(tmp_path, module, line, broken):
    for name in ("dogscats", "stages"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    path = tmp_path / "dogscats" / module
    path.write_text(f"{line}\n{path.read_text()}")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout.split(broken, 1)[1].splitlines()[0]
    assert f"dogscats.{module[:-3].replace('/', '.')}" in result.stdout  # the report names the module


def _modules_run_by(graph: grimp.ImportGraph, script: str) -> set[str]:
    """The dogscats modules a stage script imports, directly or through others, but not through the params' checks."""
    seen, todo = set(), [script]
    while todo:
        for module in graph.find_modules_directly_imported_by(todo.pop()):
            if module.startswith("dogscats.") and module not in seen:
                seen.add(module)
                if module not in PARAMS_CHECKS:
                    todo.append(module)
    return seen - PARAMS_CHECKS


def test_each_stage_depends_on_every_module_it_runs():
    graph = grimp.build_graph("dogscats", "stages", cache_dir=None)
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)  # a foreach stage's definition
        paths = {Path(*module.split(".")) for module in _modules_run_by(graph, f"stages.{name}")}
        wanted = {path.with_suffix(".py") for path in paths if not (REPO / path).is_dir()}  # a layer: a docstring
        listed = {Path(dep) for dep in stage["deps"] if dep.startswith("dogscats/")}
        assert listed == wanted, (
            f"{name}: missing {sorted(map(str, wanted - listed))}, not run {sorted(map(str, listed - wanted))}"
        )


def test_each_layer_package_holds_only_its_docstring():
    for init in (REPO / "dogscats").glob("*/__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0].value, ast.Constant), f"{init}: code here is in no stage's deps"


def _external(graph: grimp.ImportGraph, module: str) -> set[str]:
    """The top-level names of the packages outside the standard library that a module imports, directly or not."""
    imported = {m.split(".")[0] for m in graph.find_upstream_modules(module, as_package=True)}
    return imported - set(sys.stdlib_module_names) - {"dogscats"}


def _distributions(requirements: list[str]) -> set[str]:
    """The distribution names of requirement lines."""
    return {_normal(re.split(r"[<>=!~\[ ]", requirement)[0]) for requirement in requirements}


def _normal(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_product_imports_only_what_pip_install_brings():
    """The classifier and the command need the core dependencies; the server and the review's routes (imported only by
    `dogscats serve` and `dogscats review`) the serve extra besides."""
    graph = grimp.build_graph("dogscats", include_external_packages=True, cache_dir=None)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core, serve = _distributions(project["dependencies"]), _distributions(project["optional-dependencies"]["serve"])
    installed = {name: {_normal(d) for d in found} for name, found in packages_distributions().items()}
    web = set().union(*(_external(graph, m) for m in WEB_MODULES))
    for module in WEB_MODULES:  # inside serve() and review() alone
        graph.remove_import(importer="dogscats.product.cli", imported=module)
    light = set().union(*(_external(graph, m) for m in graph.find_children("dogscats.product") - WEB_MODULES))
    assert light and {m for m in light if not installed[m] & core} == set()
    assert "fastapi" in web and {m for m in web if not installed[m] & (core | serve)} == set()


def test_dvc_lock_records_the_code_as_it_is():
    """dvc.lock is committed after every change to a stage's code (else a fresh clone's `dvc repro` reruns it)."""
    for name, stage in yaml.safe_load((REPO / "dvc.lock").read_text())["stages"].items():
        for dep in stage["deps"]:
            if dep["path"].endswith(".py"):
                found = hashlib.md5((REPO / dep["path"]).read_bytes()).hexdigest()
                assert found == dep["md5"], f"{name}: {dep['path']} changed since dvc.lock; run dvc repro and commit"
