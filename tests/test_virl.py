import io
import json
import random

import pytest

from sftrl_kit.envs import make
from sftrl_kit.envs.virl.city import OOD_CITIES, TRAIN_CITY, generate_city, generate_route
from sftrl_kit.envs.virl.prompts import describe_landmarks, format_answer
from sftrl_kit.envs.virl.routes import (
    Route,
    RouteError,
    compass_name,
    load_routes,
    relation_of,
    turn_action,
)
from sftrl_kit.envs.virl.verifier import normalise_action

from conftest import REPO  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"


def expert_answer(env):
    decision = env.decisions[env.position]
    return format_answer(describe_landmarks(decision.landmarks), "", decision.action)


@pytest.mark.parametrize("env_id", ["virl-l", "virl-vl"])
@pytest.mark.parametrize("space", ["absolute", "relative"])
def test_expert_trajectories_score_every_step_and_reach_the_goal(env_id, space):
    env = make(env_id, action_space=space)
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(expert_answer(env))
            assert reward == 1.0 and not truncated
            steps, done = steps + 1, terminated
        assert info["success"] and steps == info["points"] == len(env.decisions)


def test_relative_actions_on_hand_made_headings():
    assert turn_action(0, 270, "relative") == "turn_direction(left)"
    assert turn_action(0, 90, "relative") == "turn_direction(right)"
    assert turn_action(315, 45, "relative") == "turn_direction(right)"
    assert turn_action(90, 45, "relative") == "turn_direction(slightly left)"
    assert turn_action(350, 40, "relative") == "turn_direction(slightly right)"  # snapped to 0 -> 45
    assert turn_action(10, 212, "absolute") == "turn_direction(southwest)"
    with pytest.raises(RouteError, match="180 degrees"):
        turn_action(0, 180, "relative")
    assert compass_name(212) == "southwest" and compass_name(359) == "north"
    assert relation_of(0, 45) == "right front" and relation_of(90, 0) == "left" and relation_of(180, 0) == "behind"


def test_real_route_files_load_with_their_milestones():
    route = load_routes(FIXTURES / "virl_route.json")[0]
    assert (route.start, route.destination, route.city) == ("Blue Bottle Coffee", "Madewell", "New York")
    assert [i.heading_in for i in route.intersections] == [30.0, 300.0]
    assert route.intersections[0].landmarks[0].name == "Aritzia" and route.intersections[0].landmarks[0].relation == "left front"
    assert [(m.name, m.relation) for m in route.intersections[1].landmarks] == [("Madewell", "right"), ("Shake Shack", "front")]
    assert route.intersections[-1].heading_out is None and route.steps_per_segment == [3, 4]
    assert [d.action for d in route.decisions("absolute")] == (
        ["turn_direction(northeast)"] + ["forward()"] * 3 + ["turn_direction(northwest)"] + ["forward()"] * 4 + ["stop()"])
    assert route.decisions("relative")[0].action == "turn_direction(right)"
    assert route.decisions("relative")[4].action == "turn_direction(left)"
    database = load_routes(FIXTURES / "virl_routes_db.json", max_straight=5)
    assert len(database) == 2 and database[1].steps_per_segment == [1, 5]  # 60 m -> 1; 1.2 km capped at 5
    assert database[1].intersections[0].landmarks == []
    assert Route.from_json(json.loads(json.dumps(route.to_json()))) == route


def test_real_routes_replay_in_the_text_env():
    route = load_routes(FIXTURES / "virl_route.json")[0]
    env = make("virl-l", action_space="relative")
    obs, _ = env.reset(options={"task": {"route": route.to_json()}})
    assert "Aritzia" in obs.text and "turn right to face northeast" in obs.text
    done = False
    while not done:
        _, reward, done, _, info = env.step(expert_answer(env))
        assert reward == 1.0
    with pytest.raises(ValueError, match="views_dir"):
        make("virl-vl").reset(options={"task": {"route": route.to_json()}})


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("milestone_info"), "missing field 'milestone_info'"),
        (lambda r: r.pop("dest_place"), "missing field 'dest_place'"),
        (lambda r: r.update(init_heading="towards the river"), "init_heading"),
        (lambda r: r.update(milestone_info="{'human_heading': '10', 'landmarks': 'a shop somewhere'}"), "landmarks"),
        (lambda r: r.update(milestone_info="no blocks at all"), "no intersection blocks"),
        (lambda r: r.update(milestone_info="{'landmarks': ''}"), "human_heading"),
    ],
)
def test_malformed_route_files_name_the_field(tmp_path, mutate, message):
    record = json.loads((FIXTURES / "virl_route.json").read_text())
    mutate(record)
    path = tmp_path / "route.json"
    path.write_text(json.dumps(record))
    with pytest.raises(RouteError, match=message):
        load_routes(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_routes(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RouteError, match="not valid JSON"):
        load_routes(tmp_path / "bad.json")


def test_same_seed_same_route_and_same_street_view_bytes():
    def first(seed):
        obs, info = make("virl-vl").reset(seed=seed)
        buffer = io.BytesIO()
        obs.images[0].save(buffer, format="PNG")
        return info["task"], buffer.getvalue()

    assert first(5) == first(5) and first(5) != first(6)
    city = generate_city(TRAIN_CITY.name, 0)
    assert generate_route(city, random.Random(1)) == generate_route(city, random.Random(1))


def test_cities_differ_and_routes_turn_at_recognisable_places():
    names = {generate_city(c.name).places[k] for c in OOD_CITIES for k in list(generate_city(c.name).places)[:3]}
    train = set(generate_city(TRAIN_CITY.name).places.values())
    assert names and not names & train
    for seed in range(20):
        route = generate_route(generate_city(), random.Random(seed), turns=3)
        assert all(node.landmarks for node in route.intersections)
        assert route.supports("relative")


def test_wrong_actions_are_not_executed_and_the_budget_is_two_per_point():
    env = make("virl-l")
    env.reset(seed=2)
    right = env.decisions[0].action
    wrong = next(a for a in ("forward()", "stop()", "turn_direction(north)") if a != right)
    _, reward, terminated, truncated, info = env.step(json.dumps({"action": wrong}))
    assert (reward, terminated, truncated, info["point"]) == (-1.0, False, False, 0)
    _, reward, terminated, truncated, info = env.step(json.dumps({"action": wrong}))
    assert (reward, truncated, info["point"]) == (-2.0, True, 0)


def test_hostile_and_off_space_answers_get_defined_outcomes():
    env = make("virl-l", action_space="relative")
    for text in ("", "{" * 10_000, "x" * 100_000, '{"action": "__import__(\\"os\\")"}', '{"action": ["left"]}'):
        env.reset(seed=1)
        _, reward, _, _, info = env.step(text)
        assert reward == -1.0 and info["verdict"]["outcome"] in ("unparseable", "invalid_action")
    env.reset(seed=1)
    _, _, _, _, info = env.step('{"action": "turn_direction(north)"}')
    assert info["verdict"]["outcome"] == "invalid_action" and info["verdict"]["other_space_used"]
    assert normalise_action(" Turn_Direction( 'North East' ) ") == "turn_direction(northeast)"
    assert normalise_action("forward") == "forward()"


def test_vl_charges_missed_landmarks():
    env = make("virl-vl")
    env.reset(seed=3)
    while not env.decisions[env.position].landmarks:
        env.step(expert_answer(env))
    decision = env.decisions[env.position]
    _, reward, _, _, info = env.step(format_answer("I see nothing special", "", decision.action))
    assert reward == 1.0 - 1.5 and info["verdict"]["landmarks_found"] is False


def test_rollouts_start_a_new_conversation_at_each_point(tiny_policy):
    from sftrl_kit.models import Generation, SamplingConfig
    from sftrl_kit.rollout import rollout

    class Expert:
        def __init__(self, env):
            self.env, self.prompts = env, []

        def respond(self, conversations, sampling, with_logprobs=True):
            self.prompts.append(len(conversations[0].messages))
            return [Generation(expert_answer(self.env), [1], [2], None)]

    env = make("virl-l")
    player = Expert(env)
    episode = rollout(player, [env], SamplingConfig(temperature=0.0), seeds=[4], progress=False)[0]
    assert episode.success and set(player.prompts) == {1}  # every point is a fresh single message
    assert all(t.outcome == "correct" for t in episode.turns)
    tiny = rollout(tiny_policy, [make("virl-l")], SamplingConfig(temperature=0.0, max_new_tokens=8), seeds=[4],
                   progress=False)[0]
    assert len(tiny.turns) == 2 and not tiny.success  # two failed attempts at the first point


def test_real_street_views_from_a_folder_replace_the_rendered_ones(tmp_path):
    from PIL import Image

    route = load_routes(FIXTURES / "virl_route.json")[0]
    folder = tmp_path / route.route_id
    folder.mkdir()
    for point in range(len(route.decisions("absolute"))):
        Image.new("RGB", (64, 64), (point * 20, 0, 0)).save(folder / f"{point:03d}.png")
    env = make("virl-vl", views_dir=str(tmp_path))
    obs, _ = env.reset(options={"task": {"route": route.to_json()}})
    assert obs.images[0].getpixel((0, 0)) == (0, 0, 0)
    obs, *_ = env.step(expert_answer(env))  # the turn keeps the agent at point 0
    obs, *_ = env.step(expert_answer(env))  # forward: point 1
    assert obs.images[0].getpixel((0, 0)) == (20, 0, 0)
    (folder / "002.png").unlink()
    with pytest.raises(FileNotFoundError, match="002.png"):
        env.step(expert_answer(env))
