"""V-IRL routes: the model, headings and actions, and a loader for real route files.

A route is walked as a sequence of decisions. At the start the agent faces its initial
heading and must turn to the first street; along a street it moves forward() one point
at a time (segments are cut into at most `max_straight` steps); at each intersection it
turns to the next street; at the destination it stops. Each decision point carries the
landmarks visible there, so the expert trajectory is the list of (point, action) pairs.

Actions are strings: "turn_direction(northwest)" in the absolute space, or
"turn_direction(slightly left)" in the relative space, "forward()", "stop()".
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..answers import read_json_object

ActionSpace = Literal["absolute", "relative"]
ACTION_SPACES = ("absolute", "relative")
COMPASS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
RELATIVE_TURNS = {-90: "left", 90: "right", -45: "slightly left", 45: "slightly right"}
# clockwise from straight ahead (headings grow clockwise: 0 north, 90 east)
RELATIONS = ("front", "right front", "right", "right behind", "behind", "left behind", "left", "left front")


class RouteError(ValueError):
    """A route file or dict is malformed; the message names the field."""


def compass_name(heading: float) -> str:
    """The nearest of the eight compass directions (0 = north, clockwise)."""
    return COMPASS[round((heading % 360) / 45) % 8]


def compass_heading(name: str) -> int:
    if name not in COMPASS:
        raise ValueError(f"unknown direction {name!r}; expected one of {COMPASS}")
    return COMPASS.index(name) * 45


def turn_delta(current: float, target: float) -> int:
    """Signed turn from one compass-snapped heading to another, in (-180, 180]."""
    delta = (compass_heading(compass_name(target)) - compass_heading(compass_name(current))) % 360
    return delta - 360 if delta > 180 else delta


def turn_action(current: float, target: float, space: ActionSpace) -> str:
    """The expert's turn from `current` to `target` heading in an action space."""
    if space == "absolute":
        return f"turn_direction({compass_name(target)})"
    delta = turn_delta(current, target)
    if delta not in RELATIVE_TURNS:
        raise RouteError(f"a turn of {delta} degrees has no action in the relative space")
    return f"turn_direction({RELATIVE_TURNS[delta]})"


def relation_phrase(relation: str) -> str:
    """'left front' -> 'on your left front'; 'front' -> 'in front of you'; 'behind' -> 'behind you'."""
    return {"front": "in front of you", "behind": "behind you"}.get(relation, f"on your {relation}")


def relation_of(heading: float, bearing: float) -> str:
    """Where something at `bearing` is, seen facing `heading`: 'left front', 'behind' ..."""
    return RELATIONS[round(((bearing - heading) % 360) / 45) % 8]


@dataclass
class Landmark:
    name: str
    relation: str  # seen from the approach to its intersection, e.g. "left front"


@dataclass
class Intersection:
    """A turning point: where the route changes street (the last one is the destination)."""

    landmarks: list[Landmark]
    heading_in: float  # heading when arriving
    heading_out: float | None  # heading of the next street; None at the destination
    distance_m: float | None = None  # length of the street that leads here


@dataclass
class Decision:
    """One movable point of the walk: what is seen there and the expert's action."""

    point: int  # index along the route
    heading: float  # the agent's heading when it decides
    landmarks: list[Landmark]
    action: str
    intersection: int | None  # index of the intersection reached, if this is one


@dataclass
class Route:
    route_id: str
    city: str
    start: str
    destination: str
    init_heading: float
    instruction: str
    intersections: list[Intersection]
    steps_per_segment: list[int]  # forward() steps on each street (capped by max_straight)
    meta: dict[str, Any] = field(default_factory=dict)
    # Places visible at each point (index = point), as seen on arrival; generated cities
    # know them everywhere, real route files only at their intersections.
    views: list[list[Landmark]] | None = None

    def decisions(self, space: ActionSpace) -> list[Decision]:
        """The expert trajectory: every decision point with its correct action.

        A turn is a decision of its own, taken in place; where the street already lies
        ahead (a 0-degree turn) there is none, since the relative space has no such action.
        """
        if space not in ACTION_SPACES:
            raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {space!r}")
        out: list[Decision] = []
        heading, point = self.init_heading, 0
        first_street = self.intersections[0].heading_in
        if turn_delta(heading, first_street) != 0:
            out.append(Decision(point, heading, self._seen(point, []), turn_action(heading, first_street, space), None))
        heading = first_street
        for index, (node, steps) in enumerate(zip(self.intersections, self.steps_per_segment)):
            for _ in range(steps):
                out.append(Decision(point, heading, self._seen(point, []), "forward()", None))
                point += 1
            if node.heading_out is None:
                out.append(Decision(point, heading, node.landmarks, "stop()", index))
                break
            if turn_delta(heading, node.heading_out) != 0:
                out.append(Decision(point, heading, node.landmarks, turn_action(heading, node.heading_out, space), index))
            heading = node.heading_out
        return out

    def _seen(self, point: int, default: list[Landmark]) -> list[Landmark]:
        return self.views[point] if self.views is not None and point < len(self.views) else default

    def supports(self, space: ActionSpace) -> bool:
        try:
            self.decisions(space)
        except RouteError:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "Route":
        record = dict(record)
        record["intersections"] = [
            Intersection(**{**i, "landmarks": [Landmark(**m) for m in i["landmarks"]]}) for i in record["intersections"]
        ]
        if record.get("views") is not None:
            record["views"] = [[Landmark(**m) for m in view] for view in record["views"]]
        return cls(**record)


# ---------------------------------------------------------------------------------------
# Real V-IRL route files

_BLOCK = re.compile(r"\{[^{}]*\}")
_RELATION = re.compile(r"^(?P<name>.+?) is (?:on your |at your |)(?P<relation>[a-z ]+?)\.?$", re.IGNORECASE)
_HEADING = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")
_METRES = re.compile(r"(\d+(?:\.\d+)?)\s*(m|meters?|metres?|km)\b", re.IGNORECASE)


def load_routes(path: str | Path, max_straight: int = 5) -> list[Route]:
    """Routes from a V-IRL file: one route object, or a list of them (a database)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no route file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RouteError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    records = data if isinstance(data, list) else [data]
    return [parse_virl_route(r, route_id=f"{path.stem}-{i}", max_straight=max_straight, where=f"{path}[{i}]")
            for i, r in enumerate(records)]


def parse_virl_route(record: Any, route_id: str, max_straight: int = 5, where: str = "route") -> Route:
    """One route object in the V-IRL platform's format -> Route."""
    if not isinstance(record, dict):
        raise RouteError(f"{where}: a route must be a JSON object, got {type(record).__name__}")
    start = _required(record, "start_place", dict, where)
    destination = _required(record, "dest_place", dict, where)
    instruction = _required(record, "instruction", str, where)
    init_heading = _number(_required(record, "init_heading", (int, float, str), where), f"{where}.init_heading")
    blocks = _milestones(_required(record, "milestone_info", (str, list), where), where)
    if not blocks:
        raise RouteError(f"{where}.milestone_info: no intersection blocks found")
    intersections = []
    for i, block in enumerate(blocks):
        at = f"{where}.milestone_info[{i}]"
        heading_in = _number(_required(block, "human_heading", (int, float, str), at), f"{at}.human_heading")
        is_last = i == len(blocks) - 1
        out = block.get("to_next_intersection_heading")
        heading_out = None if is_last or out in (None, "", "None") else _number(out, f"{at}.to_next_intersection_heading")
        intersections.append(Intersection(_landmarks(block.get("landmarks"), at), heading_in, heading_out,
                                          _metres(block.get("distance"))))
    steps = [_steps(i.distance_m, max_straight) for i in intersections]
    return Route(
        route_id=route_id,
        city=str(start.get("region") or start.get("vicinity") or "unknown"),
        start=_required(start, "name", str, f"{where}.start_place"),
        destination=_required(destination, "name", str, f"{where}.dest_place"),
        init_heading=init_heading,
        instruction=instruction,
        intersections=intersections,
        steps_per_segment=steps,
        meta={"source": "virl", "start_geocode": start.get("geocode"), "dest_geocode": destination.get("geocode")},
    )


def _required(record: dict, key: str, kind, where: str):
    if key not in record:
        raise RouteError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise RouteError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _HEADING.match(str(value))
    if not match:
        raise RouteError(f"{where}: expected a heading in degrees like '212 (southwest)', got {value!r}")
    return float(match.group(1))


def _milestones(raw: Any, where: str) -> list[dict[str, Any]]:
    """milestone_info: a string of {...} blocks (V-IRL writes Python-style dicts), or a list."""
    if isinstance(raw, list):
        blocks = raw
    else:
        blocks = []
        for i, text in enumerate(_BLOCK.findall(raw)):
            parsed = read_json_object(text)  # V-IRL writes Python-style dicts
            if parsed is None:
                raise RouteError(f"{where}.milestone_info: block {i} is not a readable object: {text[:80]!r}")
            blocks.append(parsed)
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise RouteError(f"{where}.milestone_info[{i}]: expected an object")
    return blocks


def _landmarks(raw: Any, where: str) -> list[Landmark]:
    if raw in (None, "", "None", []):
        return []
    items = raw if isinstance(raw, list) else re.split(r"[;\n]|(?<=\.)\s+", str(raw))
    landmarks = []
    for item in items:
        text = str(item).strip().strip(".")
        if not text:
            continue
        text = text.replace("in front of you", "on your front").replace("behind you", "on your behind")
        match = _RELATION.match(text)
        if not match:
            raise RouteError(f"{where}.landmarks: cannot read {text!r} (expected 'NAME is on your RELATION')")
        relation = match.group("relation").strip().lower()
        landmarks.append(Landmark(match.group("name").strip(), relation))
    return landmarks


def _metres(raw: Any) -> float | None:
    if raw in (None, ""):
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    match = _METRES.search(str(raw))
    if not match:
        return None
    value = float(match.group(1))
    return value * 1000 if match.group(2).lower() == "km" else value


def _steps(distance_m: float | None, max_straight: int, metres_per_step: float = 50.0) -> int:
    """forward() steps for a street: about one per 50 m, at least 1, at most max_straight."""
    if distance_m is None:
        return 1
    return max(1, min(max_straight, round(distance_m / metres_per_step)))
