from sftrl_kit.data import load_eval_set
from sftrl_kit.episodes import Episode, Turn
from sftrl_kit.widgets import EpisodeViewer, episode_html, export_html, filter_episodes, summary_rows, turn_html

from conftest import REPO  # noqa: E402


def episode(success, outcomes, env_id="gp-l", split="gp-id", task=None):
    turns = [Turn(f"<script>alert({i})</script>", 5.0 if o == "correct" else -3.0, o, "You failed because: x",
                  {"formula": "1+2", "value": "3"}) for i, o in enumerate(outcomes)]
    return Episode(env_id, {"face_rule": "ten", "colours": "black", "modality": "image"}, task or {}, "the prompt",
                   turns, success, split, 7)


def test_rendering_escapes_model_text_and_shows_the_verdict():
    card = episode_html(episode(True, ["unparseable", "correct"]))
    assert "<script>" not in card and "&lt;script&gt;alert(0)&lt;/script&gt;" in card
    assert "solved" in card and "read as: <code>1+2 = 3</code>" in card and "<details>" in card
    assert turn_html(episode(True, ["correct"]), 0).count("reward +5.00") == 1
    assert episode_html(episode(False, ["unparseable", "wrong_value"]), turn=0).count("attempt ") == 1


def test_gp_vl_images_are_redrawn_from_the_task():
    record = load_eval_set(REPO / "data" / "eval" / "gp-visual-ood.jsonl")[0]
    card = episode_html(episode(False, ["wrong_value"], env_id="gp-vl", task=record["task"]))
    assert card.count("data:image/png;base64,") == 1


def test_filters_summary_and_static_export(tmp_path):
    episodes = [episode(True, ["correct"]), episode(False, ["numbers_mismatch"], split="gp-rule-ood"),
                episode(False, ["unparseable"])]
    assert len(filter_episodes(episodes, split="gp-rule-ood")) == 1
    assert len(filter_episodes(episodes, outcome="unparseable", success=False)) == 1
    assert [r["success"] for r in summary_rows(episodes)] == [True, False, False]
    page = export_html(episodes, tmp_path / "view.html", title="a <b> test")
    text = page.read_text()
    assert text.startswith("<!doctype html>") and text.count('class="sftrl-ep"') == 3 and "a &lt;b&gt; test" in text


def test_the_viewer_wires_filters_to_the_renderer():
    viewer = EpisodeViewer([episode(True, ["wrong_value", "correct"]), episode(False, ["unparseable"], split="x")])
    assert viewer.index.max == 1 and viewer.turn.max == 1
    viewer.turn.value = 1
    assert "attempt 2" in viewer.view.value
    viewer.split.value = "x"
    assert viewer.index.max == 0 and "not solved" in viewer.view.value
    viewer.outcome.value = "correct"
    assert "no episode matches" in viewer.view.value
