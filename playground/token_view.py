"""The token view's data: the text as tokens and one head's attention over it, packed for
the browser, which paints on hover, click and arrow keys without asking the server again.

So the browser gets, once per (run, layer, head), the whole lower triangle of the map:
T(T+1)/2 weights in row order (row q holds keys 0..q), one byte each, q = round(255·√w).
The square root spends the byte's steps where most weights are (small ones): the error is
at most √w/255 + 4e-6, so 1e-4 is kept to ±4e-5 and 0.5 to ±0.003. For 1,024 tokens that is
524,800 bytes, 699,736 as base64 in JSON.
While a run streams, only the newest row is sent (`live_payload`).
"""
from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

LEVELS = 255


def quantize(weights: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] -> uint8 codes round(255·√w)."""
    return np.rint(np.sqrt(np.clip(weights, 0.0, 1.0)) * LEVELS).astype(np.uint8)


def dequantize(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> weights (code/255)², as the browser reads them."""
    return (codes.astype(np.float32) / LEVELS) ** 2


def pack_lower(matrix: np.ndarray) -> np.ndarray:
    """[T, T] -> the lower triangle with its diagonal, row after row: [T(T+1)/2]."""
    T = matrix.shape[0]
    if matrix.shape != (T, T):
        raise ValueError(f"the map must be square, got {list(matrix.shape)}")
    return matrix[np.tril_indices(T)]


def encode(codes: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(codes, dtype=np.uint8).tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8)


def run_payload(run_id: str, texts: Sequence[str], n_prompt: int, matrix: np.ndarray, layer: int,
                head: str, selected: int) -> dict:
    """A finished run: every token's text, and the map [T, T] of layer `layer`, head `head`
    (its label, e.g. "head 3" or "mean over heads"); `selected` is the token shown first."""
    if matrix.shape[0] != len(texts):
        raise ValueError(f"{len(texts)} tokens but a map of {matrix.shape[0]} rows")
    if not 0 <= selected < len(texts):
        raise ValueError(f"selected token {selected} is outside 0..{len(texts) - 1}")
    return {"run": run_id, "live": False, "tokens": list(texts), "n_prompt": n_prompt, "layer": layer,
            "head": head, "selected": selected, "weights": encode(quantize(pack_lower(matrix)))}


def live_payload(run_id: str, texts: Sequence[str], n_prompt: int, position: int, row: np.ndarray,
                 layer: int, head: str) -> dict:
    """A run still writing: the text so far, and `row`, what token `position` attended to
    (keys 0..position) when it chose the newest token (position + 1)."""
    if len(row) != position + 1 or position + 1 >= len(texts):
        raise ValueError(f"row {position} needs {position + 1} weights and a token after it, got "
                         f"{len(row)} weights for {len(texts)} tokens")
    return {"run": run_id, "live": True, "tokens": list(texts), "n_prompt": n_prompt, "layer": layer,
            "head": head, "selected": position, "weights": encode(quantize(row))}
