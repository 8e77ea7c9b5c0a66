"""The run's prompts, measured on its environment: the longest prompt of a rollout in the
model's tokens, images per prompt and the vision tower's tokens per image (`rollout_prompt`,
`RolloutPrompt`), and an SFT record's images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..models.loading import resolve_model
from .shape import is_vision, model_config_dict, shape_names


@dataclass(frozen=True)
class RolloutPrompt:
    """What one rollout's prompts take: the longest prompt in tokens (a conversation's
    last turn, every earlier response at max_new_tokens), images per prompt and the
    vision tower's tokens per image."""

    longest_prompt_tokens: int
    images_per_prompt: int
    vision_tokens_per_image: int | None
    note: str = ""

    def fields(self) -> dict[str, Any]:
        """The PlanRequest fields this fills."""
        return {
            "prompt_tokens": self.longest_prompt_tokens,
            "images_per_prompt": self.images_per_prompt,
            "vision_tokens_per_image": self.vision_tokens_per_image,
        }

    def notes(self) -> tuple[str, ...]:
        return (self.note,) if self.note else ()


def rollout_prompt(
    model: str | Path,
    env_id: str,
    env_config: dict[str, Any],
    max_attempts: int | None,
    max_new_tokens: int,
    seeds: tuple[int, ...] = (0, 1, 2, 3),
) -> RolloutPrompt:
    """The longest prompt of an episode over a few deals, in the model's tokens (image
    tokens expanded by its processor, through `Policy.prompt_token_ids`, the one path every
    engine uses). Each deal is played to its verification budget with empty answers; every
    earlier response in a conversation counts max_new_tokens. A model shape has no tokenizer:
    the default model's (SmolLM2) counts its text, and the note says so."""
    from ..data import training_deal_seed
    from ..envs import make
    from ..episodes import chat_messages
    from ..models import Conversation

    policy, note = _prompt_counter(model)
    config = dict(env_config)
    if max_attempts is not None:
        config["max_attempts"] = max_attempts
    longest, images = 0, 0
    encoder_tokens = None
    for seed in seeds:
        env = make(env_id, **config)
        observation, _ = env.reset(seed=training_deal_seed(0, seed))
        exchanges: list[tuple[str, str]] = []
        for _ in range(64):  # a budget is far below this; an environment that never ends is refused below
            conversation = Conversation(chat_messages(observation, exchanges), observation.images)
            tokens = len(policy.prompt_token_ids([conversation])[0]) + len(exchanges) * max_new_tokens
            longest, images = max(longest, tokens), max(images, len(observation.images))
            if observation.images and encoder_tokens is None:
                patch = model_config_dict(model).get("vision_config", {}).get("patch_size")
                encoder_tokens = _encoder_tokens_per_image(policy, observation.images[0], patch)
            feedback, _, terminated, truncated, info = env.step("")
            if terminated or truncated:
                break
            if info.get("new_prompt"):
                observation, exchanges = feedback, []
            else:
                exchanges.append(("", feedback.text))
        else:
            raise ValueError(f"{env_id}: an episode of empty answers did not end in 64 turns; give --prompt-tokens")
    return RolloutPrompt(longest, images, encoder_tokens, note)


def _prompt_counter(model: str | Path):
    """A Policy without a network (its tokenizer or processor only), and a note when the
    model has none: a shape's text is counted with SmolLM2's tokenizer, and a VLM shape's
    image with one <image> token, which is what Mllama's text holds per image (its images
    enter through cross-attention); other VLM shapes' image tokens cannot be counted."""
    from transformers import AutoProcessor, AutoTokenizer

    from ..models import Policy
    from ..models.builtin import IMAGE_TOKEN, VISION_CHAT_TEMPLATE, default_tokenizer_dir

    if str(model) not in shape_names() and str(model) != "default":
        folder = resolve_model(model)
        if is_vision(model):
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            return Policy(None, processor.tokenizer, processor), ""
        return Policy(None, AutoTokenizer.from_pretrained(folder, local_files_only=True)), ""
    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_dir(), local_files_only=True)
    if str(model) == "default":
        return Policy(None, tokenizer), ""
    note = f"{model} is a shape without a tokenizer: SmolLM2's counts its text"
    if is_vision(model):
        model_type = model_config_dict(model).get("model_type")
        if model_type != "mllama":
            raise ValueError(
                f"{model} is a {model_type} vision-language shape without a processor: its image tokens cannot be "
                "counted; plan with the model's folder, or give the longest prompt (--prompt-tokens)"
            )
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        tokenizer.chat_template = VISION_CHAT_TEMPLATE
        note += " and one token stands for each image, as in Mllama's text"
    return Policy(None, tokenizer), note


def _encoder_tokens_per_image(policy, image, patch_size: int | None) -> int | None:
    """The vision tower's tokens for one image as the processor prepares it: Qwen-VL's
    patch grid (t x h x w), or tiles x (side / patch)^2 for tiled towers (Idefics3); None
    without a processor (a shape: Mllama's come from its config)."""
    processor = policy.processor
    if processor is None:
        return None
    pixels = processor.image_processor([[image]], return_tensors="pt")
    if "image_grid_thw" in pixels:
        return int(pixels["image_grid_thw"].prod(-1).sum())
    if not patch_size:
        return None
    values = pixels["pixel_values"]
    tiles = values.numel() // (values.shape[-3] * values.shape[-2] * values.shape[-1])
    return tiles * (values.shape[-2] // patch_size) * (values.shape[-1] // patch_size)


def _sft_images(model: str | Path, vision: bool) -> RolloutPrompt:
    """An SFT record's images: one per record for a VLM (the kit's GP-VL and V-IRL-VL records
    show one per prompt), its vision-tower tokens measured on a GP-VL deal."""
    if not vision:
        return RolloutPrompt(0, 0, None)
    from ..data import training_config

    prompt = rollout_prompt(model, "gp-vl", training_config("gp-vl"), 1, 0)
    return replace(prompt, longest_prompt_tokens=0, note="one image per SFT record, its tokens as a GP-VL card image's")
