"""Looking at episodes: pure HTML renderers, a static export, and an ipywidgets viewer.

Rendering lives in pure functions (`turn_html`, `episode_html`, `summary_html`,
`export_html`) that tests reach; `EpisodeViewer` only wires controls to them. All model
text is escaped: answers are untrusted. Long unbroken answers wrap inside their card
(no card or page grows wider than the window). Images are redrawn from each episode's
`task`, since episode files do not store them.

Each card can name its source (run, checkpoint): pass (source, episode) pairs or a
{source: episodes} mapping instead of plain episodes.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .envs import recognised
from .envs.general_points import verifier as gp_verifier
from .episodes import Episode

_STYLE = """
<style>
.sftrl-page {max-width: 1100px; margin: 0 auto; padding: 0 16px; font-family: system-ui, sans-serif;}
.sftrl-page h2, .sftrl-summary td:first-child {overflow-wrap: anywhere; word-break: break-word;}
.sftrl-summary {font-size: 13px;} .sftrl-summary td, .sftrl-summary th {padding: 2px 10px 2px 0; text-align: left;}
.sftrl-summary th, .sftrl-summary td:nth-child(2), .sftrl-summary td:nth-child(3) {white-space: nowrap;}
.sftrl-ep {font-family: system-ui, sans-serif; font-size: 13px; border: 1px solid #ccc; border-radius: 6px;
           padding: 8px 12px; margin: 8px 0; max-width: 100%; box-sizing: border-box;
           overflow-wrap: anywhere; word-break: break-word;}
.sftrl-ep pre {white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word; background: #f6f6f6;
               padding: 6px; border-radius: 4px; margin: 4px 0;}
.sftrl-ep code {white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word;}
.sftrl-ep img {max-width: 100%; height: auto;}
.sftrl-source {font-weight: 600; color: #1a4f8a;}
.sftrl-ok {color: #167a2c; font-weight: 600;} .sftrl-bad {color: #b3261e; font-weight: 600;}
.sftrl-meta {color: #555;}
</style>
"""

Labelled = tuple[str | None, Episode]
# What the renderers take: plain episodes, (source, episode) pairs, or {source: episodes}.
# The source names where an episode came from (run, checkpoint), which the episode
# record itself does not hold: the same seeds recur in every checkpoint's evaluation.
Episodes = Sequence[Episode | tuple[str, Episode]] | Mapping[str, Sequence[Episode]]


def labelled(episodes: Episodes) -> list[Labelled]:
    """(source or None, episode) pairs, in order, from any form the renderers accept."""
    if isinstance(episodes, Mapping):
        return [(str(source), e) for source, group in episodes.items() for e in group]
    return [(None, item) if isinstance(item, Episode) else (str(item[0]), item[1]) for item in episodes]


def episode_images(episode: Episode) -> list:
    """The prompt images: kept in memory after a rollout, else redrawn from the task."""
    if episode.images:
        return list(episode.images)
    if not episode.env_id.endswith("vl"):
        return []
    from .envs import make

    config = {k: v for k, v in episode.env_config.items() if k != "modality"}
    observation, _ = make(episode.env_id, **config).reset(options={"task": episode.task})
    return list(observation.images)


def image_html(image, width: int = 224) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{width}"/>'


def read_as(verdict: Mapping[str, Any]) -> str | None:
    """What the verifier read, once: the formula with its value, or the action.

    A GP formula may already state its result ("(2+4)*4=24", the verdict's `claimed`);
    its value is then not repeated, and named only when it differs from the claim."""
    parsed = verdict.get("formula") or verdict.get("action")
    if parsed is None:
        return None
    parsed, value = str(parsed), verdict.get("value")
    if value is None:
        return parsed
    claimed = gp_verifier.claimed(verdict) if verdict.get("formula") is not None else None
    if claimed is None:
        return f"{parsed} = {value}"
    return parsed if str(claimed) == str(value) else f"{parsed} (its left side equals {value})"


def turn_html(episode: Episode, index: int) -> str:
    """One answer: the response, what the verifier read and said, and the reward."""
    turn = episode.turns[index]
    badge = "sftrl-ok" if turn.outcome == "correct" else "sftrl-bad"
    parts = [
        f'<div><b>attempt {index + 1}</b> <span class="{badge}">{html.escape(turn.outcome or "?")}</span> '
        f'<span class="sftrl-meta">reward {turn.reward:+.2f}</span></div>',
        f"<pre>{html.escape(turn.response)}</pre>",
    ]
    shown = read_as(turn.verdict or {})
    if shown is not None:
        parts.append(f'<div class="sftrl-meta">read as: <code>{html.escape(shown)}</code></div>')
    seen = recognition_html(turn.verdict or {})
    if seen is not None:
        parts.append(seen)
    parts.append(f'<div class="sftrl-meta">verifier: {html.escape(turn.feedback)}</div>')
    return "\n".join(parts)


def recognition_html(verdict: Mapping[str, Any]) -> str | None:
    """What a vision answer said it saw (cards' ranks, places in view) and whether the
    verifier found it right; None where recognition was not checked."""
    correct = verdict.get("recognition_correct")
    if correct is None:
        return None
    seen = recognised(verdict) or []
    badge = '<span class="sftrl-ok">read right</span>' if correct else '<span class="sftrl-bad">misread</span>'
    return f'<div class="sftrl-meta">saw: <code>{html.escape(", ".join(map(str, seen)))}</code> {badge}</div>'


def episode_html(
    episode: Episode,
    turn: int | None = None,
    with_images: bool = True,
    source: str | None = None,
    position: tuple[int, int] | None = None,
) -> str:
    """An episode card: where it came from, the episode's header, the prompt (collapsed),
    the image, and its turns (all, or up to `turn`). `position` is (i, N), from 1."""
    shown = episode.turns if turn is None else episode.turns[: turn + 1]
    status = '<span class="sftrl-ok">solved</span>' if episode.success else '<span class="sftrl-bad">not solved</span>'
    where = [f"episode {position[0]} of {position[1]}"] if position else []
    where += [f'<span class="sftrl-source">{html.escape(source)}</span>'] if source else []
    header = (
        f"<div><b>{html.escape(episode.env_id)}</b> {html.escape(str(episode.split or ''))} "
        f"seed {html.escape(str(episode.seed))} &middot; {status} &middot; {len(episode.turns)} attempt(s) "
        f"&middot; return {episode.total_reward:+.2f}</div>"
    )
    body = [f'<div class="sftrl-meta">{" &middot; ".join(where)}</div>'] if where else []
    body += [header, f"<details><summary>prompt</summary><pre>{html.escape(episode.prompt)}</pre></details>"]
    if with_images:
        body += [image_html(image) for image in episode_images(episode)]
    body += [turn_html(episode, i) for i in range(len(shown))]
    return f'<div class="sftrl-ep">{"".join(body)}</div>'


def _matches(episode: Episode, split: str | None, outcome: str | None, success: bool | None) -> bool:
    return (
        (split is None or episode.split == split)
        and (outcome is None or any(t.outcome == outcome for t in episode.turns))
        and (success is None or episode.success == success)
    )


def filter_episodes(
    episodes: Sequence[Episode], split: str | None = None, outcome: str | None = None, success: bool | None = None
) -> list[Episode]:
    """Episodes of a split, with at least one answer of an outcome, solved or not."""
    return [e for e in episodes if _matches(e, split, outcome, success)]


def _counts(episodes: Sequence[Episode]) -> str:
    solved = sum(e.success for e in episodes)
    share = f" ({100 * solved / len(episodes):.0f}%)" if episodes else ""
    outcomes = Counter(t.outcome for e in episodes for t in e.turns)
    listed = ", ".join(f"{html.escape(str(name))} {count}" for name, count in sorted(outcomes.items())) or "none"
    return f"<td>{len(episodes)}</td><td>{solved}{share}</td><td>{sum(outcomes.values())}: {listed}</td>"


def summary_html(episodes: Episodes) -> str:
    """A table: episodes, solved (with %), answers by the verifier's outcome; one row per
    source when the episodes name several, then all of them."""
    pairs = labelled(episodes)
    sources = list(dict.fromkeys(source for source, _ in pairs if source is not None))
    rows = [(html.escape(source), [e for s, e in pairs if s == source]) for source in sources]
    if len(rows) != 1 or any(source is None for source, _ in pairs):
        rows.append(("all", [e for _, e in pairs]))
    head = "<tr><th>source</th><th>episodes</th><th>solved</th><th>answers by outcome</th></tr>"
    body = "".join(f"<tr><td>{name}</td>{_counts(group)}</tr>" for name, group in rows)
    return f'<table class="sftrl-summary">{head}{body}</table>'


def export_html(episodes: Episodes, path: str | Path, title: str = "episodes", limit: int = 200) -> Path:
    """A self-contained page (images inlined), browsable without a kernel: a summary of
    all episodes, then a card for each of the first `limit`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = labelled(episodes)
    cards = "\n".join(
        episode_html(e, source=source, position=(i + 1, len(pairs))) for i, (source, e) in enumerate(pairs[:limit])
    )
    more = f"<p>{len(pairs) - limit} more episodes not shown.</p>" if len(pairs) > limit else ""
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>{_STYLE}</head><body><div class='sftrl-page'>"
        f"<h2>{html.escape(title)}</h2>{summary_html(pairs)}{cards}{more}</div></body></html>",
        encoding="utf-8",
    )
    return path


def page_link_html(page: str | Path, episodes: int) -> str:
    """The line a notebook keeps in its output: where the static page is. A saved notebook
    shows no live widget, only this (the link is relative: it works beside the page,
    where `sftrl run` writes executed notebooks)."""
    page = Path(page)
    return (
        f'<p class="sftrl-meta">{episodes} episodes; static page (no kernel needed): '
        f'<a href="{html.escape(page.name)}" target="_blank">{html.escape(page.name)}</a> '
        f"in <code>{html.escape(str(page.parent))}</code></p>"
    )


class EpisodeViewer:
    """Filters (source, split, outcome, solved), an episode slider, and a play button over
    turns. With `page`, the same episodes are also written there as a static page, and
    the notebook's output names it (a saved notebook cannot show the live widget)."""

    def __init__(self, episodes: Episodes, page: str | Path | None = None, title: str = "episodes") -> None:
        import ipywidgets as w

        self.pairs = labelled(episodes)
        self.page = export_html(self.pairs, page, title) if page is not None else None
        sources = list(dict.fromkeys(source for source, _ in self.pairs if source is not None))
        splits = sorted({str(e.split) for _, e in self.pairs if e.split})
        outcomes = sorted({t.outcome for _, e in self.pairs for t in e.turns if t.outcome})
        self.source = w.Dropdown(options=["any", *sources], description="source")
        self.split = w.Dropdown(options=["any", *splits], description="split")
        self.outcome = w.Dropdown(options=["any", *outcomes], description="outcome")
        self.solved = w.Dropdown(options=["any", "solved", "not solved"], description="solved")
        self.index = w.IntSlider(min=0, max=0, description="episode")
        self.turn = w.IntSlider(min=0, max=0, description="turn")
        self.play = w.Play(interval=1200, min=0, max=0)
        w.jslink((self.play, "value"), (self.turn, "value"))
        self.view = w.HTML()
        filters = [self.source] * bool(sources) + [self.split, self.outcome, self.solved]
        for control in filters:
            control.observe(lambda _: self._refilter(), names="value")
        self.index.observe(lambda _: self._select(), names="value")
        self.turn.observe(lambda _: self._draw(), names="value")
        self.widget = w.VBox([w.HBox(filters), w.HBox([self.index, self.play, self.turn]), self.view])
        self._refilter()

    def _current(self) -> list[Labelled]:
        pick = lambda value: None if value == "any" else value  # noqa: E731
        solved = {"any": None, "solved": True, "not solved": False}[self.solved.value]
        return [
            (source, e)
            for source, e in self.pairs
            if pick(self.source.value) in (None, source)
            and _matches(e, pick(self.split.value), pick(self.outcome.value), solved)
        ]

    def _refilter(self) -> None:
        self.shown = self._current()
        self.index.max = max(0, len(self.shown) - 1)
        self.index.value = 0
        self._select()

    def _select(self) -> None:
        turns = len(self.shown[self.index.value][1].turns) if self.shown else 1
        self.turn.max = self.play.max = max(0, turns - 1)
        self.turn.value = 0
        self._draw()

    def _draw(self) -> None:
        if not self.shown:
            self.view.value = "<i>no episode matches the filters</i>"
            return
        source, episode = self.shown[self.index.value]
        self.view.value = _STYLE + episode_html(
            episode, turn=self.turn.value, source=source, position=(self.index.value + 1, len(self.shown))
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.page is not None:
            display(
                {
                    "text/html": page_link_html(self.page, len(self.pairs)),
                    "text/plain": f"{len(self.pairs)} episodes; static page: {self.page}",
                },
                raw=True,
            )
        bundle = self.widget._repr_mimebundle_()
        if bundle is not None:  # what a saved notebook shows where widgets do not render: not VBox(...)
            bundle["text/plain"] = f"EpisodeViewer: {len(self.pairs)} episodes (a live widget; rerun the cell)" + (
                f"; static page: {self.page}" if self.page else ""
            )
            display(bundle, raw=True)


def summary_rows(episodes: Episodes) -> list[dict[str, Any]]:
    """One flat row per episode (for a DataFrame next to the viewer)."""
    return [
        {
            "source": source,
            "split": e.split,
            "seed": e.seed,
            "success": e.success,
            "attempts": len(e.turns),
            "return": e.total_reward,
            "outcomes": ",".join(t.outcome for t in e.turns),
        }
        for source, e in labelled(episodes)
    ]
