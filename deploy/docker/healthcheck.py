#!/usr/bin/env python3
"""Container health checks for docker compose (installed as ``carla-td3-healthcheck``).

    carla-td3-healthcheck http URL                  exit 0 when URL answers 2xx
    carla-td3-healthcheck carla HOST:PORT [...]     exit 0 when a carla client gets every world
    carla-td3-healthcheck carla --wait 900 HOST:PORT [...]   retry until then

A CARLA server opens its RPC port before its world is loaded, so an open port does not prove
readiness; ``carla.Client(host, port).get_world()`` answering does.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import urllib.error
import urllib.request
from typing import Sequence

log = logging.getLogger("carla_td3.healthcheck")


def check_http(url: str, timeout_s: float) -> bool:
    """True when ``url`` answers with a 2xx status within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            ok = 200 <= response.status < 300
            log.info("check=http url=%s status=%d", url, response.status)
            return ok
    except (urllib.error.URLError, OSError) as exc:
        log.info("check=http url=%s error=%r", url, str(exc))
        return False


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port).

    Raises:
        ValueError: naming the malformed endpoint.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {text!r} must look like HOST:PORT")
    return host, int(port)


def check_carla(host: str, port: int, timeout_s: float) -> bool:
    """True when a carla client connected to host:port gets the world within ``timeout_s``."""
    import carla

    try:
        client = carla.Client(host, port)
        client.set_timeout(timeout_s)
        world = client.get_world()
        log.info("check=carla endpoint=%s:%d map=%s", host, port, world.get_map().name)
        return True
    except RuntimeError as exc:
        log.info("check=carla endpoint=%s:%d error=%r", host, port, str(exc))
        return False


def wait_carla(endpoints: Sequence[str], timeout_s: float, wait_s: float, retry_s: float = 5.0) -> bool:
    """Checks every endpoint, retrying the ones not ready until ``wait_s`` has passed."""
    pending = [parse_endpoint(e) for e in endpoints]
    deadline = time.monotonic() + wait_s
    while True:
        pending = [(h, p) for h, p in pending if not check_carla(h, p, timeout_s)]
        if not pending or time.monotonic() + retry_s > deadline:
            break
        time.sleep(retry_s)
    for host, port in pending:
        log.info("check=carla endpoint=%s:%d ready=false waited_s=%.0f", host, port, wait_s)
    return not pending


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="carla-td3-healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="check", required=True)
    http = sub.add_parser("http", help="an HTTP endpoint answers 2xx")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=5.0)
    carla_p = sub.add_parser("carla", help="CARLA servers serve their world")
    carla_p.add_argument("endpoints", nargs="+", metavar="HOST:PORT")
    carla_p.add_argument("--timeout", type=float, default=5.0, help="client timeout per try (s)")
    carla_p.add_argument("--wait", type=float, default=0.0, help="keep retrying this long (s)")
    args = parser.parse_args(argv)
    if args.check == "http":
        return 0 if check_http(args.url, args.timeout) else 1
    try:
        return 0 if wait_carla(args.endpoints, args.timeout, args.wait) else 1
    except ValueError as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    sys.exit(main())
