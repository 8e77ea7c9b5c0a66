import json
import re
from collections import Counter

import pytest
from conftest import REPO  # noqa: E402
from scripted import ScriptedResponder

from sftrl_kit.data import load_eval_set
from sftrl_kit.envs import make
from sftrl_kit.episodes import Episode, Turn
from sftrl_kit.models import SamplingConfig
from sftrl_kit.rollout import rollout
from sftrl_kit.widgets import (
    EpisodeViewer,
    episode_html,
    export_html,
    filter_episodes,
    read_as,
    recognition_html,
    summary_html,
    summary_rows,
    turn_html,
)

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
LONG_TOKEN = "x" * 3000


def episode(success, outcomes, env_id="gp-l", split="gp-id", task=None):
    turns = [
        Turn(
            f"<script>alert({i})</script>",
            5.0 if o == "correct" else -3.0,
            o,
            "You failed because: x",
            {"formula": "1+2", "value": "3"},
        )
        for i, o in enumerate(outcomes)
    ]
    return Episode(
        env_id,
        {"face_rule": "ten", "colours": "black", "modality": "image"},
        task or {},
        "the prompt",
        turns,
        success,
        split,
        7,
    )


def with_formula(answer: str, suffix: str) -> str:
    record = json.loads(answer)
    record["formula"] += suffix
    return json.dumps(record)


class ScriptedAnswers(ScriptedResponder):
    """Answers episode k with answers[k](a correct answer), on every attempt."""

    def __init__(self, answers):
        super().__init__(lambda episode, attempt: True)
        self.answers = answers

    def answer(self, prompt):
        return self.answers[self.episode_of_prompt[prompt]](ScriptedResponder.answer(prompt))


@pytest.fixture(scope="module")
def played():
    """Six GP-L episodes played by a scripted model: right, right with '=24' written out,
    a wrong claim, hostile HTML, one 3,000-character token, and a shrug."""
    answers = [
        lambda a: a,
        lambda a: with_formula(a, "=24"),
        lambda a: with_formula(a, "=25"),
        lambda a: HOSTILE,
        lambda a: LONG_TOKEN,
        lambda a: "I am not sure.",
    ]
    envs = [make("gp-l", max_attempts=2) for _ in answers]
    return rollout(
        ScriptedAnswers(answers),
        envs,
        SamplingConfig(),
        seeds=list(range(len(answers))),
        splits=["gp-id"] * len(answers),
        progress=False,
    )


def test_rendering_escapes_model_text_and_shows_the_verdict():
    card = episode_html(episode(True, ["unparseable", "correct"]))
    assert "<script>" not in card
    assert "&lt;script&gt;alert(0)&lt;/script&gt;" in card
    assert "solved" in card
    assert "<details>" in card
    assert "read as: <code>1+2 = 3</code>" in card
    assert turn_html(episode(True, ["correct"]), 0).count("reward +5.00") == 1
    assert episode_html(episode(False, ["unparseable", "wrong_value"]), turn=0).count("attempt ") == 1


def test_hostile_answers_labels_and_titles_render_as_text(played, tmp_path):
    page = export_html({"<b>run</b>": played}, tmp_path / "view.html", title=HOSTILE).read_text()
    assert "<script" not in page.split("</style>", 1)[1]
    assert "<img src=x" not in page
    assert "<b>run</b>" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"
    assert page.count(escaped) == 2 + 2  # <title>, <h2>, and the two attempts
    assert "&lt;b&gt;run&lt;/b&gt;" in page


def test_read_as_shows_the_formula_once(played):
    right, written_out, wrong_claim = (e.turns[0] for e in played[:3])
    assert read_as(right.verdict) == f"{right.verdict['formula']} = 24"
    assert written_out.verdict["formula"].endswith("=24")
    assert (written_out.verdict["claimed"], wrong_claim.verdict["claimed"], right.verdict["claimed"]) == (24, 25, None)
    assert read_as(written_out.verdict) == written_out.verdict["formula"]
    assert "=24 = 24" not in episode_html(played[1])
    assert read_as(wrong_claim.verdict) == f"{wrong_claim.verdict['formula']} (its left side equals 24)"
    assert read_as({"action": "forward()", "value": None}) == "forward()"
    assert read_as({"formula": None, "value": None}) is None
    # A verdict stored before verdicts carried `claimed` reads the same (the verifier's module
    # reads its claim); an unreadable old formula is shown with its value.
    assert read_as({"formula": "1+2=3", "value": "3"}) == "1+2=3"
    assert read_as({"formula": "1+2=4", "value": "3"}) == "1+2=4 (its left side equals 3)"
    assert read_as({"formula": "1+(2", "value": "3"}) == "1+(2 = 3"


def test_long_unbroken_answers_wrap_inside_the_page(played, tmp_path):
    page = export_html(played, tmp_path / "view.html").read_text()
    assert LONG_TOKEN in page  # shown whole, not cut
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    for block in (".sftrl-ep {", ".sftrl-ep pre {", ".sftrl-ep code {"):
        rule = style.split(block, 1)[1].split("}", 1)[0]
        assert "overflow-wrap: anywhere" in rule, block
        assert "word-break: break-word" in rule, block
    assert "white-space: pre-wrap" in style.split(".sftrl-ep pre {", 1)[1].split("}", 1)[0]
    assert re.search(r"\.sftrl-page \{[^}]*max-width: 1100px", style)
    fixed = re.findall(r"(?<![-\w])(?:min-)?width:\s*\d+px", style) + re.findall(r"<(?:table|div|pre)[^>]*width=", page)
    assert fixed == []  # nothing sized wider than the window


def test_cards_name_their_source_and_position(played, tmp_path):
    sources = {"sft · step-000040": played[:4], "rl · step-000040": played[:4]}
    page = export_html(sources, tmp_path / "view.html").read_text()
    cards = page.split('class="sftrl-ep"')[1:]
    assert len(cards) == 8
    for i, card in enumerate(cards):
        assert f"episode {i + 1} of 8" in card
        assert ("sft · step-000040" if i < 4 else "rl · step-000040") in card
    as_pairs = export_html([("rl", played[0]), played[1]], tmp_path / "pairs.html").read_text()
    assert as_pairs.count('class="sftrl-source"') == 1
    assert "episode 2 of 2" in as_pairs
    plain = export_html(played[:2], tmp_path / "plain.html").read_text()  # plain episodes: no source line
    assert 'class="sftrl-source"' not in plain
    assert "episode 1 of 2" in plain


def summary_table(page: str) -> dict[str, tuple[int, int, int, int, dict[str, int]]]:
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td><td>(\d+) \((\d+)%\)</td><td>(\d+): ([^<]*)</td></tr>", page)
    return {
        name: (
            int(n),
            int(solved),
            int(percent),
            int(answers),
            {o: int(c) for o, c in (item.rsplit(" ", 1) for item in outcomes.split(", "))},
        )
        for name, n, solved, percent, answers, outcomes in rows
    }


def test_the_summary_counts_episodes_solved_and_outcomes(played, tmp_path):
    routes = [
        episode(True, ["correct"] * 3, env_id="virl-l"),  # V-IRL: one correct answer per step
        episode(False, ["correct", "wrong_action"], env_id="virl-l"),
    ]
    extra = [episode(False, ["numbers_mismatch", "wrong_value"]), episode(True, ["correct"]), *routes]
    page = export_html({"a": played, "b": extra}, tmp_path / "view.html", limit=2).read_text()
    table = summary_table(page.split('class="sftrl-ep"')[0])  # at the top, before any card
    assert set(table) == {"a", "b", "all"}
    for name, group in (("a", played), ("b", extra), ("all", played + extra)):
        solved = len([e for e in group if e.success])
        outcomes: Counter = Counter()
        for e in group:
            for t in e.turns:
                outcomes[t.outcome] += 1
        assert table[name] == (
            len(group),
            solved,
            round(100 * solved / len(group)),
            sum(outcomes.values()),
            dict(outcomes),
        ), name
    assert table["all"][:3] == (10, 4, 40)  # solved: right, written out, and two extra
    assert "8 more episodes not shown" in page
    one = summary_table(summary_html(played))  # plain episodes: one row, all of them
    assert list(one) == ["all"]
    assert one["all"][0] == 6


def test_gp_vl_images_are_redrawn_from_the_task():
    record = load_eval_set(REPO / "data" / "eval" / "gp-visual-ood.jsonl")[0]
    card = episode_html(episode(False, ["wrong_value"], env_id="gp-vl", task=record["task"]))
    assert card.count("data:image/png;base64,") == 1


def test_filters_summary_rows_and_static_export(tmp_path):
    episodes = [
        episode(True, ["correct"]),
        episode(False, ["numbers_mismatch"], split="gp-rule-ood"),
        episode(False, ["unparseable"]),
    ]
    assert len(filter_episodes(episodes, split="gp-rule-ood")) == 1
    assert len(filter_episodes(episodes, outcome="unparseable", success=False)) == 1
    assert [r["success"] for r in summary_rows(episodes)] == [True, False, False]
    assert [r["source"] for r in summary_rows({"run": episodes[:1]})] == ["run"]
    page = export_html(episodes, tmp_path / "view.html", title="a <b> test")
    text = page.read_text()
    assert text.startswith("<!doctype html>")
    assert text.count('class="sftrl-ep"') == 3
    assert "a &lt;b&gt; test" in text


def test_the_viewer_wires_filters_to_the_renderer():
    viewer = EpisodeViewer([episode(True, ["wrong_value", "correct"]), episode(False, ["unparseable"], split="x")])
    assert viewer.index.max == 1
    assert viewer.turn.max == 1
    assert "episode 1 of 2" in viewer.view.value
    viewer.turn.value = 1
    assert "attempt 2" in viewer.view.value
    viewer.split.value = "x"
    assert viewer.index.max == 0
    assert "not solved" in viewer.view.value
    assert "episode 1 of 1" in viewer.view.value
    viewer.outcome.value = "correct"
    assert "no episode matches" in viewer.view.value


def test_the_viewer_filters_by_source_and_points_to_its_static_page(played, tmp_path, monkeypatch):
    import IPython.display

    viewer = EpisodeViewer(
        {"sft · step-40": played[:2], "rl · step-40": played[:3]}, page=tmp_path / "eps.html", title="two runs"
    )
    assert viewer.page.read_text().count('class="sftrl-ep"') == 5
    assert list(viewer.source.options) == ["any", "sft · step-40", "rl · step-40"]
    viewer.source.value = "rl · step-40"
    viewer.index.value = 2
    assert "rl · step-40" in viewer.view.value
    assert "episode 3 of 3" in viewer.view.value
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: shown.extend(objects))
    viewer._ipython_display_()
    link, bundle = shown
    assert 'href="eps.html"' in link["text/html"]
    assert "5 episodes" in link["text/html"]
    assert str(viewer.page) in link["text/plain"]
    assert str(viewer.page) in bundle["text/plain"]
    assert "VBox" not in bundle["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_a_vision_answer_shows_what_it_saw_and_whether_that_was_right():
    env = make("gp-vl")
    env.reset(seed=3)
    ranks = [card.rank for card in env.hand]
    wrong = ["A" if r != "A" else "2" for r in ranks]
    _, _, _, _, read_right = env.step(json.dumps({"cards": ranks, "number": [1, 1, 1, 1], "formula": "1+1"}))
    env.reset(seed=3)
    _, _, _, _, misread = env.step(json.dumps({"cards": wrong, "number": [1, 1, 1, 1], "formula": "1+1"}))
    assert "read right" in recognition_html(read_right["verdict"])
    assert ", ".join(ranks) in recognition_html(read_right["verdict"])
    assert "misread" in recognition_html(misread["verdict"])
    assert ", ".join(wrong) in recognition_html(misread["verdict"])
    assert recognition_html({"recognition_correct": None, "recognised_cards": ranks}) is None  # GP-L: not checked
    hostile = {"recognition_correct": False, "recognised_places": [HOSTILE]}
    assert "<script>" not in recognition_html(hostile)
