"""A scripted GP-L player for tests: reads the cards and rule from the prompt and
answers right or wrong by a fixed script, so the true rates are known in advance."""

from __future__ import annotations

import json
import re

from sftrl_kit.envs.general_points import card_value, solve
from sftrl_kit.models import Generation


class ScriptedResponder:
    def __init__(self, correct_on_attempt):
        """correct_on_attempt(episode_number, attempt) -> bool; episodes are numbered in
        the order their first prompt arrives, attempts from 1."""
        self.correct_on_attempt = correct_on_attempt
        self.episode_of_prompt: dict[str, int] = {}
        self.name = "scripted"

    def respond(self, conversations, sampling, with_logprobs=True):
        out = []
        for conversation in conversations:
            prompt = conversation.messages[0]["content"]
            episode = self.episode_of_prompt.setdefault(prompt, len(self.episode_of_prompt))
            attempt = sum(m["role"] == "assistant" for m in conversation.messages) + 1
            text = self.answer(prompt) if self.correct_on_attempt(episode, attempt) else "I am not sure."
            out.append(Generation(text, [1, 2, 3], [4, 5], [-0.1, -0.2] if with_logprobs else None))
        return out

    @staticmethod
    def answer(prompt: str) -> str:
        ranks = re.search(r"Cards: (.*)", prompt).group(1).split(", ")
        rule = "ordinal" if "J counts as 11" in prompt else "ten"
        target = int(re.search(r"equals (\d+)", prompt).group(1))
        values = [card_value(rank, rule) for rank in ranks]
        return json.dumps({"cards": ranks, "number": values, "formula": solve(values, target)[0]})
