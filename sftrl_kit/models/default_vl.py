"""default-vl: the embedded language model with eyes trained in the kit.

    load_policy("default-vl")   # built on first use (minutes), then cached

Layout: Idefics3's (SmolVLM's), saved as `Idefics3ForConditionalGeneration` and loaded
through the Auto classes: a SigLIP-style ViT over 14-pixel patches of a 224-pixel image
(16 x 16 patches), a pixel shuffle that folds each 2 x 2 block of patches into one token
(64 image tokens, each over 28 x 28 pixels), a linear projection into
SmolLM2-135M-Instruct's embedding space, and that language model, unchanged.

Why these eyes. A ViT reads glyphs from small patches (14 px: a stroke of a rank) far
better than from one big patch per token. Tokens of 28 px are the coarsest grid on which
each word the eyes must say has a token of its own: a card's rank above its colour, and
a storefront sign's two words (a street-view grid shows up to eight signs).

How they are trained, and why not as LLaVA does. LLaVA aligns its projector by
captioning through the language model: a forward and backward pass of the LM for every
image, about a second per image on two cores, where the eyes need tens of thousands of
images. Here the tower and projection learn, without the LM, to write a *transcription*
of the image in the LM's own input embeddings, aligned with where the text is: on a GP
hand the token over the top of a card carries the embedding of its rank word (" king"),
the token below it the card's colour (" red"); on a street-view grid the two tokens a
sign covers carry its place name's two words (" Hudson", " Coffee"); every other token
the embedding of a space. (A transcription in reading order instead, a block of tokens
per sign, was tried on the street views and not learned by a tower this small: no name
right after 1,500 steps.) The LM then reads an image as words it already knows, so the
composed model can say what it sees before any task training, and the text model inside
is bit for bit the default model. The loss is a cross-entropy over the transcription's
vocabulary (which word each token is nearest to; word tokens weigh `word_weight` times a
space, which most tokens are) plus the squared distance to the word's embedding (so that
the LM receives an input it was trained on, not merely the nearest one). Training images
are hands dealt from all 52 cards, red and black, and street views of all ten generated
cities (at layouts other than the environment's): the paper's backbone had seen red cards
and many cities before any post-training; only the task data are black-suit and Arden.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from ..envs.general_points.cards import RANKS, Card, deck
from ..envs.general_points.render import render_hand
from ..envs.virl.city import CITIES, KINDS, generate_city
from ..envs.virl.streetview import render_views, signs_in_views
from .builtin import DEFAULT_VL_CHAT_TEMPLATE, cached_build, default_model_dir

VL_VERSION = "v3"  # bump when the composition, the transcription or EyesSettings' defaults change
IMAGE_SIDE = 224  # pixels: the processor resizes every image's longest edge to this
PATCH = 14  # the ViT's patch side in pixels
SHUFFLE = 2  # pixel shuffle: SHUFFLE x SHUFFLE patches -> one image token
GRID = IMAGE_SIDE // PATCH // SHUFFLE  # image tokens per row and column (8)
IMAGE_TOKENS = GRID * GRID
CARDS_PER_HAND = 4
RANK_ROW, COLOUR_ROW = 3, 4  # a card's rank is said by the token over its top, its colour by the one below
RANK_WORDS = dict(zip(RANKS, "ace two three four five six seven eight nine ten jack queen king".split()))
COLOUR_WORDS = {False: "black", True: "red"}
PANEL_TOKENS = GRID // 2  # a street-view grid is 2 x 2 panels of 4 x 4 tokens
SIGN_TOKENS = {"left": ((2, 0), (2, 1)), "ahead": ((1, 1), (1, 2)), "right": ((2, 2), (2, 3))}
"""where in its panel (row, column) each sign's two words are said: two tokens side by side
(so the language model reads the name in order) on the sign's plate, which shows the two
words one above the other"""
FILLER = " "  # what an image token over no card and no sign says
# The Idefics3 processor's marks around an image; their embeddings are set to a newline's.
IMAGE_MARKS = ("<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>")
LAYOUT_SEEDS = range(1, 200)  # city layouts the eyes train on; the environment's cities are layout 0


@dataclass(frozen=True)
class EyesSettings:
    """How default-vl's eyes are trained (`build_default_vl`). The defaults are the
    cached model's; changing any of them builds a different model."""

    steps: int = 3000
    """optimiser steps"""
    batch_size: int = 32
    """images per step"""
    learning_rate: float = 1e-3
    """peak of the one-cycle schedule (AdamW)"""
    pool: int = 8192
    """images rendered once and sampled from: rendering costs as much as a step"""
    street_share: float = 0.5
    """share of the pool that is street-view grids (the rest are GP hands)"""
    large_share: float = 0.2
    """share of the hands rendered at GP-VL's large size (560 px) and resized, as the env's large images are"""
    word_weight: float = 10.0
    """weight of a token that says a word (not a space) in the cross-entropy"""
    hidden_size: int = 128
    """the ViT's width"""
    layers: int = 4
    """the ViT's depth"""
    seed: int = 0
    """seeds the weights, the images and the order of the batches"""


def card_transcription(hand: Sequence[Card]) -> list[str]:
    """What each image token of a GP hand's picture says, row by row: card k covers
    columns 2k and 2k+1; row RANK_ROW, column 2k says its rank word, row COLOUR_ROW,
    column 2k its colour, every other token a space."""
    if len(hand) != CARDS_PER_HAND:
        raise ValueError(f"default-vl reads hands of {CARDS_PER_HAND} cards, got {len(hand)}")
    words = [FILLER] * IMAGE_TOKENS
    for slot, card in enumerate(hand):
        rank, colour = _card_positions(slot)
        words[rank], words[colour] = " " + RANK_WORDS[card.rank], " " + COLOUR_WORDS[card.is_red]
    return words


def _card_positions(slot: int) -> tuple[int, int]:
    """Token indices of the rank and the colour of the card in `slot` (0-3, left to right)."""
    return RANK_ROW * GRID + 2 * slot, COLOUR_ROW * GRID + 2 * slot


def street_transcription(signs: Sequence[dict[str, str]]) -> list[str]:
    """What each image token of a street-view grid says, given the signs of its four
    panels (`streetview.signs_in_views`): the two tokens a sign covers (SIGN_TOKENS)
    say its place name's two words, every other token a space."""
    words = [FILLER] * IMAGE_TOKENS
    for panel, panel_signs in enumerate(signs):
        for side, name in panel_signs.items():
            for position, word in zip(_sign_positions(panel, side), _name_words(name)):
                words[position] = " " + word
    return words


def _sign_positions(panel: int, side: str) -> list[int]:
    """Token indices of a sign's two words in the grid (panels row by row, 2 x 2)."""
    top, left = PANEL_TOKENS * (panel // 2), PANEL_TOKENS * (panel % 2)
    return [(top + row) * GRID + left + column for row, column in SIGN_TOKENS[side]]


def _name_words(name: str) -> tuple[str, str]:
    words = name.split(" ")
    if len(words) != 2:
        raise ValueError(f"default-vl reads place names of two words (city word, kind), got {name!r}")
    return words[0], words[1]


def transcription_vocabulary() -> list[str]:
    """Every word an image token can say, in a fixed order: a space, the rank words, the
    colours, every generated city's name words, the kinds of place."""
    city_words = [word for style in CITIES.values() for word in style.words]
    return [
        FILLER,
        *(" " + w for w in RANK_WORDS.values()),
        *(" " + w for w in COLOUR_WORDS.values()),
        *(" " + w for w in city_words),
        *(" " + w for w in KINDS),
    ]


def read_hands(words: Sequence[Sequence[str]]) -> list[list[tuple[str, bool] | None]]:
    """(rank, is_red) of each slot of each image's transcription (None where the two
    tokens do not name a rank and a colour)."""
    ranks = {" " + w: r for r, w in RANK_WORDS.items()}
    colours = {" " + w: red for red, w in COLOUR_WORDS.items()}
    hands = []
    for row in words:
        slots = []
        for slot in range(CARDS_PER_HAND):
            rank, colour = (row[i] for i in _card_positions(slot))
            slots.append((ranks[rank], colours[colour]) if rank in ranks and colour in colours else None)
        hands.append(slots)
    return hands


def read_signs(words: Sequence[str], panel: int, side: str) -> str:
    """The place name a transcription says on one building of one panel ("" where both
    of its tokens say a space)."""
    return " ".join(words[i].strip() for i in _sign_positions(panel, side)).strip()


def default_vl_dir() -> Path:
    """default-vl as a safetensors folder: composed and its eyes trained on first use
    (build_default_vl: about 34 minutes on a 2-core CPU), then cached."""
    return cached_build(f"default-vl-{VL_VERSION}", build_default_vl)


def build_default_vl(folder: str | Path, settings: EyesSettings | None = None, progress: bool = True) -> Path:
    """Compose default-vl, train its eyes and save it into `folder` (see the module's
    docstring). Deterministic for a given `settings` on a given machine."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    settings = settings or EyesSettings()
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_MARKS)})
    language_model = LlamaForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32, local_files_only=True)
    model = _compose(language_model, tokenizer, settings)
    processor = vl_processor(tokenizer)
    _train_eyes(model, processor, tokenizer, settings, progress)
    model.config.eyes_settings = asdict(settings)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return Path(folder)


def vl_processor(tokenizer):
    """default-vl's processor: one 224-pixel image per picture (no tiling)."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    images = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIDE},
        max_image_size={"longest_edge": IMAGE_SIDE},
    )
    return Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_TOKENS, chat_template=DEFAULT_VL_CHAT_TEMPLATE
    )


def _compose(language_model, tokenizer, settings: EyesSettings):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = language_model.get_input_embeddings().weight
    with torch.no_grad():
        for mark in IMAGE_MARKS:
            embeddings[tokenizer.convert_tokens_to_ids(mark)] = embeddings[newline[0]]
    vision = Idefics3VisionConfig(
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.layers,
        num_attention_heads=max(1, settings.hidden_size // 64),
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=language_model.config.to_dict(),
        scale_factor=SHUFFLE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=language_model.config.pad_token_id,  # Idefics3Config's default (128002) is Llama 3's
        tie_word_embeddings=language_model.config.tie_word_embeddings,
    )
    model = Idefics3ForConditionalGeneration(config)
    model.model.text_model.load_state_dict(language_model.model.state_dict())
    model.lm_head.weight = model.model.text_model.embed_tokens.weight
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def eyes(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(vision tower, connector) of an Idefics3 model."""
    return model.model.vision_model, model.model.connector


def image_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(images, IMAGE_TOKENS, hidden): what the language model receives for each
    unpadded, untiled image (pixel_values: (images, 3, side, side))."""
    tower, connector = eyes(model)
    return connector(tower(pixel_values=pixel_values).last_hidden_state)


def _pixel_values(processor, images: Sequence[Image.Image]) -> torch.Tensor:
    """(images, 3, side, side). Each image goes in as its own sample: the Idefics3
    processor reads a flat list as one sample holding every image."""
    pixels = processor.image_processor([[image] for image in images], return_tensors="pt")["pixel_values"]
    if pixels.shape[:2] != (len(images), 1):
        raise RuntimeError(f"expected one untiled image per sample, got pixel_values of shape {tuple(pixels.shape)}")
    return pixels[:, 0]


def _training_pool(processor, settings: EyesSettings, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (fp16) and target word indices of `settings.pool` images: hands of all 52
    cards and street-view grids of every city, at layouts other than the environment's."""
    from tqdm.auto import tqdm

    rng = random.Random(settings.seed)
    cards = deck("all")
    index = {word: i for i, word in enumerate(words)}
    pixels, targets = [], []
    for start in tqdm(range(0, settings.pool, 256), desc="default-vl: rendering hands and streets", leave=False):
        images, transcriptions = [], []
        for _ in range(min(256, settings.pool - start)):
            if rng.random() < settings.street_share:
                city = generate_city(rng.choice(list(CITIES)), seed=rng.choice(LAYOUT_SEEDS))
                node, heading = (rng.randrange(city.size), rng.randrange(city.size)), rng.randrange(0, 360, 45)
                images.append(render_views(city, node, heading, seed=rng.getrandbits(32)))
                transcriptions.append(street_transcription(signs_in_views(city, node, heading)))
            else:
                hand = rng.sample(cards, CARDS_PER_HAND)
                size = 560 if rng.random() < settings.large_share else IMAGE_SIDE
                images.append(render_hand(hand, rng.getrandbits(32), size))
                transcriptions.append(card_transcription(hand))
        pixels.append(_pixel_values(processor, images).half())
        targets.append(torch.tensor([[index[w] for w in row] for row in transcriptions]))
    return torch.cat(pixels), torch.cat(targets)


def _train_eyes(model, processor, tokenizer, settings: EyesSettings, progress: bool) -> None:
    from tqdm.auto import tqdm

    words = transcription_vocabulary()
    word_ids = _word_ids(tokenizer, words)
    with torch.no_grad():
        targets_embedded = model.get_input_embeddings().weight[word_ids].clone()
    scale = targets_embedded.norm(dim=-1).mean()
    pixels, targets = _training_pool(processor, settings, words)
    model.requires_grad_(False)
    parameters = [p for part in eyes(model) for p in part.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.1
    )
    order = torch.Generator().manual_seed(settings.seed)
    bar = tqdm(range(settings.steps), desc="default-vl: training its eyes", disable=not progress)
    for _ in bar:
        batch = torch.randint(len(pixels), (settings.batch_size,), generator=order)
        loss, accuracy = eyes_loss(
            image_embeddings(model, pixels[batch].float()),
            targets[batch],
            targets_embedded,
            scale,
            settings.word_weight,
        )
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", word_accuracy=f"{accuracy:.3f}")
    model.requires_grad_(True)


def eyes_loss(
    embedded: torch.Tensor,
    targets: torch.Tensor,
    vocabulary: torch.Tensor,
    scale: torch.Tensor,
    word_weight: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """Cross-entropy of each image token over the transcription's words (logits: dot
    products with the words' embeddings / their mean norm; a token whose target is a
    word other than the space, index 0, weighs `word_weight`) plus the squared distance
    to its word's embedding (in units of that norm, unweighted); and the share of word
    tokens (not spaces) nearest their word. embedded: (images, tokens, hidden); targets:
    (images, tokens) word indices."""
    logits = embedded @ vocabulary.T / scale
    is_word = targets.flatten() != 0
    weights = torch.where(is_word, word_weight, 1.0)
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    cross_entropy = (per_token * weights).sum() / weights.sum()
    distance = ((embedded - vocabulary[targets]) ** 2).sum(-1).mean() / scale**2
    right = logits.argmax(-1).flatten() == targets.flatten()
    accuracy = (right & is_word).sum().item() / max(1, int(is_word.sum()))
    return cross_entropy + distance, accuracy


def _word_ids(tokenizer, words: Sequence[str]) -> list[int]:
    ids = []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise ValueError(f"transcription word {word!r} is {len(pieces)} tokens for this tokenizer, not one")
        ids.append(pieces[0])
    return ids


@torch.no_grad()
def read_images(policy, images: Sequence[Image.Image]) -> list[list[str]]:
    """The transcription default-vl's eyes write for each image: per image token, the
    word whose embedding is nearest (by the training loss's logits)."""
    words = transcription_vocabulary()
    vocabulary = policy.model.get_input_embeddings().weight[_word_ids(policy.tokenizer, words)]
    scale = vocabulary.norm(dim=-1).mean()
    pixels = _pixel_values(policy.processor, images).to(policy.device)
    with policy.autocast():
        embedded = image_embeddings(policy.model, pixels).float()
    nearest = (embedded @ vocabulary.T / scale).argmax(-1)
    return [[words[i] for i in row] for row in nearest.tolist()]
