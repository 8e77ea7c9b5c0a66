"""Looking at episodes: pure HTML renderers, a static export, and an ipywidgets viewer.

Rendering lives in pure functions (`turn_html`, `episode_html`, `export_html`) that
tests reach; `EpisodeViewer` only wires controls to them. All model text is escaped:
answers are untrusted. Images are redrawn from each episode's `task`, since episode
files do not store them.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

from .episodes import Episode

_STYLE = """
<style>
.sftrl-ep {font-family: system-ui, sans-serif; font-size: 13px; border: 1px solid #ccc; border-radius: 6px;
           padding: 8px 12px; margin: 8px 0;}
.sftrl-ep pre {white-space: pre-wrap; background: #f6f6f6; padding: 6px; border-radius: 4px; margin: 4px 0;}
.sftrl-ok {color: #167a2c; font-weight: 600;} .sftrl-bad {color: #b3261e; font-weight: 600;}
.sftrl-meta {color: #555;}
</style>
"""


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


def turn_html(episode: Episode, index: int) -> str:
    """One answer: the response, what the verifier read and said, and the reward."""
    turn = episode.turns[index]
    verdict = turn.verdict or {}
    parsed = verdict.get("formula") or verdict.get("action")
    badge = "sftrl-ok" if turn.outcome == "correct" else "sftrl-bad"
    parts = [
        f'<div><b>attempt {index + 1}</b> <span class="{badge}">{html.escape(turn.outcome or "?")}</span> '
        f'<span class="sftrl-meta">reward {turn.reward:+.2f}</span></div>',
        f"<pre>{html.escape(turn.response)}</pre>",
    ]
    if parsed is not None:
        value = verdict.get("value")
        shown = f"{parsed} = {value}" if value is not None else str(parsed)
        parts.append(f'<div class="sftrl-meta">read as: <code>{html.escape(shown)}</code></div>')
    parts.append(f'<div class="sftrl-meta">verifier: {html.escape(turn.feedback)}</div>')
    return "\n".join(parts)


def episode_html(episode: Episode, turn: int | None = None, with_images: bool = True) -> str:
    """An episode card: header, the prompt (collapsed), image, and its turns (all, or up to `turn`)."""
    shown = episode.turns if turn is None else episode.turns[: turn + 1]
    status = '<span class="sftrl-ok">solved</span>' if episode.success else '<span class="sftrl-bad">not solved</span>'
    header = (f"<div><b>{html.escape(episode.env_id)}</b> {html.escape(str(episode.split or ''))} "
              f"seed {episode.seed} &middot; {status} &middot; {len(episode.turns)} attempt(s) "
              f"&middot; return {episode.total_reward:+.2f}</div>")
    body = [header, f"<details><summary>prompt</summary><pre>{html.escape(episode.prompt)}</pre></details>"]
    if with_images:
        body += [image_html(image) for image in episode_images(episode)]
    body += [turn_html(episode, i) for i in range(len(shown))]
    return f'<div class="sftrl-ep">{"".join(body)}</div>'


def filter_episodes(episodes: Sequence[Episode], split: str | None = None, outcome: str | None = None,
                    success: bool | None = None) -> list[Episode]:
    """Episodes of a split, with at least one answer of an outcome, solved or not."""
    return [e for e in episodes
            if (split is None or e.split == split)
            and (outcome is None or any(t.outcome == outcome for t in e.turns))
            and (success is None or e.success == success)]


def export_html(episodes: Sequence[Episode], path: str | Path, title: str = "episodes", limit: int = 200) -> Path:
    """A self-contained page of episode cards (images inlined), browsable without a kernel."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cards = "\n".join(episode_html(e) for e in list(episodes)[:limit])
    more = f"<p>{len(episodes) - limit} more episodes not shown.</p>" if len(episodes) > limit else ""
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
                    f"</head><body><h2>{html.escape(title)}</h2>{cards}{more}</body></html>", encoding="utf-8")
    return path


class EpisodeViewer:
    """Filters (split, outcome, solved), an episode slider, and a play button over turns."""

    def __init__(self, episodes: Sequence[Episode]) -> None:
        import ipywidgets as w

        self.episodes = list(episodes)
        splits = sorted({str(e.split) for e in self.episodes if e.split})
        outcomes = sorted({t.outcome for e in self.episodes for t in e.turns if t.outcome})
        self.split = w.Dropdown(options=["any", *splits], description="split")
        self.outcome = w.Dropdown(options=["any", *outcomes], description="outcome")
        self.solved = w.Dropdown(options=["any", "solved", "not solved"], description="solved")
        self.index = w.IntSlider(min=0, max=0, description="episode")
        self.turn = w.IntSlider(min=0, max=0, description="turn")
        self.play = w.Play(interval=1200, min=0, max=0)
        w.jslink((self.play, "value"), (self.turn, "value"))
        self.view = w.HTML()
        for control in (self.split, self.outcome, self.solved):
            control.observe(lambda _: self._refilter(), names="value")
        self.index.observe(lambda _: self._select(), names="value")
        self.turn.observe(lambda _: self._draw(), names="value")
        self.widget = w.VBox([w.HBox([self.split, self.outcome, self.solved]), w.HBox([self.index, self.play, self.turn]),
                              self.view])
        self._refilter()

    def _current(self) -> list[Episode]:
        pick = lambda value: None if value == "any" else value  # noqa: E731
        solved = {"any": None, "solved": True, "not solved": False}[self.solved.value]
        return filter_episodes(self.episodes, pick(self.split.value), pick(self.outcome.value), solved)

    def _refilter(self) -> None:
        self.shown = self._current()
        self.index.max = max(0, len(self.shown) - 1)
        self.index.value = 0
        self._select()

    def _select(self) -> None:
        turns = len(self.shown[self.index.value].turns) if self.shown else 1
        self.turn.max = self.play.max = max(0, turns - 1)
        self.turn.value = 0
        self._draw()

    def _draw(self) -> None:
        if not self.shown:
            self.view.value = "<i>no episode matches the filters</i>"
            return
        self.view.value = _STYLE + episode_html(self.shown[self.index.value], turn=self.turn.value)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def summary_rows(episodes: Sequence[Episode]) -> list[dict[str, Any]]:
    """One flat row per episode (for a DataFrame next to the viewer)."""
    return [{"split": e.split, "seed": e.seed, "success": e.success, "attempts": len(e.turns),
             "return": e.total_reward, "outcomes": ",".join(t.outcome for t in e.turns)} for e in episodes]
