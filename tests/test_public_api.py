"""The public API: every package's __all__ resolves, the lazy names have a
TYPE_CHECKING import that names the same objects (so IDEs and type checkers see
them), the lazy imports stay lazy, and the package ships py.typed."""

import ast
import importlib
import importlib.util
import pathlib
import subprocess
import sys
import tomllib

import pytest

import modelsec_fast

PACKAGE = pathlib.Path(modelsec_fast.__file__).parent
ROOT = PACKAGE.parent


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _defines_all(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, (ast.Assign, ast.AnnAssign)) and any(
        isinstance(t, ast.Name) and t.id == "__all__"
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
        for n in tree.body)


def _resolve(module: str, name: str):
    """``module.name``: an attribute, or a submodule (as ``from module import *`` allows)."""
    mod = importlib.import_module(module)
    try:
        return getattr(mod, name)
    except AttributeError:
        if importlib.util.find_spec(f"{module}.{name}") is None:
            raise
        return importlib.import_module(f"{module}.{name}")


PACKAGES = sorted(_module_name(p) for p in PACKAGE.rglob("__init__.py"))
MODULES_WITH_ALL = sorted(_module_name(p) for p in PACKAGE.rglob("*.py")
                          if p.name != "__main__.py" and _defines_all(p))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_declares_all(package):
    path = PACKAGE.parent / package.replace(".", "/") / "__init__.py"
    assert _defines_all(path), f"{package} has no __all__"


@pytest.mark.parametrize("module", MODULES_WITH_ALL)
def test_every_name_in_all_resolves(module):
    mod = importlib.import_module(module)
    assert len(mod.__all__) == len(set(mod.__all__)), f"{module}.__all__ repeats a name"
    missing = []
    for name in mod.__all__:
        try:
            _resolve(module, name)
        except (AttributeError, ModuleNotFoundError):
            missing.append(name)
    assert not missing, f"{module}.__all__ names what it does not have: {missing}"


def _type_checking_imports(path: pathlib.Path, module: str) -> dict[str, tuple[str, str]]:
    """name -> (module, attribute) for each import inside ``if TYPE_CHECKING:``."""
    names = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.dump(stmt)
                base = module.split(".")[:len(module.split(".")) - (stmt.level - 1)] \
                    if stmt.level else []
                source = ".".join(base + ([stmt.module] if stmt.module else []))
                for alias in stmt.names:
                    names[alias.asname or alias.name] = (source, alias.name)
    return names


def _bound_at_import(path: pathlib.Path) -> set[str]:
    """Names the module's own top-level statements bind (imports, assignments,
    functions, classes), outside ``if TYPE_CHECKING`` blocks."""
    bound = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            bound.add(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return bound


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_names_have_a_type_checking_import_of_the_same_object(package):
    path = PACKAGE.parent / package.replace(".", "/") / "__init__.py"
    typed = _type_checking_imports(path, package)
    mod = importlib.import_module(package)
    advertised = {n for n in dir(mod) if not n.startswith("_")} - set(vars(mod))
    assert advertised <= set(mod.__all__), \
        f"{package}: resolves lazily but leaves out of __all__: {sorted(advertised - set(mod.__all__))}"
    lazy = set(mod.__all__) - _bound_at_import(path)
    assert lazy <= set(typed), (f"{package}: lazily resolved names without a TYPE_CHECKING "
                                f"import: {sorted(lazy - set(typed))}")
    for name, (source, attribute) in typed.items():
        assert name in mod.__all__, f"{package}: TYPE_CHECKING imports {name}, not in __all__"
        assert _resolve(package, name) is _resolve(source, attribute), \
            f"{package}.{name} is not {source}.{attribute}"


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(ROOT), check=True)
    return {m for m in done.stdout.split() if m.startswith("modelsec_fast")}


def test_importing_the_package_imports_no_engine_attack_or_application():
    loaded = _imported_after("import modelsec_fast")
    assert loaded == {"modelsec_fast"}, loaded


def test_lazy_names_import_only_what_they_need():
    loaded = _imported_after("import modelsec_fast.privacy")
    assert "modelsec_fast.privacy.engine" not in loaded, loaded
    loaded = _imported_after("from modelsec_fast import DPDataLoader")
    assert "modelsec_fast.privacy.sampling" in loaded
    assert not {"modelsec_fast.privacy.engine", "modelsec_fast.attacks"} & loaded, loaded
    loaded = _imported_after("import modelsec_fast.attacks")
    assert not {m for m in loaded if m.startswith(("modelsec_fast.privacy",
                                                   "modelsec_fast.app"))}, loaded
    loaded = _imported_after("from modelsec_fast import PrivacyEngine")
    assert "modelsec_fast.privacy.engine" in loaded
    assert not {m for m in loaded if m.startswith(("modelsec_fast.attacks",
                                                   "modelsec_fast.app"))}, loaded


def test_opacus_names_are_where_opacus_users_look():
    from modelsec_fast.privacy.distributed import DifferentiallyPrivateDistributedDataParallel
    from modelsec_fast.privacy.sampling import BatchMemoryManager, DPDataLoader

    for where in (modelsec_fast, modelsec_fast.privacy):
        assert where.DPDDP is where.DifferentiallyPrivateDistributedDataParallel \
            is DifferentiallyPrivateDistributedDataParallel
        assert where.DPDataLoader is DPDataLoader
        assert where.BatchMemoryManager is BatchMemoryManager
        assert where.PrivacyEngine is modelsec_fast.privacy.engine.PrivacyEngine


def test_the_version_is_one_and_the_package_is_typed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert modelsec_fast.__version__ == project["version"] == "0.2.0"
    assert (PACKAGE / "py.typed").is_file()
    assert project["scripts"]["modelsec-fast"] == "modelsec_fast.app.cli:main"
