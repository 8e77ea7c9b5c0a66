import pytest
from PIL import Image

from sftrl_kit.envs import Observation
from sftrl_kit.episodes import Episode, Turn, chat_messages, read_episodes, read_jsonl, write_episodes


def test_text_conversation_uses_string_contents():
    messages = chat_messages(Observation("prompt"), [("a1", "fix it"), ("a2", "again")], final_response="a3")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages] == ["prompt", "a1", "fix it", "a2", "again", "a3"]


def test_image_conversation_uses_content_parts_with_one_placeholder_per_image():
    obs = Observation("prompt", images=[Image.new("RGB", (8, 8))])
    messages = chat_messages(obs, [("a1", "fix it")])
    assert messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "prompt"}]
    assert messages[1]["content"] == [{"type": "text", "text": "a1"}]
    assert messages[-1]["role"] == "user"


def test_episodes_round_trip_through_jsonl(tmp_path):
    episode = Episode(
        env_id="gp-l",
        env_config={"face_rule": "ten"},
        task={"hand": ["QS", "3C", "8S", "AC"], "image_seed": 5},
        prompt="prompt",
        turns=[
            Turn("a1", -3.0, "unparseable", "fix", {"outcome": "unparseable"}, [1, 2], [3], [-0.5]),
            Turn("a2", 5.0, "correct", "ok"),
        ],
        success=True,
        split="gp-id",
        seed=10_000,
        sampling={"temperature": 0.0},
        images=[Image.new("RGB", (4, 4))],
    )
    path = tmp_path / "episodes.jsonl"
    write_episodes(path, [episode, episode])
    loaded = read_episodes(path)
    assert loaded == [episode, episode]
    assert loaded[0].images == []
    assert loaded[0].total_reward == 2.0
    assert not list(tmp_path.glob("*.partial"))


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        Episode.from_json({"env_id": "gp-l", "env_config": {}, "task": {}, "prompt": "", "extra": 1})
