"""Every config field is read somewhere outside the config modules (STYLE.md: Acme's TD3
builder once dropped `delay` and `tau` silently; an unread field is a silent no-op)."""
import dataclasses
import pathlib
import re

from common import config as C

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = [p for pkg in ("common", "rollout", "replay", "learner", "deploy")
           for p in (ROOT / pkg).rglob("*.py")
           if not (p.parent.name == "common" and p.name.startswith("config"))]


def _config_classes():
    classes = [obj for obj in vars(C).values()
               if dataclasses.is_dataclass(obj) and obj.__module__.startswith(C.__name__)]
    assert C.LearnerExecution in classes and C.RunConfig in classes
    return classes


def test_every_config_field_is_read():
    text = "\n".join(p.read_text() for p in SOURCES)
    unread = [f"{cls.__name__}.{f.name}" for cls in _config_classes() for f in dataclasses.fields(cls)
              if not re.search(rf"\.{f.name}\b|[\"']{f.name}[\"']", text)]
    assert not unread, f"config fields never read: {unread}"
