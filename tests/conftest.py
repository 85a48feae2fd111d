"""Shared fixtures: the system tools some tests need (see ``tests/system_tools.py``), and the
one summary line that names the tools whose tests were skipped."""
import pytest

from tests.system_tools import pytest_terminal_summary, require_tool  # noqa: F401  (the hook)

pytest_plugins = ["pytester"]


@pytest.fixture
def promtool() -> str:
    """The path of ``promtool``; skips the test where it is missing, fails it under CI=true."""
    return require_tool("promtool")
