"""The fake CARLA as a server reached over TCP (``carla-td3 fake-server``), failing as CARLA does.

One ``FakeServer`` holds one in-process fake world (server.py's ``Host``) and serves it on one
port to any number of clients (remote_client.py); wire.py has the protocol. What a client sees:

* actors outlive the client that spawned them: a client that goes away leaves its vehicles and
  sensors in the world (its sensors stream to nobody) until some client destroys them;
* while the server boots (``boot_s`` after start) it accepts and drops connections, so a client
  retries until its timeout, then raises the real client's time-out text; a killed process
  refuses connections the same way;
* a stopped process (SIGSTOP) answers nothing, so every call times out after the client's
  ``set_timeout``;
* a second client connects and ticks the same world (it finds synchronous mode on);
* the fault injection of server.py works as in-process: ``fail_tick_at`` times one tick out,
  ``die_at_tick`` kills the world (every call of every client then times out after
  ``fault_delay_s``), and the first client to connect after a death boots (``boot_s``, refusing
  until then) and reaches a restarted world: empty, frame 0.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from typing import Any
from rollout.fakecarla import client as fake_client
from rollout.fakecarla import remote_calls, wire
from rollout.fakecarla.mapdata import load_assets
from rollout.fakecarla.server import Host
from common.config import FakeCarlaConfig
from common.errors import ConfigError

log = logging.getLogger(__name__)

ACCEPT_POLL_S = 0.25  # how often the accept loop looks at the stop flag and the boot clock
HELLO_TIMEOUT_S = 10.0  # a connection that sends no hello in this time is dropped


def check_config(cfg: FakeCarlaConfig) -> None:
    """Raises ConfigError naming the first negative delay."""
    for name in ("tick_latency_s", "fault_delay_s", "camera_delay_s", "boot_s"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} ({getattr(cfg, name)}) must be >= 0")


class FakeServer:
    """One fake world served on ``host:port`` (see the module docstring)."""

    def __init__(self, cfg: FakeCarlaConfig, host: str = "127.0.0.1", port: int = 2000) -> None:
        """Loads the map and binds the port (0: any free one, see ``port``); serves nothing
        until ``serve_forever`` or ``start``.

        Raises:
            ConfigError: for a negative delay or an unreadable map.
            OSError: if the port cannot be bound.
        """
        check_config(cfg)
        self.cfg = cfg
        self._host = Host(cfg, load_assets(cfg.xodr_path))
        self._client_class = type("Client", (fake_client.Client,), {"_host": self._host})
        self._lock = threading.RLock()  # one call at a time runs on the world
        self._sessions: dict[str, remote_calls.Session] = {}
        self._sockets: set[socket.socket] = set()
        self._stop = threading.Event()
        self._ready_at = time.monotonic() + cfg.boot_s
        self._announced_life = -1
        self._booting_life = -1  # the dead life whose restart is booting
        self._listener = socket.create_server((host, port), backlog=64)
        self._listener.settimeout(ACCEPT_POLL_S)
        self.host, self.port = host, int(self._listener.getsockname()[1])
        log.info("event=fake_server_listening host=%s port=%d boot_s=%s map=%s", self.host, self.port,
                 cfg.boot_s, self._host.assets.name)

    # -- lifecycle -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accepts clients until ``close``; each connection gets its own thread."""
        while not self._stop.is_set():
            self._announce_ready()
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                self._sockets.add(sock)
            threading.Thread(target=self._handle, args=(sock,), name="fake-server-conn", daemon=True).start()

    def start(self) -> threading.Thread:
        """Serves from a daemon thread (tests; the CLI calls ``serve_forever``)."""
        thread = threading.Thread(target=self.serve_forever, name="fake-server", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stops accepting and drops every connection; safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _shut(sock)
        log.info("event=fake_server_stopped port=%d", self.port)

    def _announce_ready(self) -> None:
        life = self._host.server.life
        if life != self._announced_life and time.monotonic() >= self._ready_at and not self._host.server.dead:
            self._announced_life = life
            log.info("event=fake_server_ready port=%d life=%d", self.port, life)

    # -- one connection ------------------------------------------------------------------------
    def _handle(self, sock: socket.socket) -> None:
        wire.tune(sock)
        reader = wire.FrameReader(sock)
        try:
            sock.settimeout(HELLO_TIMEOUT_S)
            hello = reader.read()
            sock.settimeout(None)
            if hello[0] == "rpc":
                session = self._open_session(str(hello[1]), int(hello[2]), float(hello[3]))
                if session is not None:
                    wire.send(sock, ["ok", session.token, session.conn.server.life])
                    self._serve_calls(session, sock, reader)
            elif hello[0] == "stream":
                self._serve_stream(str(hello[1]), sock, reader)
        except (wire.ConnectionClosed, OSError, ValueError, IndexError, TypeError) as exc:
            log.debug("event=fake_server_connection_closed error=%r", exc)
        finally:
            with self._lock:
                self._sockets.discard(sock)
            _shut(sock)

    def _open_session(self, client_host: str, client_port: int, timeout_s: float) -> remote_calls.Session | None:
        """A session on the current world; None (the caller drops the connection) while the
        server boots. The first connection after a death starts the boot clock."""
        with self._lock:
            now = time.monotonic()
            if self._host.server.dead and self._booting_life != self._host.server.life:
                self._booting_life = self._host.server.life
                self._ready_at = now + self.cfg.boot_s
                log.info("event=fake_server_rebooting port=%d boot_s=%s", self.port, self.cfg.boot_s)
            if now < self._ready_at:
                return None
            client = self._client_class(client_host, client_port)  # a dead world restarts here
            client.set_timeout(timeout_s)
            session = remote_calls.Session(client, uuid.uuid4().hex)
            self._sessions[session.token] = session
            return session

    def _serve_calls(self, session: remote_calls.Session, sock: socket.socket, reader: wire.FrameReader) -> None:
        try:
            while True:
                seq, method, args = reader.read()
                with self._lock:
                    status, value = remote_calls.run_call(session, method, args)
                    if method == "tick" and status == wire.OK:
                        self._broadcast_tick(session, value)
                if seq != wire.ONE_WAY:
                    wire.send(sock, [seq, status, value])
        finally:
            with self._lock:
                self._sessions.pop(session.token, None)
            if session.stream is not None:
                session.stream.open = False
                _shut(session.stream.sock)

    def _broadcast_tick(self, ticker: remote_calls.Session, value: list[Any]) -> None:
        """Every other client of the same world gets the tick's snapshot on its stream."""
        for session in self._sessions.values():
            if session is not ticker and session.conn.server is ticker.conn.server:
                session.push([wire.WORLD_TICK, *value])

    def _serve_stream(self, token: str, sock: socket.socket, reader: wire.FrameReader) -> None:
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return
            session.stream = remote_calls.Stream(sock)
        wire.send(sock, ["ok"])
        while True:  # nothing comes this way; a read returns when the client goes
            reader.read()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
