"""`Policy`: a transformers model with its tokenizer (or processor) and value head, and
the "hf" generation engine.

A Policy answers a batch of conversations with one `generate` call (left padding), with
every sampling setting given explicitly (`generation_config`), never taken from the
checkpoint's generation_config nor from transformers' global defaults (top_k=50).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .generation import Conversation, Generation, SamplingConfig
from .scoring import autocast, pack_prompt_responses, response_token_logprobs

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """V(s) from the hidden state of the last prompt token (the paper's value head)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.score = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.score.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.score.bias)

    def forward(self, last_hidden: torch.Tensor, last_prompt_index: torch.Tensor) -> torch.Tensor:
        """last_hidden: (batch, seq, hidden); last_prompt_index: (batch,) -> (batch,)."""
        rows = torch.arange(last_hidden.shape[0], device=last_hidden.device)
        return self.score(last_hidden[rows, last_prompt_index].to(self.score.weight.dtype)).squeeze(-1)


class Policy:
    """A transformers model with its tokenizer (and processor), the value head if any.

    It is also the "hf" generation engine (`respond`): its answers always come from its
    current weights, so it never needs a sync (see `sftrl_kit.engines`).
    """

    engine = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        processor=None,
        value_head: ValueHead | None = None,
        name: str = "",
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.value_head = value_head
        self.name = name
        self.autocast_dtype = autocast_dtype
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def is_vision(self) -> bool:
        return self.processor is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_parameters(self) -> int:
        """N in the paper's FLOPs formulas: every parameter of the network (base + adapters).
        A parameter DeepSpeed has partitioned away counts at its full size (ds_numel)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters())

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward pass of this policy runs in (generation, log-probs,
        training): bf16 autocast over fp32 weights, or nothing."""
        return autocast(self.device, self.autocast_dtype)

    def stop_token_ids(self) -> list[int]:
        """End-of-turn tokens: the tokenizer's EOS and the model's declared EOS ids."""
        ids = {self.tokenizer.eos_token_id}
        declared = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(declared if isinstance(declared, list) else [declared])
        return sorted(i for i in ids if i is not None)

    def prompt_text(self, messages: list[dict[str, Any]]) -> str:
        template_owner = self.processor or self.tokenizer
        return template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_token_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        """The token ids of each conversation's prompt, image tokens expanded as the
        model's processor expands them: what every engine must feed the model."""
        texts = [self.prompt_text(c.messages) for c in conversations]
        inputs = self.encode(
            texts, [c.images for c in conversations], to_device=False
        )  # ids only: no device round trip
        return [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]

    def encode(
        self, texts: Sequence[str], images: Sequence[Sequence[Image.Image]] | None = None, to_device: bool = True
    ) -> dict:
        """Left-padded model inputs for a batch of templated texts (and their images), on
        the policy's device (to_device=False: left where the processor made them)."""
        if self.processor is not None and images and any(images):
            batch = self.processor(  # the template writes any BOS itself (as TRL's collator encodes it)
                text=list(texts),
                images=[list(i) for i in images],
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,
            )
        else:
            batch = self.tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
        return {key: value.to(self.device) if to_device else value for key, value in batch.items()}

    @torch.no_grad()
    def respond(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, with_logprobs: bool = True
    ) -> list[Generation]:
        """One batched generate over the conversations; responses cut at the first stop token."""
        texts = [self.prompt_text(c.messages) for c in conversations]
        inputs = self.encode(texts, [c.images for c in conversations])
        responses = self._sample(inputs, sampling)
        prompts = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        logprobs: list[list[float] | None] = [None] * len(responses)
        if with_logprobs:
            top_p = 1.0 if sampling.greedy else sampling.top_p
            logprobs = [
                lp.tolist() for lp in self.token_logprobs(inputs, prompts, responses, sampling.logit_scale, top_p)
            ]
        return [
            Generation(self.tokenizer.decode(response, skip_special_tokens=True), prompt, response, lp)
            for prompt, response, lp in zip(prompts, responses, logprobs)
        ]

    @torch.no_grad()
    def continue_token_ids(self, prompt_ids: Sequence[list[int]], sampling: SamplingConfig) -> list[list[int]]:
        """Responses (token ids, cut at the first stop token) to prompts given as token
        ids, for callers that keep each conversation as tokens (integrations.trl: a
        multi-turn episode scored as one sequence). Text models only."""
        if self.is_vision:
            raise ValueError("continue_token_ids takes text prompts; a vision model's prompts need their images")
        if not prompt_ids:
            return []
        batch = self.pack(prompt_ids, [[] for _ in prompt_ids])
        return self._sample({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, sampling)

    def _sample(self, inputs: dict, sampling: SamplingConfig) -> list[list[int]]:
        """One generate call over left-padded inputs: each row's new tokens up to and
        including its first stop token."""
        stop_ids = self.stop_token_ids()
        config = generation_config(sampling, stop_ids, self.tokenizer.pad_token_id)
        was_training, saved_config = self.model.training, self.model.generation_config
        self.model.eval()
        # generate() fills every unset field from the model's generation_config: give it
        # ours, complete, so nothing of the checkpoint's leaks into the sampling.
        self.model.generation_config = config
        try:
            with self.autocast():
                sequences = self.model.generate(**inputs, generation_config=config)
        finally:
            self.model.generation_config = saved_config
            self.model.train(was_training)
        prompt_width = inputs["input_ids"].shape[1]
        return [_cut_at_stop(row.tolist(), stop_ids) for row in sequences[:, prompt_width:]]

    def pack(self, prompts: Sequence[list[int]], responses: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Rows prompt + response, left-padded, on this policy's device: the one packing of
        every scored batch (scoring.pack_prompt_responses)."""
        return pack_prompt_responses(prompts, responses, self.tokenizer.pad_token_id, self.device)

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[list[int]],
        responses: Sequence[list[int]],
        images: dict[str, torch.Tensor],
        logit_scale: float = 1.0,
        top_p: float = 1.0,
        model: nn.Module | None = None,
    ) -> list[torch.Tensor]:
        """log pi(response token | context) for each response, by one forward pass of
        `model` over the packed batch: this policy's own by default; PPO's reference passes
        its frozen copy (or this model with its adapters off). `images`: the batch's image
        tensors (image_inputs or image_tensors)."""
        return response_token_logprobs(
            self.model if model is None else model,
            self.pack(prompts, responses),
            responses,
            images,
            logit_scale,
            top_p,
            autocast_dtype=self.autocast_dtype,
        ).logprobs

    def token_logprobs(
        self,
        prompt_inputs: dict,
        prompts: Sequence[list[int]],
        responses: Sequence[list[int]],
        logit_scale: float = 1.0,
        top_p: float = 1.0,
    ) -> list[torch.Tensor]:
        """`score` with the image tensors of a processor's output for the prompts
        (prompt_inputs, as `encode` made it); the text is rebuilt as prompt + response."""
        return self.score(prompts, responses, self.image_tensors(prompt_inputs), logit_scale, top_p)

    def image_inputs(self, images_per_row: Sequence[Sequence[Image.Image]]) -> dict[str, torch.Tensor]:
        """The image tensors of rows' images, row by row (empty for text models)."""
        if self.processor is None or not any(images_per_row):
            return {}
        pixels = self.processor.image_processor([list(row) for row in images_per_row], return_tensors="pt")
        return self.image_tensors(pixels)

    def image_tensors(self, inputs: dict) -> dict[str, torch.Tensor]:
        """The image processor's tensors in a processor's output (pixel_values and what
        describes them: image_grid_thw, aspect_ratio_ids ...), on the policy's device.

        The token-aligned ones (input_ids, mm_token_type_ids, cross_attention_mask ...)
        are left out: they fit the prompts alone, and `forward_inputs` rebuilds them for
        each packed prompt + response batch.
        """
        if self.processor is None:
            return {}
        keys = self.processor.image_processor.model_input_names
        return {k: v.to(self.device) for k, v in inputs.items() if k in keys and torch.is_tensor(v)}

    def save(self, folder: str | Path) -> Path:
        """A self-contained checkpoint: weights (safetensors; LoRA adapters merged, see
        `merged_state_dict`), tokenizer/processor, and the value head if any."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if is_peft(self.model):
            state = merged_state_dict(self.model)
            self.model.get_base_model().save_pretrained(folder, state_dict=state, safe_serialization=True)
        else:
            self.model.save_pretrained(folder, safe_serialization=True)
        (self.processor or self.tokenizer).save_pretrained(folder)
        if self.value_head is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
            save_file(state, folder / VALUE_HEAD_FILE, metadata={"hidden_size": str(self.value_head.hidden_size)})
        return folder


def is_peft(model) -> bool:
    """Whether `model` is a peft model (LoRA adapters over a frozen base)."""
    return type(model).__module__.startswith("peft")


@torch.no_grad()
def merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the model's weights in checkpoint naming, one at a time. A peft
    model's adapters are added to a copy of each base weight as it is reached (W +
    scale * B A, the adapters summed first), never in place: merging and unmerging in
    place would drift the frozen base (the KL reference) by rounding, update after
    update. At most one merged weight exists at a time beside the model, not a merged
    copy of every adapted layer (which at 7B is ~49 GiB of fp32). A module peft trains
    whole (modules_to_save) gives its trained copy under the module's own name."""
    if not is_peft(model):
        yield from model.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    _refuse_trained_tied_weights(model)
    adapted = {f"{name}.weight": module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, tensor in base.state_dict().items():
        clean = _checkpoint_name(name, model.active_adapters)
        if clean is None:
            continue
        module = adapted.get(clean)
        deltas = (
            [] if module is None else [module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A]
        )
        yield clean, tensor + sum(deltas[1:], deltas[0]) if deltas else tensor


def _checkpoint_name(name: str, active_adapters: Sequence[str]) -> str | None:
    """A peft model's state-dict name in the base model's own naming, or None for what a
    merged checkpoint does not hold: the adapters' A and B, the frozen original of a
    module trained whole, and the copies of inactive adapters."""
    if "lora_" in name or ".original_module." in name:
        return None
    if ".modules_to_save." in name:
        before, rest = name.split(".modules_to_save.", 1)
        adapter, _, after = rest.partition(".")
        return f"{before}.{after}" if adapter in active_adapters else None
    return name.replace(".base_layer.", ".")


def _refuse_trained_tied_weights(model: nn.Module) -> None:
    """A ValueError when adapters or a module trained whole sit on a weight the model ties
    to another (the LM head and the input embeddings): vLLM loads a tied head from the
    embedding and a tied checkpoint keeps one of the two, so the training would be lost."""
    config = getattr(model.get_base_model(), "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return
    tied = {"lm_head", "embed_tokens"}
    trained = {
        name.split(".")[-1] for name, module in model.get_base_model().named_modules() if _is_trained_module(module)
    }
    if trained & tied:
        raise ValueError(
            f"LoRA trains {sorted(trained & tied)}, which this model ties to its other embedding (tie_word_embeddings); "
            "the training would be lost in the engine and the checkpoint: leave them out of target_modules and "
            "modules_to_save"
        )


def _is_trained_module(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    return isinstance(module, (LoraLayer, ModulesToSaveWrapper))


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The merged weights (merged_weights) on the CPU, each tensor once (a tied weight
    under its first name, as save_pretrained keeps it): what a self-contained checkpoint
    of a LoRA model holds, built without copying the model on its device."""
    first_name = {}
    for name, tensor in model.get_base_model().state_dict().items():
        clean = _checkpoint_name(name, model.active_adapters)
        if clean is not None:
            first_name.setdefault(tensor.data_ptr(), clean)
    kept = set(first_name.values())
    return {name: t.detach().cpu().contiguous() for name, t in merged_weights(model) if name in kept}


def generation_config(sampling: SamplingConfig, stop_ids: Sequence[int], pad_token_id: int):
    """A transformers GenerationConfig with every field that shapes the sampled
    distribution set: transformers' global defaults (among them top_k=50), then the
    neutral value of each processor, then `sampling`."""
    from transformers import GenerationConfig

    defaults = GenerationConfig._get_default_generation_params()
    fields = dict(defaults)
    fields.update(
        # Sampling: top_k 0 turns top-k off. Greedy: the warpers are not applied, and a
        # top_k other than transformers' default only draws a "flag ignored" warning.
        top_k=defaults["top_k"] if sampling.greedy else 0,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        bad_words_ids=None,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        sequence_bias=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        exponential_decay_length_penalty=None,
        min_length=0,
        min_new_tokens=None,
        num_beams=1,
        num_return_sequences=1,
        length_penalty=1.0,
        renormalize_logits=False,
        guidance_scale=None,
        watermarking_config=None,
        do_sample=not sampling.greedy,
        temperature=1.0 if sampling.greedy else sampling.temperature,
        max_new_tokens=sampling.max_new_tokens,
        max_length=None,
        pad_token_id=pad_token_id,
        eos_token_id=list(stop_ids),
    )
    if not sampling.greedy:
        fields["top_p"] = sampling.top_p
    return GenerationConfig(**fields)


def _cut_at_stop(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    """Tokens up to and including the first stop token (padding after it dropped)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: index + 1]
    return tokens
