import json

from conftest import REPO  # noqa: E402

from sftrl_kit.data import load_eval_set
from sftrl_kit.envs.general_points import solve
from sftrl_kit.rewards import verifier_reward


def test_verifier_as_a_trl_reward_function():
    record = load_eval_set(REPO / "data" / "eval" / "gp-rule-ood.jsonl")[0]
    reward = verifier_reward("gp-l", **record["env_config"])
    from sftrl_kit.envs import make

    _, info = make("gp-l", **record["env_config"]).reset(options={"task": record["task"]})
    right = json.dumps({"formula": solve(info["values"])[0]})
    conversational = [[{"role": "assistant", "content": right}], [{"role": "assistant", "content": "no idea"}]]
    assert reward(conversational, task=[record["task"]] * 2) == [5.0, -3.0]
    assert reward([right], task=[record["task"]]) == [5.0]
    assert reward.__name__ == "gp-l_verifier"
