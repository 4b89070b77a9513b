"""Logit lens and head knock-out against transformers on the same random weights, and their
isolation per request (issue 18's library parts)."""
from __future__ import annotations

import threading

import pytest
import torch

import gpt2

TEXT_IDS = torch.randint(0, 50257, (1, 40), generator=torch.Generator().manual_seed(3))


def hf_lens(hf, ids: torch.Tensor) -> torch.Tensor:
    """transformers' hidden states after each block through ln_f and the LM head: [L, T, vocab]
    probabilities. Its last hidden state already has ln_f applied."""
    with torch.no_grad():
        states = hf(ids, output_hidden_states=True).hidden_states  # L + 1: embeddings first
        n = len(states) - 1
        finals = [hf.transformer.ln_f(states[i + 1]) if i < n - 1 else states[n] for i in range(n)]
        return torch.stack([torch.softmax(hf.lm_head(h)[0], dim=-1) for h in finals])


def test_logit_lens_equals_transformers_hidden_states(tiny_model, tiny_hf):
    with gpt2.capture_attention(tiny_model, residuals=True) as att, torch.no_grad():
        tiny_model(TEXT_IDS)
    lens = att.lens(k=5)
    want = hf_lens(tiny_hf, TEXT_IDS)  # [L, T, vocab]
    assert lens.ids.shape == (tiny_model.config.n_layer, 1, 40, 5)
    top = torch.topk(want, 5, dim=-1)
    torch.testing.assert_close(lens.probs[:, 0], top.values, atol=1e-4, rtol=0)
    assert torch.equal(lens.ids[:, 0], top.indices)
    rows = att.lens(slice(10, 13), k=3)  # a window of positions
    assert torch.equal(rows.ids, lens.ids[:, :, 10:13, :3])
    # the last block's row is the model's own prediction
    torch.testing.assert_close(lens.probs[-1], torch.topk(att.next_token_probs(), 5).values, atol=1e-6, rtol=0)


def test_the_lens_of_a_generation_needs_no_second_pass(tiny_model):
    idx = TEXT_IDS[:, :12]
    with gpt2.capture_attention(tiny_model, residuals=True) as att:
        ids = gpt2.generate(tiny_model, idx, 10, capture=att)
    with gpt2.capture_attention(tiny_model, residuals=True) as ref, torch.no_grad():
        tiny_model(ids)
    a, b = att.lens(k=4), ref.lens(k=4)
    torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)


def test_the_lens_costs_one_row_per_token_and_block(tiny_model):
    c = tiny_model.config
    with gpt2.capture_attention(tiny_model) as plain, torch.no_grad():
        tiny_model(TEXT_IDS)
    with gpt2.capture_attention(tiny_model, residuals=True) as full, torch.no_grad():
        tiny_model(TEXT_IDS)
    kept = lambda att: sum(t.numel() * t.element_size() for outs in att._out.values() for t in outs)  # noqa: E731
    assert kept(plain) == 4 * 40 * c.n_embd  # the last block only (next-token candidates)
    assert kept(full) == 4 * 40 * c.n_embd * c.n_layer  # 4 * n_embd bytes per token and block
    with pytest.raises(KeyError, match="residuals=True"):
        plain.lens()


def hf_greedy(hf, idx: torch.Tensor, n: int, heads: dict[int, list[int]]) -> torch.Tensor:
    """Greedy decoding in transformers with `heads` zeroed by forward pre-hooks on attn.c_proj
    (the merged head outputs), recomputing the whole text each step."""
    hd = hf.config.n_embd // hf.config.n_head

    def zero(layer):
        def hook(module, args):
            merged = args[0].clone()
            for h in heads[layer]:
                merged[..., h * hd:(h + 1) * hd] = 0
            return (merged, *args[1:])
        return hook

    handles = [hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero(layer)) for layer in heads]
    try:
        ids = idx
        with torch.no_grad():
            for _ in range(n):
                ids = torch.cat([ids, hf(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ids
    finally:
        for handle in handles:
            handle.remove()


KNOCKOUTS = [{0: [1]}, {1: [0, 3]}, {0: [0, 1, 2, 3], 1: [2]}]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """Random weights with sharp attention (initializer_range 0.3), so heads matter: on GPT-2's
    own init a random model repeats one token whatever is knocked out."""
    from conftest import save_random_gpt2

    return save_random_gpt2(tmp_path_factory.mktemp("sharp") / "sharp", n_positions=128)


@pytest.fixture(scope="module", params=["compiled", "eager"])
def sharp(request, sharp_dir):
    from conftest import compiled

    model = gpt2.load_model(sharp_dir, compile=request.param == "compiled")
    return compiled(model) if request.param == "compiled" else model


@pytest.mark.parametrize("heads", KNOCKOUTS, ids=[str(h) for h in KNOCKOUTS])
def test_knocked_out_heads_equal_transformers(sharp, sharp_dir, heads):
    from conftest import hf_reference

    idx = TEXT_IDS[:, :10]
    with gpt2.ablate_heads(sharp, heads) as ablation:
        ours = gpt2.generate(sharp, idx, 12, ablation=ablation)
    assert torch.equal(ours, hf_greedy(hf_reference(sharp_dir), idx, 12, heads))
    assert not torch.equal(ours, gpt2.generate(sharp, idx, 12))  # the knock-out mattered


def test_a_knock_out_changes_only_its_own_request(sharp):
    """Two requests at once on the same model, one knocking heads out: each gets what it gets
    alone (the hooks are tied to the request's cache, not to the model or the thread)."""
    idx = TEXT_IDS[:, :10]
    heads = {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
    alone_plain = gpt2.generate(sharp, idx, 16)
    with gpt2.ablate_heads(sharp, heads) as ablation:
        alone_ablated = gpt2.generate(sharp, idx, 16, ablation=ablation)
    assert not torch.equal(alone_plain, alone_ablated)
    results: dict[str, list] = {"plain": [], "ablated": []}
    start = threading.Barrier(2)

    def plain():
        start.wait()
        for _ in range(3):
            results["plain"].append(gpt2.generate(sharp, idx, 16))

    def ablated():
        with gpt2.ablate_heads(sharp, heads) as ablation:
            start.wait()
            for _ in range(3):
                out = []
                for t in gpt2.stream(sharp, idx, 16, ablation=ablation):
                    out.append(t)
                results["ablated"].append(torch.cat([idx, torch.stack(out, 1)], 1))

    threads = [threading.Thread(target=plain), threading.Thread(target=ablated)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, alone_plain) for r in results["plain"])
    assert all(torch.equal(r, alone_ablated) for r in results["ablated"])


def test_a_plain_forward_pass_inside_the_with(tiny_model):
    with torch.no_grad():
        before = tiny_model(TEXT_IDS)
        with gpt2.ablate_heads(tiny_model, {1: [2]}):
            during = tiny_model(TEXT_IDS)
        after = tiny_model(TEXT_IDS)
    assert not torch.allclose(before, during) and torch.equal(before, after)
    assert sum(len(m._forward_pre_hooks) for m in tiny_model.modules()) == 0


@pytest.mark.parametrize("heads, message", [({5: [0]}, "layer must be in 0..1"),
                                            ({0: [4]}, "heads of layer 0 must be in 0..3")])
def test_bad_knock_outs(tiny_model, heads, message):
    with pytest.raises(ValueError, match=message), gpt2.ablate_heads(tiny_model, heads):
        pass


@pytest.mark.parametrize("tier", ["bf16", "int8"])
def test_knock_out_on_the_fast_tiers(tiny_dir, tier):
    model = gpt2.load_model(tiny_dir, compile=False, **gpt2.TIERS[tier])
    idx = TEXT_IDS[:, :10]
    with gpt2.ablate_heads(model, {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}) as ablation:
        ablated = gpt2.generate(model, idx, 8, ablation=ablation)
    with torch.no_grad(), gpt2.ablate_heads(model, {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}):
        logits = model(ablated[:, :-1])
    assert torch.equal(logits[0, 9:].argmax(-1), ablated[0, 10:])  # the same knock-out, recomputed
