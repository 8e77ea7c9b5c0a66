"""GP-VL card images, drawn from scratch with PIL (no image assets).

Cards lie in a row on a felt table. Each shows its rank in large type at the centre and
in the corner, and a suit glyph drawn from circles and polygons, red or black. The seed
moves the cards a little and shades the felt, so images differ between deals while the
same (hand, seed, size) always gives the same pixels. Drawing happens at twice the size
and is downsampled, which anti-aliases edges without depending on font hinting.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .cards import Card

_SUPERSAMPLE = 2
_RED = (196, 22, 38)
_BLACK = (20, 20, 24)
_CARD_FACE = (250, 250, 246)
_CARD_EDGE = (120, 120, 120)


def render_hand(hand: Sequence[Card], seed: int, size: int = 224) -> Image.Image:
    """A size x size RGB image of the hand on a table."""
    rng = random.Random(seed)
    big = size * _SUPERSAMPLE
    felt = (30 + rng.randint(-8, 8), 100 + rng.randint(-12, 12), 60 + rng.randint(-8, 8))
    image = Image.new("RGB", (big, big), felt)
    draw = ImageDraw.Draw(image)
    slot = big / len(hand)
    card_w = int(slot * 0.86)
    card_h = int(card_w * 1.45)
    for index, card in enumerate(hand):
        jitter_x = rng.uniform(-0.04, 0.04) * slot
        jitter_y = rng.uniform(-0.08, 0.08) * card_h
        left = int(index * slot + (slot - card_w) / 2 + jitter_x)
        top = int((big - card_h) / 2 + jitter_y)
        _draw_card(draw, card, left, top, card_w, card_h)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _draw_card(draw: ImageDraw.ImageDraw, card: Card, left: int, top: int, w: int, h: int) -> None:
    colour = _RED if card.is_red else _BLACK
    radius = max(2, w // 10)
    draw.rounded_rectangle(
        (left, top, left + w, top + h), radius, fill=_CARD_FACE, outline=_CARD_EDGE, width=max(1, w // 40)
    )
    corner = _font(max(8, int(h * 0.16)))
    draw.text((left + w * 0.08, top + h * 0.04), card.rank, fill=colour, font=corner)
    _draw_suit(draw, card.suit, left + w * 0.16, top + h * 0.28, w * 0.09, colour)
    centre = _font(max(10, int(h * (0.34 if card.rank == "10" else 0.42))))
    draw.text((left + w / 2, top + h * 0.50), card.rank, fill=colour, font=centre, anchor="mm")
    _draw_suit(draw, card.suit, left + w / 2, top + h * 0.82, w * 0.14, colour)


def _draw_suit(draw: ImageDraw.ImageDraw, suit: str, cx: float, cy: float, r: float, colour) -> None:
    """A suit glyph of half-height r centred at (cx, cy)."""
    if suit == "D":
        draw.polygon([(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)], fill=colour)
    elif suit == "H":
        lobe = 0.52 * r
        for dx in (-lobe, lobe):
            draw.ellipse((cx + dx - lobe, cy - r, cx + dx + lobe, cy - r + 2 * lobe), fill=colour)
        draw.polygon(
            [(cx - 2 * lobe, cy - r + lobe * 1.1), (cx + 2 * lobe, cy - r + lobe * 1.1), (cx, cy + r)], fill=colour
        )
    elif suit == "S":
        lobe = 0.5 * r
        for dx in (-lobe, lobe):
            draw.ellipse((cx + dx - lobe, cy, cx + dx + lobe, cy + 2 * lobe), fill=colour)
        draw.polygon([(cx - 2 * lobe, cy + lobe * 0.9), (cx + 2 * lobe, cy + lobe * 0.9), (cx, cy - r)], fill=colour)
        _draw_stem(draw, cx, cy, r, colour)
    else:  # clubs
        leaf = 0.42 * r
        for dx, dy in ((0, -r + leaf), (-leaf * 1.15, -0.05 * r), (leaf * 1.15, -0.05 * r)):
            draw.ellipse((cx + dx - leaf, cy + dy - leaf, cx + dx + leaf, cy + dy + leaf), fill=colour)
        _draw_stem(draw, cx, cy, r, colour)


def _draw_stem(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, colour) -> None:
    draw.polygon([(cx, cy), (cx - 0.38 * r, cy + r), (cx + 0.38 * r, cy + r)], fill=colour)


@lru_cache(maxsize=64)
def _font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font: the same glyphs on every machine."""
    return ImageFont.load_default(size=pixels)
