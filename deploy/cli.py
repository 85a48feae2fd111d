"""`carla-td3`: train, evaluate, drive. Parses the command line (and only here) into a RunConfig."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from common import config as C
from common.errors import CarlaTD3Error, ConfigError
from deploy import presets

log = logging.getLogger("carla_td3")

RUN_OVERRIDES = ("A trained run's --config and --set may change only env.* keys (its map, "
                 "env.max_steps, ...): its spec and network are what the policy was trained "
                 "with, so any other key is an error. ")
MAPS = ("Another map: --set env.fake.xodr_path=FILE.xodr drives fake CARLA on that OpenDRIVE "
        "file, the map named after its stem (env.town then stays Town01 or names the stem); "
        "--set env.town=NAME loads a map the server has (fake CARLA's shipped town is Town01), "
        "and any other name fails, naming the maps there are.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carla-td3", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (default: fake CARLA, local Ray, GPU if present)")
    t.add_argument("--preset", default="local", choices=sorted(presets.PRESETS))
    _add_config_flags(t, "replay.num_shards=4")
    t.add_argument("--steps", type=int, help="total env steps (train.env_steps)")
    t.add_argument("--seed", type=int, help="master seed")
    t.add_argument("--workers", "--actors", dest="workers", type=int,
                   help="rollout workers, one simulator each (rollout.num_workers)")
    t.add_argument("--shards", type=int, help="replay shards (replay.num_shards)")
    t.add_argument("--carla", metavar="HOST:PORT[,HOST:PORT...]",
                   help="real CARLA servers, one rollout worker each")
    t.add_argument("--ray-address", help="join an existing Ray cluster (e.g. auto or HOST:6379)")
    t.add_argument("--runs", type=Path, default=Path("runs"), help="where run directories go")
    t.add_argument("--name", help="run directory name (default: a timestamp)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    e = sub.add_parser("evaluate", help="the deterministic policy of a checkpoint on held-out routes",
                       description="Runs a checkpoint's deterministic policy on the run's own env "
                                   "(its saved config, rollout worker 0's server). " + RUN_OVERRIDES
                                   + MAPS)
    e.add_argument("checkpoint", type=Path, help="a run directory (its latest checkpoint), a checkpoint "
                                                 "directory, or a policy directory (carla-td3 export)")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--seed", type=int, default=10_000)
    e.add_argument("--video", type=Path, help="write the first episode as an MP4 (camera + top-down)")
    e.add_argument("--split", choices=[s.value for s in C.RouteSplit], default=C.RouteSplit.EVAL.value,
                   help="routes to drive: eval (held out, the default) or train (for validation); "
                        "a --set env.route_split comes after it and wins")
    e.add_argument("--json", type=Path, help="also write the results to this file")
    _add_config_flags(e, "env.fake.xodr_path=/maps/ring.xodr")
    d = sub.add_parser("drive", help="drive one episode (fake CARLA by default) and write an MP4 "
                                     "(camera beside a top-down view)",
                       description="Drives one episode and writes an MP4. Without --checkpoint: the "
                                   "scripted pure-pursuit driver on the default config (fake CARLA, "
                                   "its shipped town), then --config, then --set (any key). With "
                                   "--checkpoint: the run's saved config on fake CARLA, then "
                                   "--config, then --set. "
                                   + RUN_OVERRIDES + MAPS)
    d.add_argument("--out", type=Path, required=True, help="MP4 file to write")
    d.add_argument("--seed", type=int, default=0, help="episode seed (route)")
    d.add_argument("--checkpoint", type=Path,
                   help="drive this run's policy instead of the scripted pure-pursuit controller")
    _add_config_flags(d, "env.fake.xodr_path=/maps/ring.xodr")
    f = sub.add_parser("fake-server", help="serve fake CARLA over TCP, as its own process",
                       description="Serves the fake CARLA world on HOST:PORT until SIGTERM or "
                                   "Ctrl+C; point an env at it with env.host and env.port. Only "
                                   "env.fake.* keys may be set (faults, boot_s, the map).")
    f.add_argument("--port", type=int, required=True, help="TCP port (0: any free one, logged)")
    f.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    _add_config_flags(f, "env.fake.boot_s=5")
    x = sub.add_parser("export", help="write a trained policy on its own (weights and config)",
                       description="Writes a policy directory from a run's latest checkpoint (or one "
                                   "checkpoint): the policy network's arrays, the run's config and a "
                                   "sealed manifest. evaluate and drive --checkpoint take it as they "
                                   "take a run.")
    x.add_argument("source", type=Path, help="a run directory or a checkpoint directory")
    x.add_argument("out", type=Path, help="the policy directory to create (new or empty)")
    return p


def _add_config_flags(p: argparse.ArgumentParser, example: str) -> None:
    """--config FILE and --set KEY=VALUE, the same for every command."""
    p.add_argument("--config", type=Path, help="JSON file of config overrides (nested keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config key, e.g. --set {example} (repeatable; after --config)")


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r} must look like KEY=VALUE")
    return key.strip(), value.strip()


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def file_overrides(path: Path | None) -> dict[str, object]:
    """The dotted keys of a --config JSON file ({} without one), each a known key holding a
    value of its type (values are range-checked with the whole config).

    Raises:
        ConfigError: naming the file when it cannot be read or parsed, does not hold a JSON
            object, or holds an unknown key or a value of the wrong type (a list, a number or
            null where a section's object belongs, say).
    """
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must hold a JSON object of config keys, got "
                          f"{json.dumps(data)[:40]}")
    flat = _flatten(data)
    try:
        C.check_overrides(C.RunConfig, flat)
    except ConfigError as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    return flat


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    """--config's keys, then --set's (a --set wins over the file)."""
    return {**file_overrides(args.config), **dict(parse_override(o) for o in args.overrides)}


def config_from_args(args: argparse.Namespace) -> C.RunConfig:
    """The effective RunConfig: preset, then --config file, then flags, then --set."""
    cfg = presets.preset(args.preset)
    overrides = file_overrides(args.config)
    flag_keys = {"steps": "train.env_steps", "seed": "seed", "workers": "rollout.num_workers",
                 "shards": "replay.num_shards"}
    overrides.update({key: getattr(args, flag) for flag, key in flag_keys.items()
                      if getattr(args, flag) is not None})
    overrides.update(dict(parse_override(o) for o in args.overrides))
    cfg = C.with_overrides(cfg, overrides)
    if args.carla:
        endpoints = tuple(e.strip() for e in args.carla.split(",") if e.strip())
        if not endpoints:
            raise ConfigError(f"--carla {args.carla!r} names no HOST:PORT")
        # CARLA servers, unless --set env.backend=fake names fake-server processes there.
        backend = cfg.env.backend if "env.backend" in overrides else C.SimulatorBackend.CARLA
        cfg = replace(cfg, env=replace(cfg.env, backend=backend),
                      train=replace(cfg.train, endpoints=endpoints),
                      rollout=replace(cfg.rollout, num_workers=len(endpoints)))
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from deploy import launch
    from deploy.console import next_steps

    if args.resume:
        fixed = [f"--{k}" for k in ("config", "seed", "workers", "shards", "carla")
                 if getattr(args, k) is not None] + (["--set"] if args.overrides else [])
        if fixed:
            raise ConfigError(f"--resume continues a run with its saved config; {fixed} cannot "
                              "change (only --steps may)")
        out = launch.resume(args.resume, steps=args.steps, ray_address=args.ray_address,
                            dashboard=not args.no_dashboard)
    else:
        cfg = config_from_args(args)
        out = launch.train(cfg, runs_root=args.runs, name=args.name, ray_address=args.ray_address,
                           dashboard=not args.no_dashboard,
                           options={"preset": args.preset, **_sized_for(args.preset)})
    print(json.dumps(out, indent=2, sort_keys=True))
    # stderr: stdout stays one JSON document for scripts.
    print(next_steps(out["run_dir"], out["env_steps"]), file=sys.stderr)
    return 0


def _sized_for(preset: str) -> dict[str, str]:
    """The device the default preset was sized for, recorded with the run's config."""
    if preset != "local":
        return {}
    device = presets.local_device()
    log.info("event=preset_sized preset=local device=%s", device)
    return {"sized_for": device}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from deploy import evaluate

    out = evaluate.evaluate_checkpoint(args.checkpoint, episodes=args.episodes, seed=args.seed,
                                       video=args.video, split=C.RouteSplit(args.split),
                                       overrides=overrides_from_args(args))
    text = json.dumps(out, indent=2, sort_keys=True)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


def _drive_config(args: argparse.Namespace) -> tuple[C.RunConfig, Path | None]:
    """What ``drive`` runs on, and the checkpoint that drives (None: the scripted driver): a
    run's saved config on fake CARLA with env.* overrides only, or without --checkpoint the
    default config with any override."""
    overrides = overrides_from_args(args)
    if not args.checkpoint:
        return C.with_overrides(C.RunConfig(), overrides), None
    from deploy import evaluate

    evaluate.check_env_keys(overrides)
    run_dir, checkpoint = evaluate.resolve_checkpoint(args.checkpoint)
    cfg, _ = run_dir.read_config()
    cfg = replace(cfg, env=replace(cfg.env, backend=C.SimulatorBackend.FAKE))
    return evaluate.with_env_overrides(cfg, overrides), checkpoint


def _driver(cfg: C.RunConfig, checkpoint: Path | None) -> Callable[[dict], Any]:
    """The checkpoint's policy, or without one the scripted pure-pursuit driver."""
    if checkpoint is not None:
        from deploy import evaluate

        return evaluate.load_policy(cfg, checkpoint).act
    from rollout.scripted import PurePursuitDriver

    return PurePursuitDriver.for_env(cfg.spec, cfg.env)


def cmd_drive(args: argparse.Namespace) -> int:
    from rollout.carla_env import make_env
    from rollout.video import record_episode

    cfg, checkpoint = _drive_config(args)
    env = make_env(cfg.env, cfg.spec, seed=args.seed)  # first: a town the server lacks fails at once
    try:
        summary = record_episode(env, _driver(cfg, checkpoint), str(args.out), seed=args.seed)
    finally:
        env.close()
    print(json.dumps(summary._asdict(), indent=2))
    return 0


def cmd_fake_server(args: argparse.Namespace) -> int:
    import signal

    from rollout.fakecarla.remote_server import FakeServer

    overrides = overrides_from_args(args)
    bad = sorted(k for k in overrides if not k.startswith("env.fake."))
    if bad:
        raise ConfigError(f"fake-server takes only env.fake.* keys, got {bad}")
    cfg = C.with_overrides(C.RunConfig(), overrides).env.fake
    try:
        server = FakeServer(cfg, args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"fake-server cannot listen on {args.host}:{args.port}: {exc}") from exc
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as Ctrl+C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deploy import policy_dir

    meta = policy_dir.export_policy(args.source, args.out)
    print(json.dumps({"out": str(args.out), **meta}, indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CARLA_TD3_LOG", "INFO"), format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        commands = {"train": cmd_train, "evaluate": cmd_evaluate, "drive": cmd_drive,
                    "fake-server": cmd_fake_server, "export": cmd_export}
        return commands[args.command](args)
    except CarlaTD3Error as exc:
        print(f"carla-td3: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
