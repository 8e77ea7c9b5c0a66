import io
import json
import math
import random
import re

import pytest
from conftest import REPO  # noqa: E402

from sftrl_kit.envs import make, recognised
from sftrl_kit.envs.virl.city import OOD_CITIES, TRAIN_CITY, generate_city, generate_route
from sftrl_kit.envs.virl.prompts import describe_landmarks, format_answer
from sftrl_kit.envs.virl.routes import (
    RELATIVE_TURNS,
    Route,
    RouteError,
    compass_name,
    load_routes,
    relation_of,
    relative_turn,
    turn_action,
)
from sftrl_kit.envs.virl.verifier import claimed_places, normalise_action, normalise_place

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
            assert reward == 1.0
            assert not truncated
            steps, done = steps + 1, terminated
        assert info["success"]
        assert steps == info["points"] == len(env.decisions)


def official_relative(turn: float) -> str:
    """V-IRL's thresholds, tested in the study's order, on a turn already wrapped."""
    if turn < -45:
        return "left"
    if turn > 45:
        return "right"
    return "slightly left" if -45 <= turn <= 0 else "slightly right"


def test_relative_turns_use_virls_thresholds_on_the_wrapped_turn():
    # independent wrap: the signed angle from atan2 (in (-180, 180]); 180 itself is
    # the one turn where the conventions differ, checked by hand below
    for current in range(0, 360, 5):
        for target in range(360):
            radians = math.radians(target - current)
            turn = math.degrees(math.atan2(math.sin(radians), math.cos(radians)))
            if abs(abs(turn) - 180) > 1e-6:
                assert relative_turn(current, target) == official_relative(round(turn, 6)), (current, target)
    hand = {
        (0, 259): "left",  # -101; unwrapped (the study's code) +259 would say right
        (304, 13): "right",  # +69; unwrapped -291 would say left
        (350, 10): "slightly right",
        (10, 350): "slightly left",
        (0, 180): "left",
        (180, 0): "left",
        (90, 270): "left",  # a U-turn is -180 in [-180, 180)
        (0, 45): "slightly right",
        (0, 46): "right",
        (0, 315): "slightly left",
        (0, 314): "left",
        (0, 0): "slightly left",
        (212, 212): "slightly left",
    }  # 0 is in [-45, 0], tested first
    assert {pair: relative_turn(*pair) for pair in hand} == hand
    assert {relative_turn(c, t) for c in range(0, 360, 3) for t in range(0, 360, 7)} == set(RELATIVE_TURNS.values())
    assert turn_action(0, 259, "relative") == "turn_direction(left)"
    assert turn_action(10, 212, "absolute") == "turn_direction(southwest)"


def test_compass_and_relations_break_ties_like_virl():
    # V-IRL takes the first of the nearest multiples of 45 (np.argmin); round() would not
    cases = {
        212: "southwest",
        359: "north",
        22: "north",
        23: "northeast",
        22.5: "north",
        67.5: "northeast",
        337.5: "north",
        292.5: "west",
        298: "northwest",
        13: "north",
    }
    assert {h: compass_name(h) for h in cases} == cases
    assert relation_of(0, 45) == "right front"
    assert relation_of(90, 0) == "left"
    assert relation_of(180, 0) == "behind"
    assert relation_of(0, 67.5) == "right front"
    assert relation_of(350, 10) == "front"


def fixture_blocks(path):
    """(direction name, landmark text) of every milestone block, read from the raw file text."""
    raw = json.loads(path.read_text())
    route = raw if isinstance(raw, dict) else raw[0][0]
    names = re.findall(r'"to_next_intersection_heading": "\d+ \((\w+)\)"', route["milestone_info"])
    marks = re.findall(r'"landmarks": "([^"]*)"', route["milestone_info"])
    return names, marks


def test_expert_turns_as_virl_scores_a_real_format_route():
    route = load_routes(FIXTURES / "virl_route.json")[0]
    absolute = route.decisions("absolute")
    names, _ = fixture_blocks(FIXTURES / "virl_route.json")
    # vln.py: the start action must be block 0's direction, the action at intersection i
    # (geocode_list[i - 1]) block i's
    turns = [d for d in absolute if d.action.startswith("turn_direction")]
    assert absolute[0].action == "turn_direction(west)" == f"turn_direction({names[0]})"
    assert [d.action for d in turns] == [f"turn_direction({name})" for name in names]
    assert [d.intersection for d in turns] == [None] + list(range(len(names) - 1))
    assert [d.action for d in absolute] == (
        ["turn_direction(west)", "forward()", "turn_direction(northwest)"]
        + ["forward()"] * 3
        + ["turn_direction(north)", "forward()", "stop()"]
    )
    relative = [d.action for d in route.decisions("relative") if d.action.startswith("turn")]
    assert relative == ["turn_direction(left)", "turn_direction(slightly right)", "turn_direction(right)"]
    env = make("virl-l")
    env.reset(options={"task": {"route": route.to_json()}})
    _, reward, _, _, info = env.step('{"action": "turn_direction(west)"}')  # V-IRL's right first action
    assert reward == 1.0
    assert info["verdict"]["outcome"] == "correct"


def test_the_expert_turns_even_onto_the_street_ahead(tmp_path):
    record = json.loads((FIXTURES / "virl_route.json").read_text())
    record["milestone_info"] = record["milestone_info"].replace('"259 (west)"', '"10 (north)"')
    (tmp_path / "ahead.json").write_text(json.dumps(record))
    route = load_routes(tmp_path / "ahead.json")[0]  # init_heading 0: the first street lies ahead
    assert [d.action for d in route.decisions("absolute")][:3] == [
        "turn_direction(north)",
        "forward()",
        "turn_direction(northwest)",
    ]
    assert [d.action for d in route.decisions("relative")][:3] == [
        "turn_direction(slightly right)",
        "forward()",
        "turn_direction(left)",
    ]


def test_real_route_files_load_with_their_milestones():
    route = load_routes(FIXTURES / "virl_route.json")[0]
    assert (route.start, route.destination, route.city) == (
        "Tallow Coffee Roasters",
        "Lumen Books",
        "Fixture_Melbourne_Oceania",
    )
    assert route.init_heading == 0.0
    assert route.route_id == "virl_route-0"
    assert [(i.heading_in, i.heading_out) for i in route.intersections] == [(259, 304), (304, 13), (13, None)]
    assert [i.distance_m for i in route.intersections] == [40, 131, 72]
    assert route.steps_per_segment == [1, 3, 1]
    assert [[(m.name, m.relation) for m in i.landmarks] for i in route.intersections] == [
        [("Ferro Bakery", "left front")],
        [],
        [("Lumen Books", "right")],
    ]
    assert Route.from_json(json.loads(json.dumps(route.to_json()))) == route


def test_the_destination_landmark_names_the_place(tmp_path):
    _, marks = fixture_blocks(FIXTURES / "virl_routes_db.json")
    assert marks[-1] == "The destination Lumen Books is on your right"
    second = load_routes(FIXTURES / "virl_routes_db.json")[1]
    assert second.intersections[-1].landmarks[0].name == second.destination == "St. Ives Osteria"
    assert second.intersections[-1].landmarks[0].relation == "left behind"
    record = json.loads((FIXTURES / "virl_route.json").read_text())
    record["milestone_info"] = record["milestone_info"].replace(
        "The destination Lumen Books is on your right", "The destination The Destination Bar is on your left"
    )
    (tmp_path / "bar.json").write_text(json.dumps(record))
    assert load_routes(tmp_path / "bar.json")[0].intersections[-1].landmarks[0].name == "The Destination Bar"


def test_route_databases_load_in_every_layout(tmp_path):
    database = json.loads((FIXTURES / "virl_routes_db.json").read_text())
    assert isinstance(database[0], list)
    assert database[1] == 7
    routes = load_routes(FIXTURES / "virl_routes_db.json")
    (tmp_path / "plain.json").write_text(json.dumps(database[0]))
    (tmp_path / "one.json").write_text(json.dumps(database[0][1]))
    plain, one = load_routes(tmp_path / "plain.json"), load_routes(tmp_path / "one.json")
    assert [r.destination for r in routes] == [r.destination for r in plain] == ["Lumen Books", "St. Ives Osteria"]
    assert [r.intersections for r in routes] == [r.intersections for r in plain]
    assert one[0].intersections == routes[1].intersections
    assert one[0].route_id == "one-0"
    second = routes[1]  # a U-turn at the start, 612 m capped at max_straight, no landmark at the corner
    assert second.steps_per_segment == [5, 1]
    assert second.intersections[0].landmarks == []
    assert [d.action for d in second.decisions("relative") if d.action.startswith("turn")] == [
        "turn_direction(left)",
        "turn_direction(left)",
    ]
    assert load_routes(FIXTURES / "virl_routes_db.json", max_straight=3)[1].steps_per_segment == [3, 1]


@pytest.mark.parametrize(
    "content, message",
    [
        ([], "got an empty list"),
        ([1, 2], r"got a list of 2 items \(int\)"),
        ([[], 4], "holds no routes"),
        ("routes", "got a JSON str"),
        ({"routes": []}, "missing field 'start_place'"),
    ],
)
def test_unknown_file_layouts_name_the_file_and_the_layouts(tmp_path, content, message):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(content))
    with pytest.raises(RouteError, match=message) as error:
        load_routes(path)
    assert str(path) in str(error.value)
    if "got" in message:
        assert "[routes, dest_idx]" in str(error.value)


def test_real_routes_replay_in_the_text_env():
    route = load_routes(FIXTURES / "virl_route.json")[0]
    env = make("virl-l", action_space="relative")
    obs, _ = env.reset(options={"task": {"route": route.to_json()}})
    assert "Ferro Bakery" in obs.text
    assert "turn left so that you face west" in obs.text
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
        (
            lambda r: r.update(milestone_info="{'to_next_intersection_heading': '10 (north)', 'landmarks': 'a shop'}"),
            "landmarks",
        ),
        (lambda r: r.update(milestone_info="no blocks at all"), "no intersection blocks"),
        (lambda r: r.update(milestone_info="{'landmarks': '', 'human_heading': '0'}"), "to_next_intersection_heading"),
        (
            lambda r: r.update(milestone_info=r["milestone_info"].replace('"259 (west)"', '"259 (north)"')),
            "names north but 259 degrees is west",
        ),
        (
            lambda r: r.update(milestone_info=r["milestone_info"].replace('idx": "1"', 'idx": "0"')),
            r"intersection_idx: expected 1",
        ),
        (lambda r: r["route_results"]["geocode_list"].pop(), "2 points for 3 milestone blocks"),
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

    assert first(5) == first(5)
    assert first(5) != first(6)
    city = generate_city(TRAIN_CITY.name, 0)
    assert generate_route(city, random.Random(1)) == generate_route(city, random.Random(1))


def test_cities_differ_and_routes_turn_at_recognisable_places():
    names = {generate_city(c.name).places[k] for c in OOD_CITIES for k in list(generate_city(c.name).places)[:3]}
    train = set(generate_city(TRAIN_CITY.name).places.values())
    assert names
    assert not names & train
    for seed in range(20):
        route = generate_route(generate_city(), random.Random(seed), turns=3)
        assert all(node.landmarks for node in route.intersections)
        assert all(
            d.action.removeprefix("turn_direction(").rstrip(")") in RELATIVE_TURNS.values()
            for d in route.decisions("relative")
            if d.action.startswith("turn")
        )


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
        assert reward == -1.0
        assert info["verdict"]["outcome"] in ("unparseable", "invalid_action")
        assert not info["verdict"]["other_rule_used"]  # an action of neither space
    env.reset(seed=1)
    _, _, _, _, info = env.step('{"action": "turn_direction(north)"}')
    assert info["verdict"]["outcome"] == "invalid_action"
    assert info["verdict"]["other_rule_used"]  # the trained (absolute) space under the relative one
    absolute = make("virl-l", action_space="absolute")
    absolute.reset(seed=1)
    _, _, _, _, info = absolute.step('{"action": "turn_direction(slightly left)"}')
    assert info["verdict"]["outcome"] == "invalid_action"
    assert info["verdict"]["other_rule_used"]  # the relative space under the absolute one
    assert normalise_action(" Turn_Direction( 'North East' ) ") == "turn_direction(northeast)"
    assert normalise_action("forward") == "forward()"


def test_vl_charges_missed_landmarks():
    env = make("virl-vl")
    env.reset(seed=3)
    while not env.decisions[env.position].landmarks:
        env.step(expert_answer(env))
    decision = env.decisions[env.position]
    _, reward, _, _, info = env.step(format_answer("I see nothing special", "", decision.action))
    assert reward == 1.0 - 1.5
    assert info["verdict"]["recognition_correct"] is False


def vl_env_at(wanted):
    """A V-IRL-VL env walked by the expert to the first point where `wanted(decision)`."""
    env = make("virl-vl")
    for seed in range(100):
        env.reset(seed=seed)
        index = next((k for k, decision in enumerate(env.decisions) if wanted(decision)), None)
        if index is not None:
            for _ in range(index):
                env.step(expert_answer(env))
            return env, env.decisions[index]
    raise AssertionError("no generated route has such a point")


def test_vl_recognition_needs_exactly_the_places_in_view():
    env, decision = vl_env_at(lambda d: len(d.landmarks) >= 2)
    in_view = [m.name for m in decision.landmarks]
    every_place = sorted(set(generate_city(env.route.city).places.values()))
    answers = {
        describe_landmarks(decision.landmarks): True,
        "; ".join(f"{name.upper()}. is to the {m}" for name, m in zip(reversed(in_view), ("east", "north"))): True,
        "; ".join(every_place): False,  # repeating every place name
        " ".join(every_place): False,
        "; ".join(in_view[:-1]): False,  # one place in view left out
        "; ".join(in_view + ["Nowhere Deli"]): False,  # a place claimed that is not in view
        "No named places in view.": False,
    }
    for observation, expected in answers.items():
        env, decision = vl_env_at(lambda d: len(d.landmarks) >= 2)
        _, reward, _, _, info = env.step(format_answer(observation, "", decision.action))
        assert info["verdict"]["recognition_correct"] is expected, observation
        assert reward == (1.0 if expected else 1.0 - 1.5)
    assert claimed_places(["St. Ives  Osteria is on your left", "No named places in view"]) == {"st ives osteria"}
    assert claimed_places("No named places in view.") == claimed_places(None) == set()


def test_vl_recognition_where_no_place_is_in_view():
    for observation, expected in (("No named places in view.", True), ("Bleecker Books is on your left.", False)):
        env, decision = vl_env_at(lambda d: not d.landmarks)
        _, reward, _, _, info = env.step(format_answer(observation, "", decision.action))
        assert info["verdict"]["recognition_correct"] is expected
        assert reward == (1.0 if expected else -0.5)
    text = make("virl-l")
    text.reset(seed=3)
    assert text.step(format_answer("", "", text.decisions[0].action))[4]["verdict"]["recognition_correct"] is None


def two_places(decision) -> bool:
    return len(decision.landmarks) >= 2


def test_recognised_reads_the_places_a_virl_verdict_records():
    env, decision = vl_env_at(two_places)
    verdict = env.step(format_answer(describe_landmarks(decision.landmarks), "", decision.action))[4]["verdict"]
    assert recognised(verdict) == sorted(normalise_place(m.name) for m in decision.landmarks)
    env, decision = vl_env_at(two_places)
    verdict = env.step(format_answer("No named places in view.", "", decision.action))[4]["verdict"]
    assert (recognised(verdict), verdict["recognition_correct"]) == ([], False)  # a claim: nothing in view
    env, decision = vl_env_at(two_places)
    verdict = env.step("no answer")[4]["verdict"]
    assert (recognised(verdict), verdict["recognition_correct"]) == (None, False)  # unreadable: named nothing
    text = make("virl-l")
    text.reset(seed=3)
    assert recognised(text.step(format_answer("", "", text.decisions[0].action))[4]["verdict"]) is None


def test_vl_recognition_reaches_evaluations_recognition_accuracy():
    from sftrl_kit.evaluation import episode_metrics
    from sftrl_kit.models import Generation, SamplingConfig
    from sftrl_kit.rollout import rollout

    class Player:
        def __init__(self, env, observe):
            self.env, self.observe = env, observe

        def respond(self, conversations, sampling, with_logprobs=True):
            decision = self.env.decisions[self.env.position]
            return [Generation(format_answer(self.observe(decision), "", decision.action), [1], [2], None)]

    every_place = "; ".join(sorted(set(generate_city(TRAIN_CITY.name).places.values())))
    accuracy = {}
    observers = {"exact": lambda d: describe_landmarks(d.landmarks), "everything": lambda d: every_place}
    for name, observe in observers.items():
        env = make("virl-vl")
        episodes = rollout(Player(env, observe), [env], SamplingConfig(temperature=0.0), seeds=[4], progress=False)
        accuracy[name] = episode_metrics(episodes)["recognition_accuracy"]
    assert accuracy["exact"]["value"] == 1.0
    assert accuracy["exact"]["trials"] > 0
    assert accuracy["everything"]["value"] == 0.0


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
    assert episode.success
    assert set(player.prompts) == {1}
    assert all(t.outcome == "correct" for t in episode.turns)
    tiny = rollout(
        tiny_policy, [make("virl-l")], SamplingConfig(temperature=0.0, max_new_tokens=8), seeds=[4], progress=False
    )[0]
    assert len(tiny.turns) == 2
    assert not tiny.success


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
    obs, _, _, _, info = env.step(expert_answer(env))  # the turn keeps the agent at point 0
    assert info["verdict"]["recognition_correct"] is None  # a route file says what is in view only at intersections
    obs, _, _, _, info = env.step(expert_answer(env))  # forward: point 1
    assert obs.images[0].getpixel((0, 0)) == (20, 0, 0)
    assert info["verdict"]["recognition_correct"] is None
    (folder / "002.png").unlink()
    _, _, _, _, info = env.step(expert_answer(env))  # the turn at the first intersection: checked
    assert info["verdict"]["recognition_correct"] is True
    with pytest.raises(FileNotFoundError, match="002.png"):
        env.step(expert_answer(env))
