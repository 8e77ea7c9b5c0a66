import math

import pytest
import torch

from sftrl_kit.envs.answers import parse_answer
from sftrl_kit.train.ppo import PPOSettings, answer_token_weights, gae, group_advantages, ppo_losses


def test_gae_matches_a_hand_computed_episode():
    advantages, returns = gae([-1.0, -1.0, 5.0], [0.5, 1.0, 2.0], last_value=0.0, gamma=0.9, lam=0.95)
    # t2: 5 - 2 = 3; t1: -1 + 0.9*2 - 1 = -0.2, + 0.855*3; t0: -1 + 0.9*1 - 0.5 = -0.6, + 0.855*A1
    assert advantages == pytest.approx([-0.6 + 0.855 * 2.365, 2.365, 3.0])
    assert returns == pytest.approx([a + v for a, v in zip(advantages, [0.5, 1.0, 2.0])])


def test_gae_bootstraps_only_from_the_given_last_value():
    ended, _ = gae([1.0], [0.0], last_value=0.0, gamma=0.9, lam=0.95)
    bootstrapped, _ = gae([1.0], [0.0], last_value=2.0, gamma=0.9, lam=0.95)
    assert ended == [1.0]
    assert bootstrapped == pytest.approx([1.0 + 0.9 * 2.0])
    one_step_td, _ = gae([0.0, 1.0], [0.3, 0.6], 0.0, gamma=0.5, lam=0.0)
    assert one_step_td == pytest.approx([0.5 * 0.6 - 0.3, 1.0 - 0.6])


def test_group_advantages():
    returns, groups = [5.0, -3.0, 5.0, -1.0], [0, 0, 1, 1]
    assert group_advantages(returns, groups, "grpo") == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-5)
    assert group_advantages(returns, groups, "rloo") == pytest.approx([8.0, -8.0, 6.0, -6.0])
    assert group_advantages([2.0, 2.0], [0, 0], "grpo") == [0.0, 0.0]


def test_clipped_surrogate_and_value_loss():
    new, old = torch.tensor([0.0, math.log(1.5)]), torch.zeros(2)
    gains = ppo_losses(new, old, torch.tensor([1.0, 1.0]), clip_range=0.1)
    assert gains["policy_loss"].item() == pytest.approx(-(1.0 + 1.1) / 2)  # the 1.5 ratio is clipped to 1.1
    assert gains["clip_fraction"].item() == 0.5
    losses = ppo_losses(new, old, torch.tensor([-1.0, -1.0]), clip_range=0.1)
    assert losses["policy_loss"].item() == pytest.approx((1.0 + 1.5) / 2)  # pessimistic: unclipped
    value = ppo_losses(
        new,
        old,
        torch.ones(2),
        0.1,
        new_values=torch.tensor([1.0, 3.0]),
        old_values=torch.tensor([1.0, 1.0]),
        returns=torch.tensor([2.0, 2.0]),
        value_clip_range=0.2,
    )
    assert value["value_loss"].item() == pytest.approx(0.5)  # max(1, 0.64) and max(1, 1) halved
    assert gains["approx_kl"].item() == pytest.approx((0.5 - math.log(1.5)) / 2)


def test_answer_weights_find_the_field_in_the_text(tiny_policy):
    tokenizer = tiny_policy.tokenizer
    ids = tokenizer('Thinking first. {"formula": "1+2"}', add_special_tokens=False)["input_ids"]
    weights = answer_token_weights(tokenizer, ids, "formula", 0.5)
    first_answer = weights.index(1.0)
    assert set(weights[:first_answer]) == {0.5}
    assert set(weights[first_answer:]) == {1.0}
    assert '"formula' in tokenizer.decode(ids[: first_answer + 1]) or "formula" in tokenizer.decode(ids[first_answer:])
    assert answer_token_weights(tokenizer, ids, "formula", 1.0) == [1.0] * len(ids)
    assert answer_token_weights(tokenizer, ids, "action", 0.5) == [0.5] * len(ids)


@pytest.mark.parametrize(
    "answer",
    [
        "{'formula': '8*3'}",
        "{ formula: '8*3' }",
        "{ 'Formula ': '8*3' }",
        "Sure! ```{'formula': '8*3 = 24',}```",  # notebook 01's sloppy answer
    ],
)
def test_answer_weights_read_the_field_as_the_verifier_does(tiny_policy, answer):
    """An answer the verifier reads, quoted any way, has the same thought as the double-quoted one."""
    tokenizer = tiny_policy.tokenizer
    double = answer.replace("'", '"').replace("{ formula:", '{ "formula":')
    assert parse_answer(answer, ["formula"], ["formula"]) == parse_answer(double, ["formula"], ["formula"])

    def thought(text: str) -> str:
        ids = tokenizer("Let me think: 8 and 3 make 24. " + text, add_special_tokens=False)["input_ids"]
        weights = answer_token_weights(tokenizer, ids, "formula", 0.5)
        count = weights.count(0.5)
        assert weights == [0.5] * count + [1.0] * (len(ids) - count)
        return tokenizer.decode(ids[:count])

    assert thought(answer) == thought(double)
    assert thought(answer).startswith("Let me think")
    assert "formula" not in thought(answer).lower()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="group_size >= 2"):
        PPOSettings(advantage="grpo")
    with pytest.raises(ValueError, match="multiple of group_size"):
        PPOSettings(advantage="rloo", group_size=3, episodes_per_update=16)
    with pytest.raises(ValueError, match="micro_batch_size"):
        PPOSettings(minibatch_size=6, micro_batch_size=4)
