"""deploy/install_test_tools.sh, run with stub commands on PATH (nothing is installed): it
installs Prometheus only as root or with passwordless sudo, and otherwise prints one line with
the install command and exits 0."""
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/install_test_tools.sh"


@pytest.fixture
def stubs(tmp_path):
    """``stubs(id="0", apt_get=0, sudo=None, tools=False)`` -> (PATH, calls file): a folder of stub
    commands that append their argv to the calls file; ``None`` leaves a command out."""
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def stub(name, body):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{body}\n')
        path.chmod(0o755)

    def make(uid="0", apt_get=0, sudo=None, tools=False):
        stub("id", f"echo {uid}")
        stub("env", 'shift; "$@"')  # drops DEBIAN_FRONTEND=..., runs the rest
        if apt_get is not None:
            stub("apt-get", f"exit {apt_get}")
        if sudo is not None:
            stub("sudo", f'[ "$2" = true ] && exit {sudo}; shift; "$@"')
        if tools:
            stub("promtool", "")
            stub("prometheus", "")
        return str(bin_dir), calls
    return make


def _run(path, env=None):
    return subprocess.run(["/bin/sh", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                          env={"PATH": path, **(env or {})})


def _calls(calls):
    return calls.read_text().splitlines() if calls.exists() else []


def test_does_nothing_when_both_tools_are_on_path(stubs):
    path, calls = stubs(tools=True)
    result = _run(path)
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert _calls(calls) == []


def test_installs_as_root(stubs):
    path, calls = stubs(uid="0")
    result = _run(path)
    assert result.returncode == 0 and "event=test_tools_installed" in result.stdout
    assert [c for c in _calls(calls) if c.startswith("apt-get")] == [
        "apt-get update -qq", "apt-get install -y -qq --no-install-recommends prometheus"]


def test_installs_with_passwordless_sudo(stubs):
    path, calls = stubs(uid="1000", sudo=0)
    result = _run(path)
    assert result.returncode == 0 and "event=test_tools_installed" in result.stdout
    assert "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq" in _calls(calls)


@pytest.mark.parametrize("kwargs, reason", [
    pytest.param({"uid": "1000", "sudo": 1}, "not_root_no_passwordless_sudo", id="sudo-asks-password"),
    pytest.param({"uid": "1000"}, "not_root_no_passwordless_sudo", id="no-sudo"),
    pytest.param({"uid": "0", "apt_get": None}, "no_apt_get", id="no-apt-get"),
    pytest.param({"uid": "0", "apt_get": 100}, "apt_get_failed", id="apt-get-fails"),
])
def test_says_in_one_line_how_to_install_and_exits_zero(stubs, kwargs, reason):
    path, _ = stubs(**kwargs)
    result = _run(path)
    assert result.returncode == 0
    (line,) = result.stderr.splitlines()
    assert f"reason={reason}" in line and "tests=skipped" in line
    assert 'install="sudo apt-get install prometheus"' in line


def test_says_the_tests_fail_under_ci(stubs):
    path, _ = stubs(uid="1000")
    result = _run(path, {"CI": "true"})
    assert result.returncode == 0 and "tests=fail" in result.stderr
