"""Blueprints: ``BlueprintLibrary``, ``ActorBlueprint`` and ``ActorAttribute`` as in ``carla``."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterator

import carla

from common.errors import SimulatorError


@dataclass(frozen=True)
class VehicleModel:
    """Body of a vehicle blueprint: bounding-box half extents (m) and wheelbase (m)."""

    half_length: float
    half_width: float
    half_height: float
    wheelbase: float


VEHICLE_MODELS = {
    "vehicle.tesla.model3": VehicleModel(2.40, 1.08, 0.75, 2.88),
    "vehicle.audi.a2": VehicleModel(1.85, 0.90, 0.78, 2.46),
    "vehicle.lincoln.mkz_2020": VehicleModel(2.45, 1.06, 0.76, 2.85),
    "vehicle.nissan.micra": VehicleModel(1.83, 0.93, 0.76, 2.43),
    "vehicle.toyota.prius": VehicleModel(2.27, 1.00, 0.76, 2.70),
    "vehicle.mini.cooper_s": VehicleModel(1.91, 0.97, 0.74, 2.47),
}
_VEHICLE_ATTRIBUTES = {"role_name": "", "color": "200,20,20", "number_of_wheels": "4", "base_type": "car",
                       "sticky_control": "true", "generation": "2"}
_SENSOR_ATTRIBUTES = {
    "sensor.camera.rgb": {"image_size_x": "800", "image_size_y": "600", "fov": "90", "sensor_tick": "0.0",
                          "role_name": "front"},
    "sensor.other.collision": {"role_name": "front"},
    "sensor.other.lane_invasion": {"role_name": "front"},
}
_READ_ONLY = {"number_of_wheels", "base_type", "generation"}


class ActorAttribute:
    """One blueprint attribute; its value is kept as a string like the real one."""

    def __init__(self, attribute_id: str, value: str, is_modifiable: bool = True) -> None:
        self.id = attribute_id
        self.is_modifiable = is_modifiable
        self.type = carla.ActorAttributeType.String
        self.recommended_values: list[str] = []
        self._value = value

    def as_str(self) -> str:
        return self._value

    def as_int(self) -> int:
        return int(float(self._value))

    def as_float(self) -> float:
        return float(self._value)

    def as_bool(self) -> bool:
        return self._value.lower() in ("true", "1")

    def __str__(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(self._value)


class ActorBlueprint:
    """What to spawn: an id, tags and mutable attributes (each spawn copies them)."""

    def __init__(self, blueprint_id: str, tags: list[str], attributes: dict[str, str]) -> None:
        self.id = blueprint_id
        self.tags = tags
        self._attributes = {k: ActorAttribute(k, v, k not in _READ_ONLY) for k, v in attributes.items()}

    def has_attribute(self, id: str) -> bool:  # noqa: A002 - the real keyword name
        return id in self._attributes

    def has_tag(self, tag: str) -> bool:
        return tag in self.tags

    def match_tags(self, wildcard_pattern: str) -> bool:
        return any(fnmatch.fnmatch(t, wildcard_pattern) for t in self.tags)

    def get_attribute(self, id: str) -> ActorAttribute:  # noqa: A002
        if id not in self._attributes:
            raise IndexError(f"blueprint {self.id!r} has no attribute {id!r}")
        return self._attributes[id]

    def set_attribute(self, id: str, value: str) -> None:  # noqa: A002
        """Sets an attribute.

        Raises:
            IndexError: if the blueprint has no such attribute (as the real client does).
            SimulatorError: if the attribute is read-only.
        """
        attribute = self.get_attribute(id)
        if not attribute.is_modifiable:
            raise SimulatorError(f"attribute {id!r} of {self.id!r} is not modifiable")
        self._attributes[id] = ActorAttribute(id, str(value))

    def _attribute_values(self) -> dict[str, str]:
        """A copy of the attribute values (fake-only helper used when spawning)."""
        return {k: str(v) for k, v in self._attributes.items()}

    def __iter__(self) -> Iterator[ActorAttribute]:
        return iter(list(self._attributes.values()))

    def __len__(self) -> int:
        return len(self._attributes)

    def __repr__(self) -> str:
        return f"ActorBlueprint(id={self.id},tags={self.tags})"


class BlueprintLibrary:
    """The blueprints a server offers; ``find`` returns a fresh copy each time."""

    def __init__(self, ids: list[str] | None = None) -> None:
        self._ids = sorted(ids if ids is not None else [*VEHICLE_MODELS, *_SENSOR_ATTRIBUTES])

    def find(self, id: str) -> ActorBlueprint:  # noqa: A002
        """Raises IndexError for an unknown id, as the real client does."""
        if id not in self._ids:
            raise IndexError(f"blueprint {id!r} not found")
        return _make(id)

    def filter(self, wildcard_pattern: str) -> BlueprintLibrary:
        return BlueprintLibrary([i for i in self._ids if fnmatch.fnmatch(i, wildcard_pattern)])

    def __getitem__(self, index: int) -> ActorBlueprint:
        return _make(self._ids[index])

    def __iter__(self) -> Iterator[ActorBlueprint]:
        return (_make(i) for i in self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def _make(blueprint_id: str) -> ActorBlueprint:
    tags = blueprint_id.split(".")
    if blueprint_id in VEHICLE_MODELS:
        return ActorBlueprint(blueprint_id, tags, dict(_VEHICLE_ATTRIBUTES))
    return ActorBlueprint(blueprint_id, tags, dict(_SENSOR_ATTRIBUTES[blueprint_id]))
