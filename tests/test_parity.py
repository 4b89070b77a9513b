"""Numerical parity with transformers' GPT2LMHeadModel on the same random weights."""
import pytest
import torch

import gpt2
from conftest import hf_reference, save_hf_checkpoint


def _check_logits(model, hf, lengths, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    for T in lengths:
        idx = torch.randint(0, model.config.vocab_size, (batch, T), generator=g)
        with torch.no_grad():
            want = hf(idx).logits
            full = model(idx)
            cache = gpt2.KVCache(model.config, batch, T)
            stepped = torch.cat([model(idx[:, t:t + 1], cache) for t in range(T)], dim=1)
        assert full.shape == (batch, T, model.config.vocab_size)
        torch.testing.assert_close(full, want, atol=1e-4, rtol=0)
        torch.testing.assert_close(stepped, want, atol=1e-4, rtol=0)


def test_tiny_logits_match_transformers(tiny_model, tiny_hf):
    _check_logits(tiny_model, tiny_hf, lengths=[1, 7, 33, 64])


def test_chunked_prefill_matches_full_forward(tiny_model):
    idx = torch.randint(0, 50257, (2, 40))
    cache = gpt2.KVCache(tiny_model.config, 2, 40)
    with torch.no_grad():
        chunks = [tiny_model(idx[:, a:b], cache) for a, b in [(0, 13), (13, 14), (14, 40)]]
        torch.testing.assert_close(torch.cat(chunks, 1), tiny_model(idx), atol=1e-5, rtol=0)


def test_124m_logits_match_transformers(tmp_path):
    directory = save_hf_checkpoint(gpt2.PRESETS["gpt2"], tmp_path, seed=1)
    model, hf = gpt2.load_model(directory), hf_reference(directory)
    assert sum(p.numel() for p in model.parameters()) == model.config.num_params == 124_439_808
    _check_logits(model, hf, lengths=[1, 16, 100], batch=1)
    idx = torch.randint(0, 50257, (1, 12))
    want = hf.generate(idx, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(gpt2.generate(model, idx, 8), want)


@pytest.mark.parametrize("T", [5, 30])
def test_greedy_generate_matches_transformers(tiny_model, tiny_hf, T):
    idx = torch.randint(0, 50257, (2, T), generator=torch.Generator().manual_seed(T))
    want = tiny_hf.generate(idx, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(gpt2.generate(tiny_model, idx, 20), want)


def test_captured_attention_matches_output_attentions(tiny_model, tiny_hf):
    idx = torch.randint(0, 50257, (2, 25))
    with torch.no_grad():
        want = tiny_hf(idx, output_attentions=True).attentions
    with gpt2.capture_attention(tiny_model) as att:
        tiny_model(idx)
    for layer in range(tiny_model.config.n_layer):
        assert att[layer].shape == (2, 4, 25, 25)
        torch.testing.assert_close(att[layer], want[layer], atol=1e-5, rtol=0)


def test_no_mask_buffers_in_state_dict(tiny_model):
    assert list(tiny_model.state_dict()) == [name for name, _ in tiny_model.named_parameters()]
    assert len(tiny_model.state_dict()) == 4 + 12 * tiny_model.config.n_layer
