"""Procedurally generated cities and routes, for V-IRL without its street-view database.

A city is a grid of intersections one block apart, with streets north-south and
east-west plus diagonal avenues, so routes turn by 90 and by 45 degrees (the relative
action space needs both). Named places (cafes, shops, museums ...) stand on intersection
corners. A route is a walk from one place to another with a chosen number of turns; its
instruction is written in the V-IRL style from the walk itself.

Cities differ in their name pools and visual style; `TRAIN_CITY` plays the paper's New
York (training and ID evaluation), `OOD_CITIES` its nine visual-OOD cities.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from .routes import COMPASS, Intersection, Landmark, Route, compass_name, relation_of, relation_phrase, relative_turn

CORNERS = {"northeast": 45, "southeast": 135, "southwest": 225, "northwest": 315}
STEPS = {0: (0, 1), 45: (1, 1), 90: (1, 0), 135: (1, -1), 180: (0, -1), 225: (-1, -1), 270: (-1, 0), 315: (-1, 1)}
KINDS = (  # each one token of the default model's vocabulary (with its leading space), as are the words
    "Coffee",
    "Bread",
    "Books",
    "Museum",
    "Pharmacy",
    "Kitchen",
    "Gallery",
    "Market",
    "Flowers",
    "Bank",
    "Cinema",
    "Salon",
    "Hotel",
    "Library",
    "Gym",
    "Bar",
)


@dataclass(frozen=True)
class CityStyle:
    name: str
    words: tuple[str, ...]  # the first halves of place names
    sky: tuple[int, int, int]
    facades: tuple[tuple[int, int, int], ...]
    roof: str  # "flat", "peaked" or "stepped"
    sign_scale: float
    light: float  # brightness multiplier


TRAIN_CITY = CityStyle(
    "Arden",
    (
        "Hudson",
        "Maple",
        "Liberty",
        "Empire",
        "Union",
        "Harbor",
        "Park",
        "Madison",
        "Broadway",
        "Brooklyn",
        "Houston",
        "Greenwich",
    ),
    (150, 190, 235),
    ((150, 80, 60), (120, 110, 100), (180, 160, 130), (90, 90, 110)),
    "flat",
    1.0,
    1.0,
)
OOD_CITIES = (
    CityStyle(
        "Belmora",
        ("Dante", "Roma", "Marco", "Villa", "Monte", "Luna"),
        (170, 200, 230),
        ((210, 170, 120), (200, 120, 90), (230, 210, 170)),
        "peaked",
        0.9,
        1.05,
    ),
    CityStyle(
        "Chandpur",
        ("Raja", "Delhi", "Ruby", "Pearl", "Shiva", "Krishna"),
        (230, 200, 150),
        ((200, 90, 60), (230, 160, 60), (160, 60, 90)),
        "flat",
        1.1,
        1.1,
    ),
    CityStyle(
        "Palermo Alto",
        ("Andes", "Rio", "Sol", "Flor", "Santa", "Rosa"),
        (140, 180, 220),
        ((220, 200, 90), (90, 160, 200), (200, 100, 120)),
        "stepped",
        1.0,
        0.95,
    ),
    CityStyle(
        "Kingsmere",
        ("Thames", "Crown", "Victoria", "Baker", "Oxford", "Windsor"),
        (170, 180, 190),
        ((120, 60, 50), (170, 170, 160), (60, 70, 80)),
        "peaked",
        0.85,
        0.85,
    ),
    CityStyle(
        "Lantau Bay",
        ("Silk", "Dragon", "Peak", "Moon", "Star", "Phoenix"),
        (120, 140, 180),
        ((60, 160, 150), (200, 60, 60), (220, 220, 230)),
        "stepped",
        1.2,
        0.9,
    ),
    CityStyle(
        "Eastbank",
        ("Pier", "Ferry", "Canal", "Dock", "Cedar", "Oak"),
        (160, 200, 240),
        ((110, 80, 60), (150, 140, 130), (200, 180, 150)),
        "flat",
        0.95,
        1.0,
    ),
    CityStyle(
        "Yarra Heights",
        ("Collins", "Fitz", "Reef", "Coral", "Swan", "Perth"),
        (110, 170, 230),
        ((180, 120, 70), (90, 120, 90), (210, 200, 190)),
        "stepped",
        1.05,
        1.15,
    ),
    CityStyle(
        "Ikoyi",
        ("Broad", "Palm", "Niger", "Delta", "Benin", "Grace"),
        (240, 190, 120),
        ((60, 140, 90), (230, 190, 60), (150, 80, 50)),
        "flat",
        1.15,
        1.2,
    ),
    CityStyle(
        "Mission Hill",
        ("Golden", "Bay", "Mission", "Castro", "Cable", "Marin"),
        (200, 210, 230),
        ((230, 150, 140), (150, 190, 210), (240, 230, 200)),
        "peaked",
        1.0,
        1.05,
    ),
)
CITIES = {style.name: style for style in (TRAIN_CITY, *OOD_CITIES)}


@dataclass(frozen=True)
class City:
    style: CityStyle
    size: int  # intersections per side
    places: dict[tuple[int, int, str], str]  # (x, y, corner) -> place name
    diagonals: frozenset[tuple[int, int]]  # intersections joined to (x+1, y+1) by an avenue

    def neighbour(self, node: tuple[int, int], heading: int) -> tuple[int, int] | None:
        dx, dy = STEPS[heading]
        x, y = node[0] + dx, node[1] + dy
        if not (0 <= x < self.size and 0 <= y < self.size):
            return None
        if dx and dy:  # diagonal: only along avenues, which run southwest-northeast
            low = (min(node[0], x), min(node[1], y))
            if dx != dy or low not in self.diagonals:
                return None
        return (x, y)

    def landmarks(self, node: tuple[int, int], heading: float) -> list[Landmark]:
        """Places at an intersection's corners, as seen facing `heading`."""
        return [
            Landmark(name, relation_of(heading, bearing))
            for corner, bearing in CORNERS.items()
            if (name := self.places.get((node[0], node[1], corner)))
        ]


@lru_cache(maxsize=32)
def generate_city(name: str = TRAIN_CITY.name, seed: int = 0, size: int = 9) -> City:
    if name not in CITIES:
        raise ValueError(f"unknown city {name!r}; known: {sorted(CITIES)}")
    style = CITIES[name]
    rng = random.Random(f"{name}/{seed}")
    names = [f"{word} {kind}" for word in style.words for kind in KINDS]
    rng.shuffle(names)
    places: dict[tuple[int, int, str], str] = {}
    for x in range(size):
        for y in range(size):
            for corner in CORNERS:
                if names and rng.random() < 0.35:
                    places[(x, y, corner)] = names.pop()
    diagonals = frozenset((k, k + offset) for offset in (-2, 3) for k in range(size) if 0 <= k + offset < size - 1)
    return City(style, size, places, diagonals)


def generate_route(
    city: City, rng: random.Random, turns: int = 2, max_blocks: int = 3, max_straight: int = 5, route_id: str = ""
) -> Route:
    """A walk with `turns` turns (of 45 or 90 degrees) from a place to a place."""
    for _ in range(1000):
        route = _try_route(city, rng, turns, max_blocks, max_straight, route_id)
        if route is not None:
            return route
    raise ValueError(f"no route with {turns} turns found in {city.style.name}")


def _try_route(city: City, rng: random.Random, turns: int, max_blocks: int, max_straight: int, route_id: str):
    node = (rng.randrange(city.size), rng.randrange(city.size))
    heading = rng.choice(list(STEPS))
    init_heading = (heading + rng.choice((-90, -45, 45, 90))) % 360
    visited, path, segments = {node}, [(node, heading)], []
    for segment in range(turns + 1):
        blocks = rng.randint(1, max_blocks)
        for _ in range(blocks):
            nxt = city.neighbour(node, heading)
            if nxt is None or nxt in visited:
                return None
            node = nxt
            visited.add(node)
            path.append((node, heading))
        segments.append(blocks)
        if segment < turns:
            options = [h for h in ((heading + d) % 360 for d in (-90, -45, 45, 90)) if city.neighbour(node, h)]
            if not options:
                return None
            heading = rng.choice(options)
    ends = [path[0][0], node]
    start_places = [name for corner in CORNERS if (name := city.places.get((*ends[0], corner)))]
    end_places = [name for corner in CORNERS if (name := city.places.get((*ends[1], corner)))]
    if not start_places or not end_places:
        return None
    route = _build_route(city, path, segments, init_heading, start_places[0], end_places[0], max_straight, route_id)
    if not all(node.landmarks for node in route.intersections):
        return None  # every turning point must be recognisable, as in V-IRL
    return route


def _build_route(city, path, segments, init_heading, start, destination, max_straight, route_id) -> Route:
    """Turning points, per-point views and the instruction, from the walked path."""
    views = [city.landmarks(node, heading) for node, heading in path]
    intersections, position = [], 0
    for index, blocks in enumerate(segments):
        position += blocks
        node, heading_in = path[position]
        is_last = index == len(segments) - 1
        heading_out = None if is_last else path[position + 1][1]
        intersections.append(Intersection(city.landmarks(node, heading_in), heading_in, heading_out, blocks * 80.0))
    steps = [min(blocks, max_straight) for blocks in segments]
    route = Route(
        route_id or f"{city.style.name}-{path[0][0]}",
        city.style.name,
        start,
        destination,
        float(init_heading),
        "",
        intersections,
        steps,
        {"source": "generated", "nodes": [list(n) for n, _ in path]},
        views,
    )
    route.instruction = write_instruction(route)
    return route


def write_instruction(route: Route) -> str:
    """'First, turn left to face north. Move forward until you reach the next
    intersection where X is on your left front. Then, ... Finally, stop at D.'"""
    sentences, heading = [], route.init_heading
    first = route.intersections[0].heading_in
    sentences.append(f"First, {_turn_phrase(heading, first)} to face {compass_name(first)}.")
    heading = first
    for node in route.intersections:
        mark = (
            f", where {node.landmarks[0].name} is {relation_phrase(node.landmarks[0].relation)}"
            if node.landmarks
            else ""
        )
        if node.heading_out is None:
            sentences.append(f"Move forward until you reach {route.destination}{mark}. Finally, stop there.")
            break
        sentences.append(f"Move forward until you reach the next intersection{mark}.")
        sentences.append(f"Then, {_turn_phrase(heading, node.heading_out)} to face {compass_name(node.heading_out)}.")
        heading = node.heading_out
    return " ".join(sentences)


def _turn_phrase(current: float, target: float) -> str:
    """'turn left', 'turn slightly right' ...: the relative action's words (generated
    routes turn by 45 or 90 degrees, so the words match the angles)."""
    return f"turn {relative_turn(current, target)}"


__all__ = [
    "CITIES",
    "COMPASS",
    "City",
    "CityStyle",
    "OOD_CITIES",
    "TRAIN_CITY",
    "generate_city",
    "generate_route",
    "write_instruction",
]
