"""Environments, created by id: make("gp-l"), make("gp-vl", face_rule="ordinal")."""

from typing import Any

from ..config import from_dict
from .base import Env, Observation, make, register, registered, revision_text
from .general_points import GeneralPointsEnv, GPConfig
from .virl.config import VirlConfig
from .virl.env import VirlEnv


def _general_points(modality: str, env_id: str):
    def factory(**config: Any) -> GeneralPointsEnv:
        if "modality" in config:
            raise ValueError(f"{env_id}: the modality is fixed by the environment id; use gp-l or gp-vl")
        return GeneralPointsEnv(from_dict(GPConfig, {**config, "modality": modality}, where=env_id), env_id)

    return factory


def _virl(modality: str, env_id: str):
    def factory(**config: Any) -> VirlEnv:
        if "modality" in config:
            raise ValueError(f"{env_id}: the modality is fixed by the environment id; use virl-l or virl-vl")
        return VirlEnv(from_dict(VirlConfig, {**config, "modality": modality}, where=env_id), env_id)

    return factory


register("gp-l", _general_points("text", "gp-l"))
register("gp-vl", _general_points("image", "gp-vl"))
register("virl-l", _virl("text", "virl-l"))
register("virl-vl", _virl("image", "virl-vl"))

__all__ = ["Env", "Observation", "make", "register", "registered", "revision_text"]
