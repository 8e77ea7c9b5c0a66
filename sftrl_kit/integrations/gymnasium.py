"""The kit's environments registered with gymnasium.

    import gymnasium as gym
    import sftrl_kit.integrations.gymnasium  # registers the ids below

    env = gym.make("sftrl/GeneralPoints-v0", face_rule="ordinal")
    observation, info = env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step('{"formula": "..."}')

or in one line, `gym.make("sftrl_kit.integrations.gymnasium:sftrl/GeneralPoints-v0")`.

| id                               | kit env | observation                                   |
|----------------------------------|---------|-----------------------------------------------|
| sftrl/GeneralPoints-v0           | gp-l    | the prompt's text                             |
| sftrl/GeneralPoints3-v0          | gp3-l   | the prompt's text (3 cards, target 12)        |
| sftrl/GeneralPointsVision-v0     | gp-vl   | {"text": ..., "images": (HxWx3 uint8, ...)}   |
| sftrl/VIRL-v0                    | virl-l  | the prompt's text                             |
| sftrl/VIRLVision-v0              | virl-vl | {"text": ..., "images": (HxWx3 uint8, ...)}   |

Keyword arguments of `gym.make` are the environment's config fields (GPConfig,
VirlConfig); without any, the environment plays its trained rule
(`data.training_config`). The action is the model's whole answer as text. Rewards,
`terminated` (solved), `truncated` (verification budget spent) and `info` are the kit
environment's own (`envs.base.Env` documents every key). No TimeLimit wrapper is added:
the verification budget ends every episode.

Spaces: gymnasium's `Text` needs a character set. Observations and actions use
`CHARSET`: printable ASCII, Latin-1 and Latin Extended-A letters and common typographic
punctuation; the kit's prompts and feedback are printable ASCII. A VL observation's
`images` is a `Sequence` of RGB images: one with a task's prompt, none with the
verifier's feedback after a wrong answer (the revision turn is text only).
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from ..data import training_config
from ..envs import make
from ..envs.base import Observation

CHARSET = "".join(
    sorted(
        set(string.printable)
        | {chr(code) for code in range(0xA0, 0x180)}  # Latin-1 Supplement, Latin Extended-A
        | set("\u2013\u2014\u2018\u2019\u201c\u201d\u2026\u2022\u00b7\u2212\u00d7\u00f7")
    )
)
MAX_TEXT = 16_384
"""longest observation or action, in characters (the kit's prompts are under 1,600)"""
IMAGE_SIZE = (224, 224)
"""height and width of the VL variants' images (the kit renders every card table and street view at this size)"""

ENVIRONMENTS = {
    "sftrl/GeneralPoints-v0": "gp-l",
    "sftrl/GeneralPoints3-v0": "gp3-l",
    "sftrl/GeneralPointsVision-v0": "gp-vl",
    "sftrl/VIRL-v0": "virl-l",
    "sftrl/VIRLVision-v0": "virl-vl",
}


class KitEnv(gymnasium.Env):
    """A kit environment (`envs.make(env_id, **config)`) behind gymnasium.Env.

    The observation is the text of the kit's `Observation`, or for the VL variants
    {"text": str, "images": tuple of HxWx3 uint8 arrays}. `reset(seed=s)` seeds both
    gymnasium's generator and the kit environment's, so a seed gives the same deal or
    route every time; `options={"task": info["task"]}` replays a task.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}  # a turn-based text task: the fps is nominal

    def __init__(self, env_id: str, render_mode: str | None = None, **config: Any) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.env = make(env_id, **{**training_config(env_id), **config})
        self.render_mode = render_mode
        self.vision = getattr(self.env.config, "modality", "text") == "image"
        text = spaces.Text(max_length=MAX_TEXT, min_length=0, charset=CHARSET)
        self.action_space = spaces.Text(max_length=MAX_TEXT, min_length=0, charset=CHARSET)
        if self.vision:
            image = spaces.Box(0, 255, shape=(*IMAGE_SIZE, 3), dtype=np.uint8)
            self.observation_space = spaces.Dict({"text": text, "images": spaces.Sequence(image)})
        else:
            self.observation_space = text
        self._last_text = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        observation, info = self.env.reset(seed=seed, options=options)
        return self._observe(observation), info

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"an action is the answer's text (str), got {type(action).__name__}")
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(observation), float(reward), terminated, truncated, info

    def render(self) -> str | None:
        """'ansi': the text of the last observation."""
        return self._last_text if self.render_mode == "ansi" else None

    def _observe(self, observation: Observation):
        self._last_text = observation.text
        if not self.vision:
            return observation.text
        images = tuple(np.asarray(image.convert("RGB"), dtype=np.uint8) for image in observation.images)
        for array in images:
            if array.shape != (*IMAGE_SIZE, 3):
                raise ValueError(f"{self.env.env_id} drew a {array.shape} image; the space holds {IMAGE_SIZE}")
        return {"text": observation.text, "images": images}


def register_all() -> None:
    """Register every id of ENVIRONMENTS (again is a no-op)."""
    for gym_id, env_id in ENVIRONMENTS.items():
        if gym_id not in gymnasium.registry:
            gymnasium.register(id=gym_id, entry_point=KitEnv, kwargs={"env_id": env_id}, disable_env_checker=False)


register_all()
