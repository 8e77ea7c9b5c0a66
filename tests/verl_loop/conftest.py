"""verl's environment: the default model's tokenizer as the kit builds it (with the end
of turn the GGUF file declares, which transformers before 5.11 misreads)."""

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from sftrl_kit.models.builtin import _smollm2_gguf, _smollm2_tokenizer

    tokenizer = _smollm2_tokenizer(_smollm2_gguf())
    assert tokenizer.eos_token == "<|im_end|>"
    return tokenizer
