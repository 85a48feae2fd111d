"""The import rule: common imports nothing of the project; rollout, replay and learner import
only common; nothing imports deploy (the composition root)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("common", "rollout", "replay", "learner", "deploy")
ALLOWED = {
    "common": {"common"},
    "rollout": {"common", "rollout"},
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
    # bench/ and experiments/ scripts, like tests/, are entry points: they may build the fleet
    # through deploy/.
    for package in ("common", "rollout", "replay", "learner"):
        for path in (ROOT / package).rglob("*.py"):
            assert "deploy" not in _project_imports(path), path


def test_no_ray_remote_decorator_on_component_classes():
    for package in ("common", "rollout", "replay", "learner"):
        for path in (ROOT / package).rglob("*.py"):
            assert "@ray.remote" not in path.read_text(), f"{path}: wrap with ray.remote in deploy/"


def _imports_ray(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ray":
            return True
    return False


@pytest.mark.parametrize("package", ("common", "rollout", "replay", "learner"))
def test_ray_is_imported_only_by_deploy(package):
    # Components meet their transports through seams (replay/transport.py, rollout/ weights):
    # Ray is one implementation, and it lives in deploy/ (bench/ and tests/ use it too).
    for path in (ROOT / package).rglob("*.py"):
        assert not _imports_ray(path), f"{path.relative_to(ROOT)} imports ray"
