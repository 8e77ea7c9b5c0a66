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
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sftrl_kit import run_folder
from sftrl_kit.data import eval_set_path, expert_records, load_sft_dataset, suboptimal_records, write_sft_dataset
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
from sftrl_kit.models.loading import load_processing_class
from sftrl_kit.models.templates import LLAMA_3_2_VISION_CHAT_TEMPLATE
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
    8 x 8 patches of 14, merged 2 x 2 into 16 image tokens with 3-D (M-RoPE) positions.
    Qwen2.5-VL carries its own chat template (TRL keeps the released one to recognise it,
    trl/chat_templates/qwen2_5_vl.jinja, and trains with its marked copy); Qwen2-VL the
    kit's, with its image placeholder."""

    def build(folder: Path) -> None:
        import transformers
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
        from trl.chat_template_utils import qwen2_5_vl_chat_template

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
            chat_template=qwen2_5_vl_chat_template
            if version == "2.5"
            else _template("<|vision_start|><|image_pad|><|vision_end|>"),
        )
        torch.manual_seed(0)
        _save(folder, getattr(transformers, f"{prefix}ForConditionalGeneration")(config), processor)

    return build


LLAMA_3_SPECIAL_TOKENS = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|eot_id|>",  # the Instruct model's end of turn
    "pad_token": "<|finetune_right_pad_id|>",
    "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|image|>"],
}


def _mllama(folder: Path, adds_bos: bool = False) -> None:
    """Llama-3.2-Vision's layout, special tokens and own chat template
    (LLAMA_3_2_VISION_CHAT_TEMPLATE): one <|image|> token; the language model cross-attends
    (layer 1) to the image's tiles (up to 2 of 28 pixels, 4 patches + 1 each), with
    aspect-ratio ids. The gates, zero at initialisation (images would not matter), open.
    adds_bos: the tokenizer puts <|begin_of_text|> before whatever it encodes with special
    tokens, as Llama 3's does (its tokenizer.json's post-processor)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama import MllamaImageProcessorPil

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens(LLAMA_3_SPECIAL_TOKENS)
    if adds_bos:
        bos = (tokenizer.bos_token, tokenizer.bos_token_id)
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]
        )
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
        MllamaProcessor(image_processor=images, tokenizer=tokenizer, chat_template=LLAMA_3_2_VISION_CHAT_TEMPLATE),
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


def _two_rows(env_id: str, end_of_turn: str):
    """(messages, images, answer) of two conversations of different lengths: a first
    turn, and a second turn after a failed answer. The answers start with a space: the
    fixtures' GPT-2-style pre-tokenizer would split a prompt's closing "\n\n" (Llama's
    header) in two before a symbol, and the prompt's ids would not begin prompt + answer's."""
    first, _ = make(env_id).reset(seed=0)
    second, _ = make(env_id).reset(seed=1)
    return [
        (chat_messages(first), first.images, ' {"formula": "1+2"}' + end_of_turn),
        (
            chat_messages(second, [('{"formula": "12"}', "You failed because: wrong.")]),
            second.images,
            ' {"formula": "10*3-4"}' + end_of_turn,
        ),
    ]


def test_logprobs_and_value_input_match_an_unpadded_forward_pass(backbone):
    spec, folder = backbone
    policy = load_policy(folder)
    rows = _two_rows(spec.env_id, policy.tokenizer.eos_token)
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


END_OF_TURN = {"mllama": "<|eot_id|>", "qwen2_5_vl": "<|im_end|>\n"}
"""what closes an assistant turn in each backbone's own template, trained with the turn"""


@pytest.mark.parametrize("backbone", list(END_OF_TURN), indirect=True)
def test_sft_on_assistant_tokens_trains_on_the_models_own_text(backbone, request, tmp_path, monkeypatch):
    """Assistant-only SFT of a backbone whose own chat template has no generation marks:
    Llama-3.2-Vision's (the kit marks it), Qwen2.5-VL's (TRL does). Every training row is
    the model's own template's rendering of a record, with its images, and the loss covers
    exactly the assistant turns: their text and end-of-turn token, as read from the
    conversation, not from any marks. The checkpoint keeps the model's own template."""
    from trl import SFTTrainer
    from trl.chat_template_utils import has_generation_markers

    _, folder = backbone
    name = request.node.callspec.params["backbone"]
    processor = load_processing_class(folder)
    assert not has_generation_markers(processor.chat_template)
    data = tmp_path / "sft.jsonl"
    write_sft_dataset(data, itertools.chain(expert_records("gp-vl", 1), suboptimal_records("gp-vl", 1)))
    batches = []
    compute_loss = SFTTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        batches.append({k: inputs[k].clone() for k in ("input_ids", "attention_mask", "labels")})
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "compute_loss", recording)
    run = train_sft(
        SFTSettings(
            model=str(folder), dataset=str(data), run_dir=str(tmp_path / "sft"), max_steps=1, batch_size=2, save_steps=1
        )
    )

    assistant_text = {}  # a record's token ids -> the text of its assistant turns
    for record in load_sft_dataset(data):
        text = processor.apply_chat_template(record["messages"], tokenize=False)
        ids = processor(text=[text], images=[record["images"]], add_special_tokens=False)["input_ids"][0]
        answers = [part["text"] for m in record["messages"] if m["role"] == "assistant" for part in m["content"]]
        assert all(answer + END_OF_TURN[name] in text for answer in answers)
        assistant_text[tuple(ids)] = "".join(answer + END_OF_TURN[name] for answer in answers)
    assert len(batches) == 1
    rows = zip(batches[0]["input_ids"], batches[0]["attention_mask"], batches[0]["labels"])
    trained = {}
    for ids, mask, labels in rows:
        ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
        trained[tuple(ids)] = processor.tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    assert trained == assistant_text
    assert load_processing_class(run_folder.last_checkpoint(run)).chat_template == processor.chat_template


def test_llama_3_2_visions_training_template_renders_every_kit_conversation_as_the_original():
    """The kit's marked copy of Llama-3.2-Vision's template changes no character: the SFT
    records of every task (text and images, one and several turns), the prompts rollouts
    render, a system message and a tool call. TRL 1.16 has no marked copy of it."""
    from trl.chat_template_utils import get_training_chat_template

    from sftrl_kit.models.templates import LLAMA_3_2_VISION_TRAINING_CHAT_TEMPLATE, training_chat_template

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens(LLAMA_3_SPECIAL_TOKENS)
    tokenizer.chat_template = LLAMA_3_2_VISION_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="patching is not supported for this template"):
        get_training_chat_template(tokenizer)
    conversations = [
        record["messages"]
        for env_id in ("gp-l", "gp-vl", "virl-l", "virl-vl")
        for record in itertools.chain(expert_records(env_id, 2), suboptimal_records(env_id, 2))
    ]
    assert {m["role"] for c in conversations for m in c} == {"user", "assistant"}
    assert any(isinstance(c[0]["content"], list) for c in conversations)  # with image parts
    conversations += [
        [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "2+2?"}],
        [
            {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {}}}]},
            {"role": "tool", "content": "5"},
            {"role": "assistant", "content": "5"},
        ],
    ]
    for messages in conversations:
        for generation_prompt in (False, True):
            original, marked = (
                tokenizer.apply_chat_template(
                    messages, tokenize=False, chat_template=template, add_generation_prompt=generation_prompt
                )
                for template in (LLAMA_3_2_VISION_CHAT_TEMPLATE, LLAMA_3_2_VISION_TRAINING_CHAT_TEMPLATE)
            )
            assert marked == original
    assert training_chat_template(tokenizer, conversations) == LLAMA_3_2_VISION_TRAINING_CHAT_TEMPLATE


def test_another_revision_of_llamas_template_is_marked_after_its_renderings_are_checked(monkeypatch):
    """A revision of the template the kit has not rendered in tests (here: a system message
    allowed with images, as later revisions of the model's repository do) gets the same marks
    once the run's conversations render alike through both, and is refused, naming the
    conversation, when one does not; a template the kit cannot mark is refused, naming
    loss_on='all'."""
    from sftrl_kit.models import templates
    from sftrl_kit.models.templates import first_rendering_difference, training_chat_template, with_generation_marks

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens(LLAMA_3_SPECIAL_TOKENS)
    refusal = '    {{- raise_exception("Prompting with images is incompatible with system messages.") }}\n'
    assert refusal in LLAMA_3_2_VISION_CHAT_TEMPLATE
    revision = LLAMA_3_2_VISION_CHAT_TEMPLATE.replace(refusal, "")
    tokenizer.chat_template = revision
    conversations = [r["messages"] for r in itertools.chain(expert_records("gp-vl", 1), suboptimal_records("gp-l", 1))]
    marked = training_chat_template(tokenizer, conversations)
    assert marked == with_generation_marks(revision)
    with_system = [{"role": "system", "content": "Be brief."}, *conversations[0]]
    original = LLAMA_3_2_VISION_CHAT_TEMPLATE
    assert first_rendering_difference(tokenizer, [*conversations, with_system], revision, original) == 2
    monkeypatch.setattr(templates, "first_rendering_difference", lambda *args: 1)
    with pytest.raises(ValueError, match="renders conversation 1 of the dataset differently.*loss_on='all'"):
        training_chat_template(tokenizer, conversations)

    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="has no marks, TRL has no marked copy of it.*loss_on='all'"):
        training_chat_template(tokenizer, conversations)


@pytest.mark.parametrize("backbone", ["mllama"], indirect=True)
def test_mllama_plays_and_is_evaluated_on_the_hf_engine_and_vllm_refuses_it(backbone, tmp_path):
    """The paper's backbone has the HF engine only (vLLM 0.32 no longer serves Mllama). Its
    GP-VL rollouts record the log-probs of a plain forward pass over the same tokens and image
    (one row, the cross-attention mask built from its definition), and so does the PPO
    learner's scoring of those turns; 'auto' evaluates it with HF; 'vllm' is refused, naming
    'hf'."""
    from sftrl_kit.evaluation import evaluate_model

    _, folder = backbone
    policy = load_policy(folder)
    turns = [turn for episode in _play(policy, "gp-vl", batch_size=2) for turn in episode.turns]
    assert len(turns) == 4
    learner = response_token_logprobs(
        policy.model,
        policy.pack([t.prompt_token_ids for t in turns], [t.response_token_ids for t in turns]),
        [t.response_token_ids for t in turns],
        policy.image_inputs([t.images for t in turns]),
    ).logprobs
    for turn, learned in zip(turns, learner):
        expected = _plain_logprobs(policy, turn.prompt_token_ids, turn.response_token_ids, turn.images)
        assert torch.allclose(torch.tensor(turn.response_logprobs), expected, atol=1e-4)
        assert torch.allclose(learned, expected, atol=1e-4)

    evaluation = dict(
        eval_sets={"gp-visual-ood": eval_set_path("gp-visual-ood")},
        env_id="gp-vl",
        sampling=SamplingConfig(temperature=0, max_new_tokens=8),
        limit=2,
        progress=False,
        max_attempts=2,
    )
    (evaluated,) = evaluate_model(folder, tmp_path / "eval", **evaluation).values()
    assert (evaluated["key"]["engine"], evaluated["episodes"]) == ("hf", 2)
    with pytest.raises((NotImplementedError, ValueError), match="'mllama'.*engine='hf'"):
        evaluate_model(folder, tmp_path / "eval", engine="vllm", **evaluation)


@torch.no_grad()
def _plain_logprobs(policy, prompt: list[int], response: list[int], images) -> torch.Tensor:
    """log pi(response token) by one forward pass over one unpadded row: the image
    processor's tensors, and each image seen over its tiles from its <|image|> token on."""
    pixels = policy.processor.image_processor([images], return_tensors="pt")
    ids = torch.tensor([prompt + response])
    (image_at,) = [i for i, token in enumerate(prompt) if token == policy.processor.image_token_id]
    tiles = int(pixels["aspect_ratio_mask"][0, 0].sum())
    cross_attention_mask = torch.zeros(1, ids.shape[1], 1, pixels["aspect_ratio_mask"].shape[-1], dtype=torch.long)
    cross_attention_mask[0, image_at:, 0, :tiles] = 1
    logits = policy.model(
        input_ids=ids,
        pixel_values=pixels["pixel_values"],
        aspect_ratio_ids=pixels["aspect_ratio_ids"],
        aspect_ratio_mask=pixels["aspect_ratio_mask"],
        cross_attention_mask=cross_attention_mask,
    ).logits[0, len(prompt) - 1 : -1]
    return logits.float().log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_a_rollout_prompt_holds_the_bos_its_template_writes_once(tmp_path):
    """Llama 3's tokenizer adds <|begin_of_text|> to what it encodes, and Llama-3.2-Vision's
    template writes it as well: a rollout prompt holds it once, as the rows SFT trains on do
    (TRL encodes the rendered chat without special tokens)."""
    from sftrl_kit.models import Conversation

    _mllama(tmp_path, adds_bos=True)
    policy = load_policy(tmp_path)
    assert policy.tokenizer("x")["input_ids"][0] == policy.tokenizer.bos_token_id
    observation, _ = make("gp-vl").reset(seed=0)
    (prompt,) = policy.prompt_token_ids([Conversation(chat_messages(observation), observation.images)])
    assert prompt.count(policy.tokenizer.bos_token_id) == 1
