"""The image's train role passes SIGTERM on to the trainer and waits for its shutdown
(docker compose stop sends SIGTERM to the entrypoint, through the container's init)."""
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"

FAKE_TRAINER = """#!{python}
import signal, sys, time, pathlib
log = pathlib.Path({log!r})
def on_term(*_):
    time.sleep(1.0)  # a shutdown that takes a while: the entrypoint must wait for it
    log.open("a").write("trainer: checkpoint after SIGTERM\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
log.open("a").write("trainer: started " + " ".join(sys.argv[1:]) + "\\n")
while True:
    time.sleep(0.05)
"""


def test_sigterm_reaches_the_trainer_and_ray_stops_after_it(tmp_path):
    log = tmp_path / "log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text(f"#!/bin/sh\necho \"ray: $1\" >> {log}\n")
    (bin_dir / "carla-td3").write_text(FAKE_TRAINER.format(python=sys.executable, log=str(log)))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_TOKEN": "t"}
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "train", "--preset", "smoke"], env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "trainer: started" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = log.read_text().splitlines()
    assert lines[0] == "ray: start"
    assert lines[1] == "trainer: started train --ray-address auto --preset smoke"
    # the trainer's shutdown finished before the node's Ray was stopped
    assert lines[2:] == ["trainer: checkpoint after SIGTERM", "ray: stop"], lines
