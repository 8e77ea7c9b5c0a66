"""V-IRL routes: the model, headings and actions, and a loader for real route files.

A route is walked as a sequence of decisions, as V-IRL's benchmark and the study's
environment walk it: at the start the agent turns to the first street; along a street it
moves forward() one point at a time (segments are cut into at most `max_straight`
steps); at each intersection it turns to the next street; at the destination it stops.
A turn is always a decision of its own, even onto the street already ahead. Each
decision point carries the landmarks visible there, so the expert trajectory is the list
of (point, action) pairs.

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
# the relative turns with their nominal angles (what the prompt tells the model)
RELATIVE_TURNS = {-90: "left", 90: "right", -45: "slightly left", 45: "slightly right"}
# clockwise from straight ahead (headings grow clockwise: 0 north, 90 east)
RELATIONS = ("front", "right front", "right", "right behind", "behind", "left behind", "left", "left front")


class RouteError(ValueError):
    """A route file or dict is malformed; the message names the field."""


def signed_turn(current: float, target: float) -> float:
    """The turn from heading `current` to heading `target`, wrapped to [-180, 180).

    V-IRL's study code subtracts the raw headings without wrapping, so turning from 0 to
    259 degrees counts there as +259 (a right turn) instead of -101 (a left one)."""
    return (target - current + 180) % 360 - 180


def _nearest_eighth(angle: float) -> int:
    """Index (0..7) of the multiple of 45 degrees nearest to `angle`; a tie goes to the
    lower index, as V-IRL's `select_argmin_heading_from_heading_list` does."""
    distances = [abs(signed_turn(45 * i, angle)) for i in range(8)]
    return distances.index(min(distances))


def compass_name(heading: float) -> str:
    """The nearest of the eight compass directions (0 = north, clockwise)."""
    return COMPASS[_nearest_eighth(heading)]


def relative_turn(current: float, target: float) -> str:
    """V-IRL's relative action for a turn: below -45 degrees left, above 45 right,
    [-45, 0] slightly left, (0, 45] slightly right (the study's test order, so a
    0-degree turn is slightly left), on the turn wrapped to [-180, 180): every turn,
    a U-turn included (-180: left), has an action."""
    delta = signed_turn(current, target)
    if delta < -45:
        return "left"
    if delta > 45:
        return "right"
    return "slightly left" if delta <= 0 else "slightly right"


def turn_action(current: float, target: float, space: ActionSpace) -> str:
    """The expert's turn from `current` to `target` heading in an action space."""
    direction = compass_name(target) if space == "absolute" else relative_turn(current, target)
    return f"turn_direction({direction})"


def relation_phrase(relation: str) -> str:
    """'left front' -> 'on your left front'; 'front' -> 'in front of you'; 'behind' -> 'behind you'."""
    return {"front": "in front of you", "behind": "behind you"}.get(relation, f"on your {relation}")


def relation_of(heading: float, bearing: float) -> str:
    """Where something at `bearing` is, seen facing `heading`: 'left front', 'behind' ..."""
    return RELATIONS[_nearest_eighth(bearing - heading)]


@dataclass
class Landmark:
    name: str
    relation: str  # seen from the approach to its intersection, e.g. "left front"


@dataclass
class Intersection:
    """A turning point: where the route changes street (the last one is the destination)."""

    landmarks: list[Landmark]  # seen on arrival, relative to heading_in
    heading_in: float  # heading of the street that leads here
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
    view_known: bool = True  # False where the route does not say what is in view


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

        At the start the expert turns to the first street, at every intersection to the
        next street (always a decision of its own, taken in place, even when the street
        goes straight on), walks each street with forward() and stops at the destination.
        """
        if space not in ACTION_SPACES:
            raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {space!r}")
        first_street = self.intersections[0].heading_in
        out = [self._between(0, self.init_heading, turn_action(self.init_heading, first_street, space))]
        heading, point = first_street, 0
        for index, (node, steps) in enumerate(zip(self.intersections, self.steps_per_segment)):
            for _ in range(steps):
                out.append(self._between(point, heading, "forward()"))
                point += 1
            if node.heading_out is None:
                out.append(Decision(point, heading, node.landmarks, "stop()", index))
                break
            out.append(Decision(point, heading, node.landmarks, turn_action(heading, node.heading_out, space), index))
            heading = node.heading_out
        return out

    def _between(self, point: int, heading: float, action: str) -> Decision:
        """A decision away from the intersections: its view if the route knows it."""
        known = self.views is not None and point < len(self.views)
        return Decision(point, heading, self.views[point] if known else [], action, None, view_known=known)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Route:
        record = dict(record)
        record["intersections"] = [
            Intersection(**{**i, "landmarks": [Landmark(**m) for m in i["landmarks"]]}) for i in record["intersections"]
        ]
        if record.get("views") is not None:
            record["views"] = [[Landmark(**m) for m in view] for view in record["views"]]
        return cls(**record)


# ---------------------------------------------------------------------------------------
# Real V-IRL route files, as V-IRL's collector (tools/tasks/collect_benchmark/
# collect_vln_routes.py) writes them.
#
# A database is the JSON list [routes, dest_idx] (dest_idx: how many destinations the
# collector has tried so far). A route object holds start_place, dest_place,
# route_results, init_heading, instruction and milestone_info: a string of blocks, one
# per street, numbered from 1, like
#   {"intersection_idx": "1", "landmarks": "Prince St is on your front",
#    "distance": "16 meters", "human_heading": "0",
#    "to_next_intersection_heading": "298 (northwest)",}
# Block i (intersection_idx i + 1) is the street from route_results.geocode_list[i - 1]
# (from the start for i = 0) to geocode_list[i]: to_next_intersection_heading is its
# heading, distance its length, human_heading the heading walked before it, landmarks the
# place seen on arriving at its end. The last block ends at the destination; its
# landmark reads "The destination NAME is on your RELATION" and its heading is that of
# the last street, which the expert turns to at the last intersection.

FILE_LAYOUTS = "a database [routes, dest_idx] as V-IRL's collector writes it, a list of routes, or one route object"
_BLOCK = re.compile(r"\{[^{}]*\}")
_HEADING = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:\(\s*([a-z]+)\s*\))?\s*$", re.IGNORECASE)
_METRES = re.compile(r"(\d+(?:\.\d+)?)\s*(m|meters?|metres?|km)\b", re.IGNORECASE)
_EXPRESSION = re.compile(r"^(?P<name>.+) is on your (?P<relation>{})\.?$".format("|".join(RELATIONS)), re.IGNORECASE)
_NO_LANDMARK = ("", "none", "no landmark nearby", "no landmarks nearby")
_DESTINATION = "the destination "


def load_routes(path: str | Path, max_straight: int = 5) -> list[Route]:
    """Routes from a V-IRL file in any of its layouts (FILE_LAYOUTS)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no route file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RouteError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    records = _route_records(data, path)
    if not records:
        raise RouteError(f"{path}: the database holds no routes")
    return [
        parse_virl_route(record, route_id=f"{path.stem}-{i}", max_straight=max_straight, where=where)
        for i, (record, where) in enumerate(records)
    ]


def _route_records(data: Any, path: Path) -> list[tuple[Any, str]]:
    """The route objects in a file's JSON, each with where it sits (for messages)."""
    if isinstance(data, dict):
        return [(data, str(path))]
    if isinstance(data, list) and len(data) == 2 and isinstance(data[0], list) and _is_count(data[1]):
        return [(record, f"{path}[0][{i}]") for i, record in enumerate(data[0])]
    if isinstance(data, list) and data and all(isinstance(record, dict) for record in data):
        return [(record, f"{path}[{i}]") for i, record in enumerate(data)]
    raise RouteError(f"{path}: expected {FILE_LAYOUTS}; got {_describe(data)}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(data: Any) -> str:
    if isinstance(data, list):
        kinds = ", ".join(sorted({type(item).__name__ for item in data}))
        return f"a list of {len(data)} items ({kinds})" if data else "an empty list"
    return f"a JSON {type(data).__name__}"


def parse_virl_route(record: Any, route_id: str, max_straight: int = 5, where: str = "route") -> Route:
    """One route object in the V-IRL platform's format -> Route."""
    if not isinstance(record, dict):
        raise RouteError(f"{where}: a route must be a JSON object, got {type(record).__name__}")
    start = _required(record, "start_place", dict, where)
    destination = _required(record, "dest_place", dict, where)
    instruction = _required(record, "instruction", str, where)
    init_heading = _heading(_required(record, "init_heading", (int, float, str), where), f"{where}.init_heading")
    blocks = _milestones(_required(record, "milestone_info", (str, list), where), where)
    if not blocks:
        raise RouteError(f"{where}.milestone_info: no intersection blocks found")
    last = len(blocks) - 1
    streets = [_street(block, i, i == last, f"{where}.milestone_info[{i}]") for i, block in enumerate(blocks)]
    _check_geocodes(record, len(blocks), where)
    next_headings = [heading for heading, _, _ in streets[1:]] + [None]
    intersections = [
        Intersection(landmarks, heading, heading_out, distance)
        for (heading, distance, landmarks), heading_out in zip(streets, next_headings)
    ]
    return Route(
        route_id=route_id,
        city=str(start.get("region") or start.get("vicinity") or "unknown"),
        start=_required(start, "name", str, f"{where}.start_place"),
        destination=_required(destination, "name", str, f"{where}.dest_place"),
        init_heading=init_heading,
        instruction=instruction,
        intersections=intersections,
        steps_per_segment=[_steps(i.distance_m, max_straight) for i in intersections],
        meta={"source": "virl", "start_geocode": start.get("geocode"), "dest_geocode": destination.get("geocode")},
    )


def _street(block: dict[str, Any], index: int, is_last: bool, at: str) -> tuple[float, float | None, list[Landmark]]:
    """One milestone block -> (street heading, length in metres, landmarks at its end)."""
    number = block.get("intersection_idx", index + 1)
    if str(number).strip() != str(index + 1):
        raise RouteError(
            f"{at}.intersection_idx: expected {index + 1} (V-IRL numbers the blocks from 1, in order), got {number!r}"
        )
    heading = _heading(
        _required(block, "to_next_intersection_heading", (int, float, str), at), f"{at}.to_next_intersection_heading"
    )
    return heading, _metres(block.get("distance")), _landmarks(block.get("landmarks"), is_last, at)


def _check_geocodes(record: dict[str, Any], blocks: int, where: str) -> None:
    """route_results.geocode_list, when present, ends one street per block."""
    geocodes = (record.get("route_results") or {}).get("geocode_list")
    if isinstance(geocodes, list) and len(geocodes) != blocks:
        raise RouteError(
            f"{where}.route_results.geocode_list: {len(geocodes)} points for {blocks} milestone blocks "
            "(V-IRL writes one block per point)"
        )


def _required(record: dict, key: str, kind, where: str):
    if key not in record:
        raise RouteError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise RouteError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _heading(value: Any, where: str) -> float:
    """Degrees from 212, 212.0, "212" or "212 (southwest)"; the name, if given, must be the
    compass direction of the degrees (V-IRL writes both from one number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _HEADING.match(str(value))
    if not match:
        raise RouteError(f"{where}: expected a heading in degrees like '212 (southwest)', got {value!r}")
    degrees, name = float(match.group(1)), match.group(2)
    if name is not None and name.lower() != compass_name(degrees):
        raise RouteError(f"{where}: {value!r} names {name} but {degrees:g} degrees is {compass_name(degrees)}")
    return degrees


def _milestones(raw: Any, where: str) -> list[dict[str, Any]]:
    """milestone_info: a string of {...} blocks (JSON-like, trailing commas), or a list."""
    if isinstance(raw, list):
        blocks = raw
    else:
        blocks = []
        for i, text in enumerate(_BLOCK.findall(raw)):
            parsed = read_json_object(text)
            if parsed is None:
                raise RouteError(f"{where}.milestone_info: block {i} is not a readable object: {text[:80]!r}")
            blocks.append(parsed)
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise RouteError(f"{where}.milestone_info[{i}]: expected an object")
    return blocks


def _landmarks(raw: Any, is_last: bool, where: str) -> list[Landmark]:
    """A block's landmark: "NAME is on your RELATION", "No landmark nearby" (none), and in
    the last block "The destination NAME is on your RELATION" (the place is NAME)."""
    if raw is None or (isinstance(raw, str) and raw.strip().rstrip(".").lower() in _NO_LANDMARK):
        return []
    if not isinstance(raw, str):
        raise RouteError(f"{where}.landmarks: expected a string, got {type(raw).__name__}")
    match = _EXPRESSION.match(raw.strip())
    if not match:
        raise RouteError(
            f"{where}.landmarks: cannot read {raw!r} (expected 'NAME is on your RELATION', "
            f"RELATION one of {', '.join(RELATIONS)})"
        )
    name = match.group("name").strip()
    if is_last and name.lower().startswith(_DESTINATION):
        name = name[len(_DESTINATION) :].strip()
    return [Landmark(name, match.group("relation").lower())]


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
