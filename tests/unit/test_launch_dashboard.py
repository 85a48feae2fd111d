"""The log line after the Ray dashboard's URL: how to get the token the dashboard asks for when
Ray's token authentication is on (a new local Ray turns it on unless RAY_AUTH_MODE says
otherwise), or that it is off."""
import pytest

from deploy.launch import _dashboard_auth_line, _ray_cli


@pytest.mark.parametrize("mode", ["token", "TOKEN", " token "])
def test_token_mode_names_the_command_that_prints_the_token(mode):
    line = _dashboard_auth_line(mode, "/venv/bin/ray")
    assert line == 'event=ray_dashboard_auth mode=token token_command="/venv/bin/ray get-auth-token"'


@pytest.mark.parametrize("mode", [None, "", "disabled", "unknown"])
def test_any_other_mode_says_auth_is_off(mode):
    assert _dashboard_auth_line(mode, "ray") == "event=ray_dashboard_auth mode=disabled"


def test_the_ray_command_is_this_environments():
    cli = _ray_cli()
    assert cli == "ray" or cli.endswith("/ray")
