"""Guards for the folder -> `specdec.*` namespace mapping and the import direction rules."""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ["train", "models", "data", "eval", "runtime"]
ALLOWED = {  # which specdec packages each package may import
    "models": set(),
    "data": set(),
    "runtime": {"models"},
    "eval": {"runtime", "models"},
    "train": {"models", "data"},
}


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _python_folders() -> set[str]:
    """Top-level folders (and their subfolders) that hold Python modules, as dotted names."""
    found = set()
    for folder in PACKAGE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            found.add(".".join(path.parent.relative_to(ROOT).parts))
    return found


def test_every_python_folder_is_mapped_into_the_namespace():
    setup = _pyproject()["tool"]["setuptools"]
    mapped = {name for name in setup["packages"] if name != "specdec.recipes"}
    expected = {f"specdec.{folder}" for folder in _python_folders()}
    assert mapped == expected
    for name in mapped:
        top = name.split(".")[1]
        assert setup["package-dir"][f"specdec.{top}"] == top


def test_recipes_folder_is_yaml_only_and_shipped():
    setup = _pyproject()["tool"]["setuptools"]
    assert setup["package-dir"]["specdec.recipes"] == "recipes"
    files = [p for p in (ROOT / "recipes").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".yaml", ".yml", ".json") for p in files)


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _all_modules():
    for folder in PACKAGE_FOLDERS + ["tests", "scripts"]:
        yield from (ROOT / folder).rglob("*.py")


def test_no_module_imports_the_bare_folder_names():
    bad = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _all_modules()
        for name in _imports(path)
        if name.split(".")[0] in PACKAGE_FOLDERS
    ]
    assert bad == []


@pytest.mark.parametrize("package", PACKAGE_FOLDERS)
def test_imports_point_one_way(package):
    bad = []
    for path in (ROOT / package).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "specdec" and len(parts) > 1 and parts[1] != package and parts[1] not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []
