"""GPT-2 from scratch, OpenAI-weights compatible, with a KV cache and attention capture.

The core lives here (config, model, cache, sampling, generation, the batched decode loop and
the compute thread it runs on, capture, head roles, tokenizer, weights), with the causal
tools (direct logit attribution, activation patching, input saliency, steering:
`gpt2.attribution`, `gpt2.patching`, `gpt2.saliency`, `gpt2.steer`, on the hookless passes
by parts of `gpt2.passes`); `gpt2.fast` is the speed layer it calls, `gpt2.training` the
trainer.
"""
from . import compute, hub
from .ablate import HeadAblation, ablate_heads
from .attribution import Attribution, attribute
from .batching import BatchedGenerator
from .capture import AttentionCapture, Lens, capture_attention
from .compat import (get_gpt2_tokenizer, load_openai_124m_gpt2, load_openai_355m_gpt2,
                     perform_non_cpu_backend_check, text_to_token_ids, token_ids_to_text)
from .config import PRESETS, GPTConfig
from .fast.kernels import CompileStatus, compile_kernels
from .generate import generate, stream
from .heads import ROLES, head_scores, strongest_roles
from .kv_cache import CacheBatch, KVCache
from .model import GPT
from .patching import Patching, patch, patch_heads, patch_residual
from .saliency import Saliency, saliency
from .steer import Steering, generate_steered, steer, steering_vector
from .tiers import TIERS, quantize_int8, to_bf16
from .tokenizer import EOT_ID, StreamDecoder, Tokenizer, decode, encode, get_tokenizer
from .training import restricted, train
from .weights import BUILTIN, WeightsError, convert, download, load_model, load_tokenizer, save_model

__all__ = [
    "GPT", "GPTConfig", "PRESETS", "BUILTIN", "KVCache", "CacheBatch", "CompileStatus", "compile_kernels",
    "AttentionCapture", "capture_attention", "Lens", "HeadAblation", "ablate_heads", "generate", "stream",
    "BatchedGenerator", "compute", "quantize_int8", "to_bf16",
    "load_model", "TIERS", "save_model", "download", "convert", "WeightsError",
    "get_tokenizer", "encode", "decode", "StreamDecoder", "EOT_ID", "Tokenizer", "load_tokenizer",
    "perform_non_cpu_backend_check", "get_gpt2_tokenizer", "text_to_token_ids",
    "token_ids_to_text", "load_openai_124m_gpt2", "load_openai_355m_gpt2",
    "head_scores", "strongest_roles", "ROLES", "restricted", "train", "hub",
    "Attribution", "attribute", "Patching", "patch", "patch_heads", "patch_residual", "Saliency", "saliency",
    "Steering", "steer", "steering_vector", "generate_steered",
]
