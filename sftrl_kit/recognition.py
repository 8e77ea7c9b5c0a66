"""How well default-vl's eyes read, measured on held-out images: the four cards of a hand
(`recognition_report`) and the place names on street views (`place_recognition_report`),
each with its interval. The eyes themselves are built in `models.default_vl`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .envs.general_points.cards import Card, deck
from .envs.general_points.render import render_hand
from .envs.virl.city import CITIES, TRAIN_CITY, generate_city
from .envs.virl.streetview import render_views, signs_in_views
from .models.default_vl import CARDS_PER_HAND, IMAGE_SIDE, read_hands, read_images, read_signs, street_transcription
from .stats import rate_by_task, wilson_interval


def recognition_sets(count: int, seed: int) -> dict[str, list[tuple[list[Card], int]]]:
    """Held-out hands for recognition: `count` black-suit and `count` red-suit hands with
    their image seeds, dealt from `seed` (the eyes' training pool is dealt from
    EyesSettings.seed, with every suit mixed)."""
    rng = random.Random(f"recognition/{seed}")
    return {
        colours: [(rng.sample(deck(colours), CARDS_PER_HAND), rng.getrandbits(32)) for _ in range(count)]
        for colours in ("black", "red")
    }


def recognition_report(policy, count: int = 200, seed: int = 1, batch_size: int = 50) -> dict[str, Any]:
    """Exact four-card recognition of default-vl's eyes on held-out black and red hands:
    per colour, the share of hands whose four ranks (and, separately, four ranks and
    colours) the transcription gets right, with Wilson intervals."""
    report: dict[str, Any] = {"hands_per_colour": count, "seed": seed}
    for colours, hands in recognition_sets(count, seed).items():
        ranks_right = cards_right = 0
        for start in range(0, count, batch_size):
            chunk = hands[start : start + batch_size]
            read = read_hands(read_images(policy, [render_hand(h, s, IMAGE_SIDE) for h, s in chunk]))
            for (hand, _), slots in zip(chunk, read):
                ranks_right += all(s is not None and s[0] == c.rank for s, c in zip(slots, hand))
                cards_right += all(s == (c.rank, c.is_red) for s, c in zip(slots, hand))
        report[colours] = {
            "four_ranks": wilson_interval(ranks_right, count),
            "four_ranks_and_colours": wilson_interval(cards_right, count),
        }
    return report


def street_sets(count: int, seed: int) -> dict[str, list[tuple[tuple[int, int], int, int]]]:
    """Held-out street views for place-name recognition: per city, `count` distinct
    (node, heading) at intersections with at least one place, each with an image seed,
    in the city's layout the environment uses (layout 0, which the eyes never trained on)."""
    rng = random.Random(f"street-recognition/{seed}")
    sets = {}
    for name in CITIES:
        city = generate_city(name)
        views = [
            (node, heading) for node in sorted({(x, y) for (x, y, _) in city.places}) for heading in range(0, 360, 45)
        ]
        if count > len(views):
            raise ValueError(f"{name} has {len(views)} distinct views with a place, fewer than {count}")
        sets[name] = [(node, heading, rng.getrandbits(32)) for node, heading in rng.sample(views, count)]
    return sets


def place_recognition_report(policy, count: int = 100, seed: int = 1, batch_size: int = 50) -> dict[str, Any]:
    """Place-name recognition of default-vl's eyes on held-out street views of every
    generated city. "signs": the share of signs (a place as one panel shows it; a place
    shows in one or two panels) whose name the transcription says exactly, both words at
    the sign's tokens, with an interval clustered by view (`stats.rate_by_task`:
    the signs of one view are not independent). "views": the share of views whose whole
    transcription is exact (every sign right and a space at every other token), with a
    Wilson interval. Per city, and pooled over the training city ("id") and over the nine
    cities that are visual OOD for the task ("visual_ood"; the eyes themselves trained on
    all ten cities' styles and names, at other layouts)."""
    per_view: dict[str, list[tuple[int, int, bool]]] = {}
    for name, views in street_sets(count, seed).items():
        city = generate_city(name)
        per_view[name] = []
        for start in range(0, count, batch_size):
            chunk = views[start : start + batch_size]
            images = [render_views(city, node, heading, seed=image_seed) for node, heading, image_seed in chunk]
            for (node, heading, _), words in zip(chunk, read_images(policy, images)):
                signs = signs_in_views(city, node, heading)
                shown = [(p, side, n) for p, panel in enumerate(signs) for side, n in panel.items()]
                right = sum(read_signs(words, p, side) == n for p, side, n in shown)
                per_view[name].append((right, len(shown), words == street_transcription(signs)))

    def pooled(names: Sequence[str]) -> dict[str, Any]:
        views = {f"{n}/{i}": view for n in names for i, view in enumerate(per_view[n])}
        signs = rate_by_task({key: (right, shown) for key, (right, shown, _) in views.items()})
        signs.pop("per_task")
        exact = sum(whole for _, _, whole in views.values())
        return {"signs": signs, "views": wilson_interval(exact, len(views))}

    ood = [n for n in CITIES if n != TRAIN_CITY.name]
    return {
        "views_per_city": count,
        "seed": seed,
        "id": {"cities": [TRAIN_CITY.name], **pooled([TRAIN_CITY.name])},
        "visual_ood": {"cities": ood, **pooled(ood)},
        "per_city": {name: pooled([name]) for name in CITIES},
    }
