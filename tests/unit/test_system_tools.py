"""The run/skip/fail decision for tests that need a system tool (tests/system_tools.py), and the
one summary line that names the missing tools, checked on a pytest run inside this one."""
import shutil

import pytest

from tests import system_tools as T

ABSENT = {"promtool": None, "prometheus": None}
PRESENT = {"promtool": "/usr/bin/promtool", "prometheus": "/usr/bin/prometheus"}


@pytest.fixture
def which(monkeypatch):
    """Sets what ``shutil.which`` finds: ``which({"promtool": path_or_none})``."""
    def set_found(found):
        monkeypatch.setattr(shutil, "which", lambda name, *a, **k: found.get(name))
    return set_found


@pytest.mark.parametrize("found, env, action", [
    pytest.param(PRESENT, {}, T.Action.RUN, id="present"),
    pytest.param(PRESENT, {"CI": "true"}, T.Action.RUN, id="present-ci"),
    pytest.param(ABSENT, {}, T.Action.SKIP, id="absent"),
    pytest.param(ABSENT, {"CI": "false"}, T.Action.SKIP, id="absent-ci-false"),
    pytest.param(ABSENT, {"CI": "1"}, T.Action.SKIP, id="absent-ci-1"),
    pytest.param(ABSENT, {"CI": "true"}, T.Action.FAIL, id="absent-ci"),
    pytest.param(ABSENT, {"CI": "TRUE"}, T.Action.FAIL, id="absent-ci-upper"),
])
def test_tool_requirement(which, found, env, action):
    which(found)
    decision = T.tool_requirement("promtool", env)
    assert decision.action is action
    assert decision.path == found["promtool"]
    if action is not T.Action.RUN:
        assert "promtool" in decision.reason and "apt-get install prometheus" in decision.reason


def test_only_a_skip_reason_is_counted_as_a_missing_tool(which):
    which(ABSENT)
    skip = T.tool_requirement("promtool", {}).reason
    fail = T.tool_requirement("prometheus", {"CI": "true"}).reason
    assert T.missing_tool_counts([skip, skip, fail, "unrelated reason"]) == {"promtool": 2}


def test_summary_line_names_tools_counts_and_the_install_command():
    assert T.summary_line({}) is None
    line = T.summary_line({"promtool": 3, "prometheus": 1})
    assert "\n" not in line
    assert "prometheus (1 test)" in line and "promtool (3 tests)" in line
    assert "apt-get install prometheus" in line and "make test" in line


INNER_TESTS = """
from tests.system_tools import require_tool

def test_promtool():
    require_tool("promtool")

def test_prometheus():
    require_tool("prometheus")

def test_promtool_again():
    require_tool("promtool")

def test_no_tool():
    pass
"""


def _run_inner(pytester, monkeypatch, path_dir, ci):
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester.runpytest_inprocess("-p", "tests.system_tools", "-p", "no:cacheprovider")


def test_missing_tools_are_skipped_and_named_in_one_summary_line(pytester, monkeypatch, tmp_path):
    result = _run_inner(pytester, monkeypatch, tmp_path, ci="false")
    result.assert_outcomes(passed=1, skipped=3)
    lines = [line for line in result.outlines if line.startswith("skipped for missing system tools")]
    assert len(lines) == 1
    assert "prometheus (1 test)" in lines[0] and "promtool (2 tests)" in lines[0]


def test_missing_tools_fail_under_ci_naming_the_tool(pytester, monkeypatch, tmp_path):
    result = _run_inner(pytester, monkeypatch, tmp_path, ci="true")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(["*promtool not found on PATH and CI=true*"])
    result.stdout.no_fnmatch_line("skipped for missing system tools*")


def test_present_tools_run(pytester, monkeypatch, tmp_path):
    for name in ("promtool", "prometheus"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    result = _run_inner(pytester, monkeypatch, tmp_path, ci="true")
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("skipped for missing system tools*")
