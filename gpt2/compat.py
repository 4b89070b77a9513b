"""The seed project's function names, as thin shims over the real API.

The seed's README example runs with only its import line changed to `from gpt2 import ...`.
"""
from __future__ import annotations

import tiktoken
import torch

from .model import GPT
from .tokenizer import EOT, get_tokenizer
from .weights import load_model


def perform_non_cpu_backend_check(backend: str = "cuda", raise_on_non_availability: bool = False) -> str:
    """'cuda' or 'mps' when that backend is available, else 'cpu' (the seed raised here)."""
    if backend == "cuda" and torch.cuda.is_available():
        return "cuda"
    if backend == "mps" and torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    if raise_on_non_availability:
        raise RuntimeError(f"No {backend} backend was found")
    return "cpu"


def get_gpt2_tokenizer() -> tiktoken.Encoding:
    return get_tokenizer()


def text_to_token_ids(text: str, tokenizer: tiktoken.Encoding) -> torch.Tensor:
    """Text -> [1, T] ids; `<|endoftext|>` is the special token, as in the seed."""
    return torch.tensor(tokenizer.encode(text, allowed_special={EOT})).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: tiktoken.Encoding) -> str:
    return tokenizer.decode(token_ids.squeeze(0).tolist())


# compile=False: the seed's callers seed torch's global RNG and expect the same text each
# time, and a background build of the decode kernels would switch the math (by rounding
# only) between one call and the next.
def load_openai_124m_gpt2(device: str, eval_mode: bool = False) -> GPT:
    return _train_mode_unless(load_model("gpt2", device=device, compile=False), eval_mode)


def load_openai_355m_gpt2(device: str, eval_mode: bool = False) -> GPT:
    """`load_model("gpt2-medium")`, left in train mode unless `eval_mode`, as the seed did."""
    return _train_mode_unless(load_model("gpt2-medium", device=device, compile=False), eval_mode)


def _train_mode_unless(model: GPT, eval_mode: bool) -> GPT:
    return model.eval() if eval_mode else model.train()
