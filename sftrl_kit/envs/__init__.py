"""Environments, created by id: make("gp-l"), make("gp-vl", face_rule="ordinal")."""

from typing import Any

from ..config import from_dict
from .base import Env, Observation, make, recognised, register, registered, revision_text
from .general_points import GeneralPointsEnv, GPConfig
from .virl.config import VirlConfig
from .virl.env import VirlEnv


def _factory(env_class, config_class, modality: str, env_id: str, **defaults: Any):
    """make(env_id, **fields): the config from keyword fields over the id's `defaults`,
    the modality from the id."""

    def factory(**config: Any):
        if "modality" in config:
            raise ValueError(f"{env_id}: the modality is fixed by the environment id")
        return env_class(from_dict(config_class, {**defaults, **config, "modality": modality}, where=env_id), env_id)

    return factory


register("gp-l", _factory(GeneralPointsEnv, GPConfig, "text", "gp-l"))
register("gp3-l", _factory(GeneralPointsEnv, GPConfig, "text", "gp3-l", num_cards=3, target=12))  # easier: tasks.py
register("gp-vl", _factory(GeneralPointsEnv, GPConfig, "image", "gp-vl"))
register("virl-l", _factory(VirlEnv, VirlConfig, "text", "virl-l"))
register("virl-vl", _factory(VirlEnv, VirlConfig, "image", "virl-vl"))

__all__ = ["Env", "Observation", "make", "recognised", "register", "registered", "revision_text"]
