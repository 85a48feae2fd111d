"""The fake carla modules against the real one: every name the in-process fake and the remote
client (of a fake server process) provide exists in the real ``carla`` with a compatible
signature, and the env uses nothing either lacks."""
import enum
import inspect
import logging
import pathlib
import re

import carla
import pytest

from rollout.fakecarla import FAKE_CLASSES, REAL_NAMES, make_module
from rollout.fakecarla.remote_client import REMOTE_CLASSES, make_remote_module

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV_FILES = ("rollout/carla_env.py", "rollout/carla_session.py", "rollout/route.py", "rollout/video.py",
             "rollout/sensors.py", "rollout/scripted.py")
MODULE_ALIASES = r"(?:carla|carla_module|self\._carla|c)"
_PARAM = re.compile(r"\((\w+)\)(\w+)(=[^,\]\)]*)?")
MODULES = {"inprocess": make_module, "remote": make_remote_module}
CLASSES = ([("inprocess", cls) for cls in FAKE_CLASSES] + [("remote", cls) for cls in REMOTE_CLASSES]
           + [("inprocess", None), ("remote", None)])


def _real_overloads(function) -> list[list[tuple[str, bool]]]:
    """(name, optional) parameters after ``self`` of each Boost.Python overload of a method."""
    overloads = []
    for line in (function.__doc__ or "").splitlines():
        head = line.strip()
        if not head.startswith(function.__name__ + "("):
            continue
        params = []
        for match in _PARAM.finditer(head.split("->")[0]):
            params.append((match.group(2), match.group(3) is not None))
        overloads.append(params[1:])
    return overloads


@pytest.fixture(scope="module", params=sorted(MODULES))
def fake(request):
    return MODULES[request.param]()


def test_every_module_name_exists_in_the_real_carla(fake):
    for name in vars(fake):
        assert hasattr(carla, name), f"fake provides carla.{name}, which the real module lacks"
    for name in REAL_NAMES:
        assert getattr(fake, name) is getattr(carla, name), f"{name} must be the real value type"


@pytest.mark.parametrize("kind,cls", CLASSES,
                         ids=[f"{k}-{'Client' if c is None else c.__name__}" for k, c in CLASSES])
def test_every_public_member_exists_on_the_real_class_with_a_compatible_signature(kind, cls):
    cls = MODULES[kind]().Client if cls is None else cls
    real = getattr(carla, cls.__name__)
    members = [n for n in dir(cls) if not n.startswith("_") or n == "__init__"]
    for name in members:
        if name == "__init__" and cls.__init__ is object.__init__:
            continue
        assert hasattr(real, name), f"{cls.__name__}.{name} is not in carla.{cls.__name__}"
        fake_member, real_member = getattr(cls, name), getattr(real, name)
        if not callable(real_member) or isinstance(fake_member, property) or name == "__init__" and real is not carla.Client:
            continue
        signature = inspect.signature(fake_member)
        for params in _real_overloads(real_member):
            required = [p for p, optional in params if not optional]
            args = [None] * (len(params) + 1)  # self and every real parameter, positionally
            signature.bind(*args)
            signature.bind(*args[: len(required) + 1])
            named = [p for p in params if not p[0].startswith("arg")]
            assert all(p in signature.parameters for p, _ in named), \
                f"{cls.__name__}.{name}{signature} lacks a real keyword of {params}"


def test_contract_test_catches_a_wrong_signature():
    class World:
        def tick(self, timeout):  # the real keyword is "seconds" and it is optional
            return 0

    signature = inspect.signature(World.tick)
    params = _real_overloads(carla.World.tick)[0]
    assert params == [("seconds", True)]
    assert "seconds" not in signature.parameters
    with pytest.raises(TypeError):
        signature.bind(None)


def _used_in_env() -> tuple[set[str], set[str]]:
    """Module attributes (``carla.X``) and member names (``.x``) used by the env's files."""
    module_names, members = set(), set()
    for rel in ENV_FILES:
        path = ROOT / rel
        if not path.exists():
            continue
        text = path.read_text()
        module_names |= set(re.findall(rf"\b{MODULE_ALIASES}\.([A-Z]\w*)", text))
        members |= set(re.findall(r"\.([a-z_]\w*)\b", text))
    return module_names, members


def _real_api_members(fake) -> set[str]:
    """Members of the real classes the fake module stands in for or re-exports, less names
    that plain Python objects also have (``list.append``, ``Logger.debug``, ...)."""
    names = set()
    for cls_name in vars(fake):
        cls = getattr(carla, cls_name)
        if isinstance(cls, type):
            names |= {n for n in vars(cls) if not n.startswith("_")}
    python = set(dir(list)) | set(dir(dict)) | set(dir(str)) | set(dir(logging.Logger)) | set(dir(enum.Enum))
    return names - python


def _fake_members(fake) -> set[str]:
    names = set()
    for value in vars(fake).values():
        if isinstance(value, type):
            for klass in value.__mro__:
                names |= {n for n in vars(klass) if not n.startswith("_")}
    return names


def test_env_uses_nothing_the_fake_lacks(fake):
    if not (ROOT / "rollout/carla_env.py").exists():
        pytest.fail("rollout/carla_env.py does not exist yet")
    module_names, members = _used_in_env()
    assert module_names, "found no carla.X in the env files: the scan is broken"
    missing = sorted(n for n in module_names if not hasattr(fake, n))
    assert not missing, f"env uses carla.{missing} which the fake module lacks"
    instance_only = {"bounding_box", "id", "type_id", "attributes", "parent", "semantic_tags", "frame",
                     "timestamp", "transform", "width", "height", "fov", "raw_data", "actor", "other_actor",
                     "normal_impulse", "crossed_lane_markings", "tags", "is_modifiable", "type",
                     "recommended_values"}
    provided = _fake_members(fake) | instance_only
    carla_api = _real_api_members(fake)
    lacking = sorted(m for m in members & carla_api if m not in provided)
    assert not lacking, f"env uses carla members {lacking} that the fake does not provide"
