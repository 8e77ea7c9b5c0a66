"""Rendered street views: a 2x2 grid (front, right, back, left) at a point of a route.

Each panel looks down a street: sky, road, and buildings to the left, ahead and to the
right. A place on an intersection corner shows as a storefront sign in every panel
that looks towards it: on the left building when it lies 45 degrees left of the
panel's direction, ahead when straight on, on the right when 45 degrees right, one word
per line and never cut (the plate widens past a narrow building instead). The
city's style sets the sky, facade palette, roof shape, sign size and light, so a model
trained in one city sees a visual shift in another. Same city, point, heading and seed:
same bytes.
"""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .city import CORNERS, City

PANEL_OFFSETS = {"front": 0, "right": 90, "back": 180, "left": 270}  # grid order: row by row
_ROAD = (90, 90, 95)
_GROUND = (150, 150, 140)


def render_views(city: City, node: tuple[int, int], heading: float, seed: int = 0, panel: int = 112) -> Image.Image:
    """The 2x2 grid at `node` facing `heading`; panel is each view's side in pixels."""
    grid = Image.new("RGB", (2 * panel, 2 * panel), (0, 0, 0))
    for index, offset in enumerate(PANEL_OFFSETS.values()):
        view = _render_panel(city, node, (heading + offset) % 360, seed, panel)
        grid.paste(view, ((index % 2) * panel, (index // 2) * panel))
    return grid


def signs_in_views(city: City, node: tuple[int, int], heading: float) -> list[dict[str, str]]:
    """The place names each panel of `render_views(city, node, heading)` shows, in grid
    order: per panel, {"left" | "ahead" | "right": name} for the buildings with a sign."""
    return [_signs(city, node, (heading + offset) % 360) for offset in PANEL_OFFSETS.values()]


def _render_panel(city: City, node, direction: float, seed: int, size: int) -> Image.Image:
    style = city.style
    rng = random.Random(f"{style.name}/{node}/{direction}/{seed}")
    light = lambda colour: tuple(max(0, min(255, int(c * style.light))) for c in colour)  # noqa: E731
    image = Image.new("RGB", (size, size), light(style.sky))
    draw = ImageDraw.Draw(image)
    horizon = int(size * 0.45)
    draw.rectangle((0, horizon, size, size), fill=light(_GROUND))
    draw.polygon(
        [(size * 0.42, horizon), (size * 0.58, horizon), (size * 0.95, size), (size * 0.05, size)], fill=light(_ROAD)
    )
    signs = _signs(city, node, direction)
    boxes = {
        "left": (0, size * 0.12, size * 0.36, size * 0.78),
        "ahead": (size * 0.38, size * 0.25, size * 0.62, horizon + 2),
        "right": (size * 0.64, size * 0.1, size, size * 0.8),
    }
    for box in boxes.values():
        _building(draw, box, light(rng.choice(style.facades)), style.roof, rng)
    for side, box in boxes.items():  # after every building: a sign wider than its building stays whole
        if side in signs:
            scale = style.sign_scale * (0.7 if side == "ahead" else 1)
            _sign(draw, box, signs[side], max(7, int(size * 0.075 * scale)))
    return image


def _signs(city: City, node, direction: float) -> dict[str, str]:
    """Which places show on which building of a panel looking towards `direction`."""
    out = {}
    for corner, bearing in CORNERS.items():
        name = city.places.get((node[0], node[1], corner))
        if not name:
            continue
        delta = (bearing - direction + 180) % 360 - 180
        if -67.5 <= delta <= -22.5:
            out["left"] = name
        elif 22.5 <= delta <= 67.5:
            out["right"] = name
        elif -22.5 < delta < 22.5:
            out["ahead"] = name
    return out


def _building(draw: ImageDraw.ImageDraw, box, colour, roof: str, rng: random.Random) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, fill=colour)
    darker = tuple(int(c * 0.7) for c in colour)
    if roof == "peaked":
        draw.polygon([(left, top), ((left + right) / 2, top - (right - left) * 0.25), (right, top)], fill=darker)
    elif roof == "stepped":
        step = (right - left) / 4
        draw.rectangle((left + step, top - step * 0.6, right - step, top), fill=darker)
    window = tuple(min(255, int(c * 1.3) + 30) for c in colour)
    columns = 3
    for row in range(3):
        for column in range(columns):
            if rng.random() < 0.85:
                x = left + (column + 0.3) * (right - left) / columns
                y = top + (row + 0.25) * (bottom - top) / 5
                draw.rectangle((x, y, x + (right - left) / columns * 0.4, y + (bottom - top) / 12), fill=window)


def _sign(draw: ImageDraw.ImageDraw, box, name: str, pixels: int) -> None:
    """A plate with the name one word per line (a word is never broken), as wide as its
    building, or wider where a word needs it, centred on the building."""
    left, top, right, bottom = box
    font = _font(pixels)
    lines = name.split(" ")
    width = max(right - left - 4, max(draw.textlength(line, font=font) for line in lines) + 4)
    centre = (left + right) / 2
    height = pixels * 1.25 * len(lines) + 4
    y0 = bottom - (bottom - top) * 0.42
    draw.rectangle(
        (centre - width / 2, y0, centre + width / 2, y0 + height), fill=(250, 245, 230), outline=(40, 40, 40)
    )
    for i, line in enumerate(lines):
        draw.text((centre, y0 + 2 + pixels * 1.25 * (i + 0.5)), line, fill=(20, 20, 20), font=font, anchor="mm")


@lru_cache(maxsize=32)
def _font(pixels: int):
    return ImageFont.load_default(size=pixels)
