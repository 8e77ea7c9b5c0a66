"""Training compute as the paper counts it (section 5 and appendix).

    X_SFT = 6 N (D_init + D_SFT)
    X_RL  = 6 N (D_init + D_RL) + 2 N D_buffer,   D_buffer = buffer_lambda * D_RL

N is the number of parameters; D counts tokens: D_init those of the shared SFT
initialisation, D_SFT / D_RL those trained on afterwards. 6N per token is a forward and
backward pass; 2N per token is the inference that fills the RL buffer, whose size the
paper puts at buffer_lambda = 6 (GeneralPoints) and 5.1 (V-IRL) times the trained tokens
(the paper writes lambda; here it is buffer_lambda, never to be read as GAE's lambda).
Each environment states its own (Env.buffer_lambda), so a new task trains without an
edit here.
"""

from __future__ import annotations


def sft_flops(num_parameters: int, init_tokens: int, sft_tokens: int) -> float:
    _check(num_parameters, init_tokens, sft_tokens)
    return 6.0 * num_parameters * (init_tokens + sft_tokens)


def sft_tokens_for(flops: float, num_parameters: int, init_tokens: int) -> float:
    """D_SFT whose X_SFT reaches `flops` from a start of D_init tokens: sft_flops inverted
    (negative when the start alone is past it)."""
    _check(num_parameters, init_tokens)
    return flops / (6 * num_parameters) - init_tokens


def rl_flops(num_parameters: int, init_tokens: int, rl_tokens: int, buffer_lambda: float) -> float:
    _check(num_parameters, init_tokens, rl_tokens)
    if buffer_lambda < 0:
        raise ValueError(f"buffer_lambda must be >= 0, got {buffer_lambda}")
    return 6.0 * num_parameters * (init_tokens + rl_tokens) + 2.0 * num_parameters * buffer_lambda * rl_tokens


def gflops(flops: float) -> float:
    return flops / 1e9


def _check(num_parameters: int, *token_counts: int) -> None:
    if num_parameters <= 0:
        raise ValueError(f"num_parameters must be positive, got {num_parameters}")
    if any(count < 0 for count in token_counts):
        raise ValueError(f"token counts must be >= 0, got {token_counts}")
