"""System tools some tests need (``promtool``, ``prometheus``): run, skip or fail.

Where a tool is missing, its tests are skipped and the pytest summary says so in one line,
with the command that installs it. Under ``CI=true`` a missing tool fails the test instead:
CI must never skip silently. ``deploy/install_test_tools.sh`` installs them (``make test``
calls it).

Use the fixtures of ``tests/conftest.py`` (``promtool``) or call ``require_tool`` directly.
"""
from __future__ import annotations

import enum
import os
import re
import shutil
from collections import Counter
from typing import Iterable, Mapping, NamedTuple

import pytest

# Tool -> the Debian/Ubuntu package that ships it.
PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus"}
SKIP_PREFIX = "missing tool "
_SKIP_PATTERN = re.compile(re.escape(SKIP_PREFIX) + r"(\S+):")


class Action(enum.Enum):
    """What a test that needs a tool does."""

    RUN = "run"
    SKIP = "skip"
    FAIL = "fail"


class ToolRequirement(NamedTuple):
    """The decision for one tool: the action, the tool's path (if found) and the reason."""

    action: Action
    path: str | None
    reason: str


def install_command(name: str) -> str:
    """The command that installs tool ``name``."""
    return f"sudo apt-get install {PACKAGES.get(name, name)}"


def in_ci(env: Mapping[str, str]) -> bool:
    """True when ``env`` says this is CI (``CI=true``, any case)."""
    return env.get("CI", "").strip().lower() == "true"


def tool_requirement(name: str, env: Mapping[str, str]) -> ToolRequirement:
    """Decides whether a test that needs tool ``name`` runs, is skipped or fails.

    Args:
        name: the executable, looked up on ``PATH`` with ``shutil.which``.
        env: the environment; ``CI=true`` turns a skip into a failure.

    Returns:
        RUN with the tool's path when found; otherwise SKIP, or FAIL under CI.
    """
    path = shutil.which(name)
    if path is not None:
        return ToolRequirement(Action.RUN, path, f"{name} found at {path}")
    if in_ci(env):
        return ToolRequirement(Action.FAIL, None,
                               f"{name} not found on PATH and CI=true: CI must run its tests; "
                               f"install it: {install_command(name)}")
    return ToolRequirement(Action.SKIP, None,
                           f"{SKIP_PREFIX}{name}: not found on PATH; install it: {install_command(name)}")


def require_tool(name: str, env: Mapping[str, str] | None = None) -> str:
    """The path of tool ``name``; skips the calling test when missing, fails it under CI.

    Args:
        name: the executable to look up.
        env: the environment (default ``os.environ``).

    Returns:
        The tool's path.
    """
    decision = tool_requirement(name, os.environ if env is None else env)
    if decision.action is Action.FAIL:
        pytest.fail(decision.reason, pytrace=False)
    if decision.action is Action.SKIP:
        pytest.skip(decision.reason)
    assert decision.path is not None
    return decision.path


def missing_tool_counts(reasons: Iterable[str]) -> Counter[str]:
    """How many skips each missing tool caused, read from the skip reasons."""
    return Counter(m.group(1) for m in map(_SKIP_PATTERN.search, reasons) if m)


def summary_line(counts: Mapping[str, int]) -> str | None:
    """One line for the pytest summary naming the missing tools, or None when none was."""
    if not counts:
        return None
    tools = ", ".join(f"{name} ({n} test{'s' if n != 1 else ''})" for name, n in sorted(counts.items()))
    packages = " ".join(sorted({PACKAGES.get(name, name) for name in counts}))
    return (f"skipped for missing system tools: {tools}; install on Debian/Ubuntu with "
            f"`sudo apt-get install {packages}`, or run `make test` as root or with passwordless "
            f"sudo, which installs it")


def skip_reasons(reports: Iterable[object]) -> list[str]:
    """The reasons of skipped test reports (``longrepr`` is ``(path, line, reason)``)."""
    return [r.longrepr[2] for r in reports
            if isinstance(getattr(r, "longrepr", None), tuple) and len(r.longrepr) == 3]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """Writes the missing-tools line after pytest's own summary."""
    line = summary_line(missing_tool_counts(skip_reasons(terminalreporter.stats.get("skipped", []))))
    if line is not None:
        terminalreporter.write_line(line, yellow=True, bold=True)
