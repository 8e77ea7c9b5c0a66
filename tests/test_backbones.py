"""Any backbone a researcher brings: a tiny random model of each architecture, built from
config (nothing is downloaded) with the default model's tokenizer and a chat template,
goes through the kit: load_policy -> a multi-turn rollout -> one SFT step -> one PPO
update with the value head -> save and reload.

The central check is numerical: the kit's per-token log-probs of responses, over a
left-padded prompt + response batch (as rollouts and the PPO learner compute them), equal
those of a plain, unpadded forward pass of the model on the processor's own encoding of
prompt + response; the value head's input is the hidden state of the last prompt token
of that pass; a prompt holds as many image tokens as the model expects; and the images
change the log-probs (they are not dropped).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sftrl_kit import run_folder
from sftrl_kit.data import expert_records, write_sft_dataset
from sftrl_kit.envs import make
from sftrl_kit.episodes import chat_messages
from sftrl_kit.models import (
    VALUE_HEAD_FILE,
    SamplingConfig,
    load_policy,
    pack_prompt_responses,
    response_token_logprobs,
)
from sftrl_kit.models.builtin import IMAGE_TOKEN, VISION_CHAT_TEMPLATE, build_tiny_vision_model, default_tokenizer_dir
from sftrl_kit.rollout import rollout
from sftrl_kit.train.ppo import PPOSettings, train_ppo
from sftrl_kit.train.sft import SFTSettings, train_sft

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_tokenizer_dir(), local_files_only=True)


def _text_config(tokenizer, **extra) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        initializer_range=0.3,  # peaked logits: a wrong position or a dropped image shows
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _save(folder: Path, model, processor) -> None:
    """The model and its tokenizer or processor; generation stops at the end of a turn."""
    model.generation_config.eos_token_id = getattr(processor, "tokenizer", processor).eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _text_model(config_name: str, model_name: str, **extra) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        import transformers

        tokenizer = _tokenizer()
        torch.manual_seed(0)
        config = getattr(transformers, config_name)(**_text_config(tokenizer, **extra))
        _save(folder, getattr(transformers, model_name)(config), tokenizer)

    return build


def _template(image_text: str) -> str:
    """The kit's vision chat template with the architecture's own image placeholder."""
    return VISION_CHAT_TEMPLATE.replace(f"'{IMAGE_TOKEN}'", f"'{image_text}'")


def _llava(folder: Path) -> None:
    build_tiny_vision_model(folder)  # the kit's own tiny-vl: SigLIP tower, 16 image tokens


def _idefics3(folder: Path) -> None:
    """SmolVLM's layout, with image splitting: a 224-pixel image is resized to 128 pixels
    and split into 2 x 2 tiles of 64 plus the whole image, 4 tokens each."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3VisionConfig
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    images = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 128}, max_image_size={"longest_edge": 64}
    )
    processor = Idefics3Processor(image_processor=images, tokenizer=_tokenizer(), image_seq_len=4)
    processor.chat_template = _template("<image>")
    tokenizer = processor.tokenizer
    vision = Idefics3VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=_text_config(tokenizer),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    _save(folder, Idefics3ForConditionalGeneration(config), processor)


def _qwen_processor_class(name: str):
    """transformers' Qwen-VL processor class. Without torchvision, transformers cannot
    build it (its video processor needs torchvision): then a subclass without the video
    processor, which the kit never uses, registered so that AutoProcessor loads it back."""
    import transformers

    processor_class = getattr(transformers, name)
    if HAS_TORCHVISION:
        return processor_class

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    image_only = type(f"ImageOnly{name}", (processor_class,), {"__init__": __init__})
    config_class = getattr(transformers, name.replace("Processor", "Config"))
    transformers.AutoProcessor.register(config_class, image_only, exist_ok=True)
    return image_only


def _qwen_vl(version: str) -> Callable[[Path], None]:
    """Qwen2-VL or Qwen2.5-VL: a 224-pixel image is resized to 112 x 112 (max_pixels),
    8 x 8 patches of 14, merged 2 x 2 into 16 image tokens with 3-D (M-RoPE) positions."""

    def build(folder: Path) -> None:
        import transformers
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

        prefix = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL"}[version]
        tokenizer = _tokenizer()
        marks = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
        tokenizer.add_special_tokens({"additional_special_tokens": marks})
        start, image, end, video = tokenizer.convert_tokens_to_ids(marks)
        # head_dim 32: the rotary half-dimensions split 4 (time) + 6 (height) + 6 (width)
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
        vision = dict(num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        if version == "2":
            vision.update(depth=1, embed_dim=32, hidden_size=64)
        else:  # window attention in the first block, full attention in the second
            vision.update(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64)
            vision.update(window_size=56, fullatt_block_indexes=[1])
        config = getattr(transformers, f"{prefix}Config")(
            text_config=_text_config(tokenizer, rope_parameters=rope),
            vision_config=vision,
            image_token_id=image,
            video_token_id=video,
            vision_start_token_id=start,
            vision_end_token_id=end,
        )
        images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
        processor = _qwen_processor_class(f"{prefix}Processor")(
            image_processor=images,
            tokenizer=tokenizer,
            chat_template=_template("<|vision_start|><|image_pad|><|vision_end|>"),
        )
        torch.manual_seed(0)
        _save(folder, getattr(transformers, f"{prefix}ForConditionalGeneration")(config), processor)

    return build


def _mllama(folder: Path) -> None:
    """Llama-3.2-Vision's layout: one <|image|> token; the language model cross-attends
    (layer 1) to the image's tiles (up to 2 of 28 pixels, 4 patches + 1 each), with
    aspect-ratio ids. The gates, zero at initialisation (images would not matter), open."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama import MllamaImageProcessorPil

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        vision_output_dim=64,  # hidden_size x (1 + len(intermediate_layers_indices))
        intermediate_layers_indices=[0],
        image_size=28,
        patch_size=14,
        max_num_tiles=2,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    config = MllamaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer, cross_attention_layers=[1]),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "gate" in name:
                parameter.fill_(1.0)
    images = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=2)
    _save(
        folder,
        model,
        MllamaProcessor(image_processor=images, tokenizer=tokenizer, chat_template=_template("<|image|>")),
    )


@dataclass(frozen=True)
class Backbone:
    build: Callable[[Path], None]
    image_tokens: int = 0
    """image tokens in a prompt per gp-vl image (224 pixels); 0 for a text model"""

    @property
    def env_id(self) -> str:
        return "gp-vl" if self.image_tokens else "gp-l"


BACKBONES = {
    "llama": Backbone(_text_model("LlamaConfig", "LlamaForCausalLM")),
    "qwen2": Backbone(_text_model("Qwen2Config", "Qwen2ForCausalLM")),
    "qwen3": Backbone(_text_model("Qwen3Config", "Qwen3ForCausalLM", head_dim=32)),
    "gemma2": Backbone(_text_model("Gemma2Config", "Gemma2ForCausalLM", head_dim=32, sliding_window=16)),
    "llava": Backbone(_llava, image_tokens=16),
    "idefics3": Backbone(_idefics3, image_tokens=5 * 4),
    "qwen2_vl": Backbone(_qwen_vl("2"), image_tokens=16),
    "qwen2_5_vl": Backbone(_qwen_vl("2.5"), image_tokens=16),
    "mllama": Backbone(_mllama, image_tokens=1),
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def backbone(request, tmp_path_factory) -> tuple[Backbone, Path]:
    """(its spec, its model folder), built once per module."""
    spec = BACKBONES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    spec.build(folder)
    return spec, folder


@dataclass
class Reference:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: torch.Tensor
    last_prompt_hidden: torch.Tensor


@torch.no_grad()
def _reference(policy, messages, images, answer: str) -> Reference:
    """One unpadded row through the plain model, on the processor's own encoding of the
    prompt + answer text (its image expansion, positions, masks)."""
    prompt = policy.prompt_text(messages)

    def encode(text):
        if policy.is_vision:
            return policy.processor(text=[text], images=[images], return_tensors="pt")
        return policy.tokenizer([text], return_tensors="pt", add_special_tokens=False)

    full, prompt_ids = encode(prompt + answer), encode(prompt)["input_ids"][0].tolist()
    ids = full["input_ids"][0]
    n = len(prompt_ids)
    assert ids[:n].tolist() == prompt_ids
    out = policy.model(**full, output_hidden_states=True)
    logprobs = out.logits[0, n - 1 : -1].float().log_softmax(-1).gather(-1, ids[n:, None]).squeeze(-1)
    return Reference(prompt_ids, ids[n:].tolist(), logprobs, out.hidden_states[-1][0, n - 1])


def _two_rows(env_id: str):
    """(messages, images, answer) of two conversations of different lengths: a first
    turn, and a second turn after a failed answer."""
    first, _ = make(env_id).reset(seed=0)
    second, _ = make(env_id).reset(seed=1)
    return [
        (chat_messages(first), first.images, '{"formula": "1+2"}<|im_end|>'),
        (
            chat_messages(second, [('{"formula": "12"}', "You failed because: wrong.")]),
            second.images,
            '{"formula": "10*3-4"}<|im_end|>',
        ),
    ]


def test_logprobs_and_value_input_match_an_unpadded_forward_pass(backbone):
    spec, folder = backbone
    policy = load_policy(folder)
    rows = _two_rows(spec.env_id)
    references = [_reference(policy, *row) for row in rows]
    prompts = [r.prompt_ids for r in references]
    responses = [r.response_ids for r in references]
    assert len(prompts[0]) + len(responses[0]) != len(prompts[1]) + len(responses[1])  # left padding
    images = [row[1] for row in rows]
    if spec.image_tokens:
        image_token = policy.processor.image_token_id
        assert [p.count(image_token) for p in prompts] == [spec.image_tokens] * 2

    # As a rollout scores its responses: the processor's batch encoding of the prompts.
    inputs = policy.encode([policy.prompt_text(row[0]) for row in rows], images)
    encoded = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    assert encoded == prompts
    rollout_logprobs = policy.token_logprobs(inputs, prompts, responses)
    # As the PPO learner does: the image processor's tensors, and the value head's input.
    batch = pack_prompt_responses(prompts, responses, policy.tokenizer.pad_token_id, policy.device)
    with torch.no_grad():
        scores = response_token_logprobs(policy.model, batch, responses, policy.image_inputs(images), last_hidden=True)
    width = batch["input_ids"].shape[1]
    for row, reference in enumerate(references):
        assert torch.allclose(rollout_logprobs[row], reference.logprobs, atol=1e-4)
        assert torch.allclose(scores.logprobs[row], reference.logprobs, atol=1e-4)
        last_prompt = scores.last_hidden[row, width - len(responses[row]) - 1]
        assert torch.allclose(last_prompt, reference.last_prompt_hidden, atol=1e-4)

    if spec.image_tokens:  # other images, other log-probs: the images are not dropped
        blank = [[Image.new("RGB", image.size, "white") for image in row] for row in images]
        with torch.no_grad():
            other = response_token_logprobs(policy.model, batch, responses, policy.image_inputs(blank)).logprobs
        for row in range(2):
            assert (other[row] - scores.logprobs[row]).abs().max() > 1e-2


def test_rollout_sft_ppo_save_and_reload(backbone, tmp_path):
    spec, folder = backbone
    policy = load_policy(folder)
    batched, single = (_play(policy, spec.env_id, batch_size) for batch_size in (2, 1))
    assert [len(e.turns) for e in batched] == [2, 2]  # multi-turn: the budget of 2 runs out
    for episode, alone in zip(batched, single):  # left-padded generation answers as a row alone does
        assert len(episode.turns[1].prompt_token_ids) > len(episode.turns[0].prompt_token_ids)
        for turn, same in zip(episode.turns, alone.turns):
            assert turn.response_token_ids == same.response_token_ids
            assert turn.response_logprobs == pytest.approx(same.response_logprobs, abs=1e-4)

    dataset = tmp_path / "sft.jsonl"
    write_sft_dataset(dataset, expert_records(spec.env_id, 2))
    sft = train_sft(
        SFTSettings(
            model=str(folder),
            dataset=str(dataset),
            run_dir=str(tmp_path / "sft"),
            max_steps=1,
            batch_size=2,
            save_steps=1,
            logging_steps=1,
        )
    )
    trained = run_folder.last_checkpoint(sft)
    assert [r for r in run_folder.read_metrics(sft) if "loss" in r][0]["loss"] > 0

    ppo = train_ppo(
        PPOSettings(
            model=str(trained),
            run_dir=str(tmp_path / "ppo"),
            env_id=spec.env_id,
            engine="hf",
            updates=1,
            episodes_per_update=2,
            max_new_tokens=8,
            max_attempts=2,
            ppo_epochs=1,
            minibatch_size=2,
            micro_batch_size=2,
            learning_rate=1e-3,
        )
    )
    start, end = run_folder.list_checkpoints(ppo)
    # A load and a save keep every weight (none missing, re-initialised or untied).
    assert _weights(start).keys() == _weights(trained).keys()
    assert all(torch.equal(w, _weights(trained)[k]) for k, w in _weights(start).items())
    assert any(not torch.equal(w, _weights(start)[k]) for k, w in _weights(end).items())

    reloaded = load_policy(end, value_head=True)
    saved = load_file(end / VALUE_HEAD_FILE)
    assert torch.equal(reloaded.value_head.score.weight, saved["score.weight"])
    assert not torch.equal(saved["score.weight"], load_file(start / VALUE_HEAD_FILE)["score.weight"])


def _play(policy, env_id: str, batch_size: int):
    envs = [make(env_id, max_attempts=2) for _ in range(2)]
    greedy = SamplingConfig(temperature=0, max_new_tokens=8)
    return rollout(policy, envs, greedy, seeds=[0, 1], batch_size=batch_size, progress=False)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_an_unsupported_vision_architecture_fails_at_load_naming_it(tmp_path):
    from transformers import Gemma3Config

    Gemma3Config().save_pretrained(tmp_path)  # bidirectional attention over image tokens (token_type_ids)
    with pytest.raises(ValueError, match="'gemma3' vision-language model, which the kit does not support"):
        load_policy(tmp_path)


@pytest.mark.skipif(HAS_TORCHVISION, reason="with torchvision, transformers builds Qwen-VL processors")
def test_a_processor_that_needs_torchvision_fails_at_load_saying_so(tmp_path):
    BACKBONES["qwen2_vl"].build(tmp_path)  # with the processor class a Qwen2-VL checkpoint names
    config = tmp_path / "processor_config.json"
    config.write_text(config.read_text().replace('"ImageOnlyQwen2VLProcessor"', '"Qwen2VLProcessor"'))
    with pytest.raises(ValueError, match="could not load the processor.*torchvision"):
        load_policy(tmp_path)
