"""Data flows one way: no library module imports the application layer
(modelsec_fast.app), directly, relatively, inside a function or by name."""

import ast
import pathlib
import re

import pytest

import modelsec_fast

PACKAGE = pathlib.Path(modelsec_fast.__file__).parent
APP = "modelsec_fast.app"
# `python -m modelsec_fast` must start the command: the one library-side file that may.
ENTRY_POINT = PACKAGE / "__main__.py"
_MODULE_PATH = re.compile(r"modelsec_fast\.app(\.\w+)*")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_app(name: str) -> bool:
    return name == APP or name.startswith(APP + ".")


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a (possibly relative) ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def app_imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Each import of the application layer in ``tree`` (the source of ``module``),
    as ``line: what``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if _is_app(a.name)]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            if _is_app(source) or any(_is_app(f"{source}.{a.name}") for a in node.names):
                found.append(f"{node.lineno}: from {source} import "
                             f"{', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _MODULE_PATH.fullmatch(node.value):
            # importlib.import_module("modelsec_fast.app..."), a lazy-export table, ...
            found.append(f"{node.lineno}: the module name {node.value!r}")
    return found


def _library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ENTRY_POINT or (PACKAGE / "app") in path.parents:
            continue
        yield path


def test_no_library_module_imports_the_application_layer():
    scanned, problems = 0, []
    for path in _library_modules():
        tree = ast.parse(path.read_text(), str(path))
        scanned += 1
        problems += [f"{path.relative_to(PACKAGE.parent)}:{p}"
                     for p in app_imports(tree, _module_name(path), path.name == "__init__.py")]
    assert not problems, "library modules import modelsec_fast.app:\n" + "\n".join(problems)
    assert scanned > 50  # the scan did walk the library (privacy, attacks, audit, ...)


@pytest.mark.parametrize("source,module,is_package", [
    ("import modelsec_fast.app.cli\n", "modelsec_fast.evaluate", False),
    ("import modelsec_fast.app as a\n", "modelsec_fast.evaluate", False),
    ("from modelsec_fast.app.training import train_model\n", "modelsec_fast.audit.canary", False),
    ("from modelsec_fast import app\n", "modelsec_fast.models", False),
    ("from ..app.recipe import TrainingRecipe\n", "modelsec_fast.audit.membership", False),
    ("from .. import app\n", "modelsec_fast.audit.membership", False),
    ("from . import app\n", "modelsec_fast", True),
    ("from .app import main\n", "modelsec_fast", True),
    ("from ...app import demo\n", "modelsec_fast.privacy.layers", True),
    ("def f():\n    from modelsec_fast.app.demo import run_demo\n", "modelsec_fast.data", False),
    ("import importlib\nimportlib.import_module('modelsec_fast.app.cli')\n",
     "modelsec_fast.ops", False),
    ("_EXPORTS = {'main': 'modelsec_fast.app'}\n", "modelsec_fast", True),
])
def test_the_scan_finds_each_form_of_import(source, module, is_package):
    assert app_imports(ast.parse(source), module, is_package)


@pytest.mark.parametrize("source,module,is_package", [
    ("from modelsec_fast.audit import membership_audit\n", "modelsec_fast.evaluate", False),
    ("from ..application import x\n", "modelsec_fast.audit.membership", False),
    ("from . import attacks\n", "modelsec_fast", True),
    ('"""The app (:mod:`modelsec_fast.app.training`) replays recipes."""\n',
     "modelsec_fast.audit", True),
])
def test_the_scan_passes_what_is_not_the_application_layer(source, module, is_package):
    assert not app_imports(ast.parse(source), module, is_package)
