"""The token view's payload: how a map is packed for the browser, which reads it back with
the same index arithmetic (row q starts at q(q+1)/2)."""
from __future__ import annotations

import numpy as np
import pytest

from playground import token_view


def random_map(T: int, seed: int = 0) -> np.ndarray:
    """A causal attention map [T, T]: rows sum to 1 over keys 0..q."""
    rng = np.random.default_rng(seed)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), rng.normal(size=(T, T)) * 3, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def test_quantization_keeps_small_weights_fine():
    w = np.array([0.0, 1e-4, 0.01, 0.5, 1.0])
    codes = token_view.quantize(w)
    assert codes[0] == 0 and codes[-1] == 255
    back = token_view.dequantize(codes)
    assert np.all(np.abs(back - w) <= np.sqrt(w) / 255 + 0.25 / 255**2 + 1e-6)  # half a step of √w, squared
    assert abs(back[1] - 1e-4) < 4e-5 and abs(back[3] - 0.5) < 0.003


def test_run_payload_packs_every_row_in_order():
    T = 37
    matrix = random_map(T)
    texts = [f"t{i}" for i in range(T)]
    payload = token_view.run_payload("run", texts, 5, matrix, 1, "head 2", selected=T - 1)
    assert (payload["tokens"], payload["n_prompt"]) == (texts, 5)
    assert payload["selected"] == T - 1 and not payload["live"]
    codes = token_view.decode(payload["weights"])
    assert len(codes) == T * (T + 1) // 2
    weights = token_view.dequantize(codes)
    for q in (0, 1, 17, T - 1):  # row q: keys 0..q, from offset q(q+1)/2
        row = weights[q * (q + 1) // 2:q * (q + 1) // 2 + q + 1]
        np.testing.assert_allclose(row, matrix[q, :q + 1], atol=0.004)
    for k in (0, 20, T - 1):  # column k: queries k..T-1
        queries = np.arange(k, T)
        np.testing.assert_allclose(weights[queries * (queries + 1) // 2 + k], matrix[k:, k], atol=0.004)


def test_a_whole_context_stays_under_a_megabyte():
    payload = token_view.run_payload("run", ["x"] * 1024, 1, random_map(1024), 0, "mean over heads", 1023)
    assert len(token_view.decode(payload["weights"])) == 524_800
    assert len(payload["weights"]) == 699_736  # base64, as the module docstring says


def test_live_payload_is_one_row():
    row = random_map(6)[4, :5]
    payload = token_view.live_payload("run", list("abcdef"), 2, 4, row, 0, "head 0")
    assert payload["live"] and payload["selected"] == 4
    np.testing.assert_allclose(token_view.dequantize(token_view.decode(payload["weights"])), row, atol=0.004)


def test_payloads_refuse_inconsistent_input():
    with pytest.raises(ValueError, match="3 tokens but a map of 4 rows"):
        token_view.run_payload("r", list("abc"), 1, random_map(4), 0, "head 0", 0)
    with pytest.raises(ValueError, match="outside 0..2"):
        token_view.run_payload("r", list("abc"), 1, random_map(3), 0, "head 0", 3)
    with pytest.raises(ValueError, match="square"):
        token_view.pack_lower(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="needs 3 weights"):
        token_view.live_payload("r", list("abcd"), 1, 2, np.ones(2), 0, "head 0")
    with pytest.raises(ValueError, match="a token after it"):
        token_view.live_payload("r", list("abc"), 1, 2, np.ones(3), 0, "head 0")
