"""`/token_attention` against `transformers`' own attention probabilities (eager attention,
`output_attentions=True`) on the same random checkpoint, over a text far longer than the
heatmap's window."""
from __future__ import annotations

import pytest
import torch

import gpt2
from conftest import hf_reference
from playground import tokens

TEXT = "The rain in Spain stays mainly in the plain, said the man from Madrid. " * 30  # ~500 tokens


@pytest.fixture(scope="module")
def reference(long_checkpoint) -> tuple[list[int], tuple[torch.Tensor, ...]]:
    ids = gpt2.encode(TEXT)
    with torch.no_grad():
        out = hf_reference(long_checkpoint)(torch.tensor([ids]), output_attentions=True)
    return ids, tuple(layer[0] for layer in out.attentions)  # per layer [H, T, T]


@pytest.mark.parametrize("head", ["1", "mean"])
@pytest.mark.parametrize("direction", ["from", "to"])
def test_token_attention_equals_transformers(client, reference, head, direction):
    ids, attentions = reference
    T = len(ids)
    assert T > 400
    for layer in (0, 1):
        maps = attentions[layer]
        expected_map = maps.mean(0) if head == "mean" else maps[int(head)]  # [T, T]
        for position in (0, 1, T // 2, T - 1, -1):
            got = client.predict(text=TEXT, model="local:long", layer=layer, head=head, position=position,
                                 direction=direction, api_name="/token_attention")
            p = position % T
            assert set(got) == {"tokens", "weights", "position"} and got["position"] == p
            if direction == "from":
                expected, labels = expected_map[p, :p + 1], tokens.labels(ids[:p + 1])
            else:
                expected, labels = expected_map[p:, p], tokens.labels(ids[p:])
            assert got["tokens"] == labels
            torch.testing.assert_close(torch.tensor(got["weights"]), expected, atol=1e-4, rtol=0)
