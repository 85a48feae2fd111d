"""The import rule: common imports nothing of the project; actors, replay and learner import
only common; nothing imports deploy (the composition root)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("common", "actors", "replay", "learner", "deploy")
ALLOWED = {
    "common": {"common"},
    "actors": {"common", "actors"},
    "replay": {"common", "replay"},
    "learner": {"common", "learner"},
    "deploy": set(PACKAGES),
}


def _project_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = _project_imports(path) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_component_imports_deploy():
    # bench/ scripts, like tests/, are entry points: they may build the fleet through deploy/.
    for package in ("common", "actors", "replay", "learner"):
        for path in (ROOT / package).rglob("*.py"):
            assert "deploy" not in _project_imports(path), path


def test_no_ray_remote_decorator_on_component_classes():
    for package in ("common", "actors", "replay", "learner"):
        for path in (ROOT / package).rglob("*.py"):
            assert "@ray.remote" not in path.read_text(), f"{path}: wrap with ray.remote in deploy/"
