"""A local run's Ray binds to loopback, and a run says so loudly when Ray's token auth is off
while something listens beyond loopback (issue 30, finding 8). No Ray starts here:
tests/integration/test_ray_loopback.py starts one and lists its sockets."""
import logging

import pytest
from ray._private import ray_constants, services

from deploy import launch, presets


def test_a_local_ray_binds_its_node_and_dashboard_to_loopback():
    kwargs = launch.ray_init_kwargs(presets.smoke(), dashboard=True, metrics_port=9999)
    assert kwargs["_node_ip_address"] == "127.0.0.1"
    assert kwargs["dashboard_host"] == "127.0.0.1"
    assert kwargs["include_dashboard"] is True and kwargs["_metrics_export_port"] == 9999


def test_ray_keeps_the_loopback_node_address_only_inside_loopback_node():
    saved = ray_constants.ENABLE_RAY_CLUSTER
    with launch._loopback_node():
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER == saved


def test_loopback_node_restores_the_switch_after_an_error():
    saved = ray_constants.ENABLE_RAY_CLUSTER
    with pytest.raises(RuntimeError), launch._loopback_node():
        raise RuntimeError("ray.init failed")
    assert ray_constants.ENABLE_RAY_CLUSTER == saved


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                           ("localhost", True), ("::ffff:127.0.0.1", True),
                                           ("0.0.0.0", False), ("::", False),
                                           ("::ffff:10.0.0.5", False),
                                           ("10.0.0.5", False), ("ray-head", False)])
def test_is_loopback(host, loopback):
    assert launch.is_loopback(host) is loopback


@pytest.mark.parametrize("mode", ["disabled", "DISABLED", None])
def test_auth_off_with_a_routable_listener_is_a_warning_naming_it(mode):
    line = launch.exposure_warning(mode, [("ray_node", "10.0.0.5"), ("ray_dashboard", "127.0.0.1")])
    assert line.startswith("event=ray_auth_disabled ")
    assert "ray_node=10.0.0.5" in line and "ray_dashboard" not in line


@pytest.mark.parametrize("mode,listening", [
    ("token", [("ray_node", "10.0.0.5")]),
    ("disabled", [("ray_node", "127.0.0.1"), ("ray_dashboard", "127.0.0.1")]),
    ("disabled", []),
])
def test_no_warning_with_token_auth_or_only_loopback(mode, listening):
    assert launch.exposure_warning(mode, listening) is None


def test_check_exposure_warns_once_for_a_joined_cluster_without_auth(monkeypatch, caplog):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setattr(launch.ray.util, "get_node_ip_address", lambda: "10.0.0.5")
    with caplog.at_level(logging.INFO, logger=launch.log.name):
        launch._check_exposure(local=False, dashboard=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "event=ray_auth_disabled" in warnings[0].getMessage()


def test_check_exposure_flags_a_local_node_that_did_not_get_loopback(monkeypatch, caplog):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setattr(launch.ray.util, "get_node_ip_address", lambda: "10.0.0.5")
    with caplog.at_level(logging.INFO, logger=launch.log.name):
        launch._check_exposure(local=True, dashboard=True)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and messages[0].startswith("event=ray_not_loopback node_ip=10.0.0.5")


def test_a_loopback_local_node_logs_no_warning_even_without_auth(monkeypatch, caplog):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setattr(launch.ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    with caplog.at_level(logging.INFO, logger=launch.log.name):
        launch._check_exposure(local=True, dashboard=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
