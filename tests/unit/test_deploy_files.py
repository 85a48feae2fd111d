"""What CI can check of the deployment without a container engine: the compose file against the
compose specification and against our own rules (GPU pinning, CARLA port spacing, loopback-only
host ports, the Ray token from the environment, Grafana's login), promtool on the Prometheus configuration and
rules, the Grafana files, the Dockerfile, and the container scripts."""
import importlib.metadata
import json
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from common.metrics_prometheus import PrometheusSink

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "deploy/docker"
PROMETHEUS = ROOT / "deploy/prometheus"
GRAFANA = ROOT / "deploy/grafana"
BIN = pathlib.Path(sys.executable).parent


def _default(value: str) -> str:
    """Resolves compose interpolation ``${VAR:-default}`` to its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def carla(compose):
    """{service: rpc port} of the CARLA servers."""
    out = {}
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith("carlasim/carla:"):
            match = re.search(r"-carla-rpc-port=(\d+)", svc["command"])
            assert match, f"{name}: command sets no -carla-rpc-port"
            out[name] = int(match.group(1))
    return out


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}:{shutil.os.environ.get('PATH', '')}")
    assert path, f"{name} not found (pip extra 'test')"
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_compose_file_follows_the_compose_specification():
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_carla_servers_run_headless_pinned_to_distinct_gpus(compose, carla):
    assert len(carla) >= 2
    gpus = []
    for name in carla:
        svc = compose["services"][name]
        assert svc["image"] == "carlasim/carla:0.9.16"
        assert svc["command"].startswith("bash CarlaUE4.sh -RenderOffScreen -nosound")
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        (gpu,) = device["device_ids"]
        gpus.append(_default(gpu))
        assert svc["restart"] == "unless-stopped"
    assert len(set(gpus)) == len(gpus), f"CARLA servers share GPUs {gpus}"


def test_carla_rpc_ports_are_spaced_by_at_least_three(carla):
    ports = sorted(carla.values())
    assert all(b - a >= 3 for a, b in zip(ports, ports[1:])), ports


def test_carla_healthchecks_probe_their_own_port(compose, carla):
    for name, port in carla.items():
        probe = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"/dev/tcp/127.0.0.1/{port}" in probe, name


def test_trainer_and_readiness_gate_list_every_carla_server(compose, carla):
    expected = {f"{name}:{port}" for name, port in carla.items()}
    trainer = compose["services"]["trainer"]["command"]
    assert set(trainer[trainer.index("--carla") + 1].split(",")) == expected
    gate = compose["services"]["carla-ready"]
    assert set(gate["command"]) >= expected and gate["command"][0] == "wait-carla"
    deps = compose["services"]["trainer"]["depends_on"]
    assert deps["carla-ready"]["condition"] == "service_completed_successfully"


def test_no_gpus_key_and_every_device_reservation_names_capabilities(compose):
    for name, svc in compose["services"].items():
        assert "gpus" not in svc, f"{name}: docker-compose 1.29 rejects gpus:"
        for device in svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []):
            assert device.get("capabilities"), f"{name}: device reservation without capabilities"


def test_learner_node_has_its_own_gpu_and_the_run_volume(compose):
    learner = compose["services"]["ray-learner"]
    assert "--num-gpus=1" in learner["command"]
    (device,) = learner["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
    for name in ("ray-learner", "ray-rollout", "trainer", "ray-head"):
        assert "runs:/runs" in compose["services"][name]["volumes"], name
    assert "runs" in compose["volumes"]


def test_host_ports_bind_to_loopback_only(compose):
    published = [(n, p) for n, s in compose["services"].items() for p in s.get("ports", [])]
    assert {"127.0.0.1:8265:8265", "127.0.0.1:10001:10001"} <= {p for _, p in published}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_ray_token_comes_from_the_environment(compose):
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        if "RAY_AUTH_TOKEN" in env:
            assert env["RAY_AUTH_MODE"] == "token", name
            assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]+\}", env["RAY_AUTH_TOKEN"]), name
    ray_nodes = [n for n, s in compose["services"].items() if s.get("image", "").startswith("carla-td3:")]
    assert all("RAY_AUTH_TOKEN" in compose["services"][n]["environment"] for n in ray_nodes)
    for path in [COMPOSE, *DOCKER.iterdir()]:
        for line in path.read_text().splitlines():
            assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?[A-Za-z0-9]{16,}", line), f"{path}: {line}"


def test_fake_profile_drives_every_fake_server_without_gpus(compose):
    services = compose["services"]
    fake = {n: s for n, s in services.items() if "fake" in s.get("profiles", [])}
    servers = {n: s for n, s in fake.items() if "fake-server" in s["command"]}
    assert len(servers) >= 2 and "trainer-fake" in fake
    for name, svc in fake.items():
        assert "deploy" not in svc and "gpus" not in svc, f"{name}: reserves a GPU"
        assert "--num-gpus=1" not in svc["command"], name
    for name, svc in servers.items():
        command = svc["command"]
        port = command[command.index("--port") + 1]
        assert command[command.index("--host") + 1] == "0.0.0.0", name
        assert f"/dev/tcp/127.0.0.1/{port}" in " ".join(svc["healthcheck"]["test"]), name
    trainer = fake["trainer-fake"]["command"]
    endpoints = trainer[trainer.index("--carla") + 1].split(",")
    assert sorted(e.split(":")[0] for e in endpoints) == sorted(servers)
    assert "env.backend=fake" in trainer
    deps = fake["trainer-fake"]["depends_on"]
    assert all(deps[n]["condition"] == "service_healthy" for n in servers)
    assert not any(services[d].get("image", "").startswith("carlasim/") for d in deps)
    assert all("deploy" not in services[d] for d in deps), "a dependency reserves a GPU"
    from deploy import build, cli
    from common.config import SimulatorBackend

    cfg = cli.config_from_args(cli._parser().parse_args(trainer))
    build.validate(cfg)
    assert cfg.env.backend is SimulatorBackend.FAKE and cfg.train.endpoints == tuple(endpoints)


def test_long_running_services_restart_and_report_health(compose):
    for name, svc in compose["services"].items():
        if name in ("carla-ready", "trainer", "trainer-fake"):
            assert svc["restart"] == "no"
            continue
        assert svc["restart"] == "unless-stopped", name
        assert svc["healthcheck"]["test"], name


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{name}: {image}"
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG") and "IMAGE=" in line:
            assert re.search(r"=[\w./-]+:\d[\w.-]*$", line), line


def test_healthcheck_ports_match_what_the_entrypoint_starts(compose):
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    head = " ".join(compose["services"]["ray-head"]["healthcheck"]["test"])
    worker = " ".join(compose["services"]["ray-learner"]["healthcheck"]["test"])
    assert "127.0.0.1:8265/" in head and "--dashboard-port=8265" in entrypoint
    assert "127.0.0.1:52365/" in worker and "--dashboard-agent-listen-port=52365" in entrypoint
    assert compose["services"]["ray-rollout"]["healthcheck"] == compose["services"]["ray-learner"]["healthcheck"]


def test_prometheus_reads_the_discovery_file_ray_writes(compose):
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (ray_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    files = ray_job["file_sd_configs"][0]["files"]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    assert "ray-tmp:/tmp/ray:ro" in compose["services"]["prometheus"]["volumes"]
    assert "ray-tmp:/tmp/ray" in compose["services"]["ray-head"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]


def test_promtool_accepts_the_prometheus_config_and_rules(promtool):
    config = _run(promtool, "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _run(promtool, "check", "rules", *map(str, sorted((PROMETHEUS / "rules").glob("*.yml"))))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_accepts_every_dashboard_query(promtool, tmp_path):
    dash = json.loads((GRAFANA / "dashboards/carla-td3.json").read_text())
    exprs = [t["expr"].replace("$__rate_interval", "1m") for p in dash["panels"] for t in p.get("targets", [])]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _run(promtool, "check", "rules", str(path))
    assert result.returncode == 0 and f"{len(exprs)} rules found" in result.stdout, result.stdout + result.stderr


def test_grafana_files_parse_and_point_at_mounted_paths(compose):
    for path in GRAFANA.rglob("*.json"):
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["panels"], path
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())["providers"]
    mounts = compose["services"]["grafana"]["volumes"]
    paths = {p["name"]: p["options"]["path"] for p in providers}
    assert "./deploy/grafana/dashboards:" + paths["carla-td3"] + ":ro" in mounts
    assert paths["ray"].startswith("/tmp/ray/session_latest/") and "ray-tmp:/tmp/ray:ro" in mounts
    (source,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert source["name"] == compose["services"]["ray-head"]["environment"]["RAY_PROMETHEUS_NAME"]
    assert source["url"] == compose["services"]["ray-head"]["environment"]["RAY_PROMETHEUS_HOST"]


def test_grafana_asks_for_a_login_unless_anonymous_access_is_asked_for(compose):
    env = compose["services"]["grafana"]["environment"]
    for key in ("GF_AUTH_ANONYMOUS_ENABLED", "GF_SECURITY_ALLOW_EMBEDDING"):
        assert env[key] == "${GRAFANA_ANONYMOUS:-false}", key  # one switch, off by default
        assert _default(env[key]) == "false", key
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP", "false")).lower() == "false"
    for path in GRAFANA.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".yaml", ".ini"):
            assert "anonymous" not in path.read_text().lower(), path
    assert "GRAFANA_ANONYMOUS=true" in (ROOT / "docs/deployment.md").read_text()


def test_entrypoint_warns_when_ray_auth_is_disabled():
    env = {"PATH": "/usr/bin:/bin", "RAY_AUTH_MODE": "disabled"}
    # `true` stands in for the command, so no Ray starts: the check runs for Ray roles only.
    script = DOCKER / "entrypoint.sh"
    text = script.read_text().replace('exec ray start --head', 'exec true')
    result = subprocess.run(["bash", "-c", text, "entrypoint", "head"], capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "warning: event=ray_auth_disabled role=head" in result.stderr


def test_dockerfile_runs_as_non_root_and_copies_only_existing_paths():
    text = (DOCKER / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert text.index("USER ") < text.index("ENTRYPOINT")
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for src in sources.split():
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (relative, '/'-separated) out of the build
    context: a pattern matches the path or a folder above it, ``**`` any folders, ``!`` re-includes;
    the last matching pattern wins."""
    def regex(pattern: str) -> str:
        parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
        sub = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return "".join(sub.get(p, re.escape(p)) for p in parts)
    prefixes = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 2)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(re.fullmatch(regex(pattern.lstrip("!")), p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_dockerfile_copies_and_drops_local_state():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M)
    sources = [src for srcs in copies for src in srcs.split()]
    assert sources
    for src in sources:
        files = [src] + [p.relative_to(ROOT).as_posix() for p in (ROOT / src).rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts]
        kept_out = [f for f in files if _dockerignored(f, patterns)]
        assert not kept_out, f".dockerignore excludes what the Dockerfile copies: {kept_out[:5]}"
    for path in (".venv/bin/python", "runs/x/config.json", ".git/HEAD", "deploy/__pycache__/cli.pyc",
                 "common/x.pyc", ".pytest_cache/v", "docs/learning/episode.mp4"):
        assert _dockerignored(path, patterns), path


def _pins() -> dict[str, str]:
    """constraints.txt's pins that apply to this interpreter and platform (markers evaluated)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            assert canonicalize_name(req.name) not in pins, f"constraints.txt pins {req.name} twice"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_the_suite_runs_the_pinned_versions():
    pins = _pins()
    assert {"ray", "torch", "carla", "numpy", "prometheus-client", "opencv-python-headless",
            "tqdm", "tensorboard", "pytest"} <= set(pins)
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name in pins:
            installed = dist.version.split("+")[0]  # torch's CPU build is 2.13.0+cpu
            assert installed == pins[name], f"{name}: constraints.txt pins {pins[name]}, tests run {installed}"


def test_every_install_goes_through_the_one_lock_file():
    makefile = (ROOT / "Makefile").read_text()
    assert "--constraint constraints.txt" in makefile
    assert all("$(PIP)" in line for line in makefile.splitlines() if "pip install" in line
               and "--upgrade pip" not in line and not line.startswith("PIP"))
    dockerfile = (DOCKER / "Dockerfile").read_text()
    installs = [line for line in dockerfile.replace("\\\n", " ").splitlines() if "uv pip install" in line]
    assert installs and all("--constraint /opt/carla-td3/constraints.txt" in line for line in installs)
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_entrypoint_is_valid_bash_and_refuses_to_start_ray_without_a_token():
    script = DOCKER / "entrypoint.sh"
    assert _run("bash", "-n", str(script)).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "RAY_AUTH_MODE": "token"}
    result = subprocess.run(["bash", str(script), "head"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 64 and "RAY_AUTH_TOKEN is empty" in result.stderr


def test_healthcheck_http_and_carla_probes():
    script = str(DOCKER / "healthcheck.py")
    sink = PrometheusSink()
    port = sink.serve(0)
    try:
        assert _run(sys.executable, script, "http", f"http://127.0.0.1:{port}/metrics").returncode == 0
    finally:
        sink.close()
    assert _run(sys.executable, script, "http", "--timeout", "1", f"http://127.0.0.1:{port}/metrics").returncode == 1
    start = time.monotonic()
    closed = _run(sys.executable, script, "carla", "--timeout", "1", f"127.0.0.1:{port}")
    assert closed.returncode == 1 and "ready=false" in closed.stderr
    assert time.monotonic() - start < 20
    bad = _run(sys.executable, script, "carla", "carla-0")
    assert bad.returncode == 2 and "must look like HOST:PORT" in bad.stderr
