"""Issue 18 in the app: `/logit_lens` and `/ablate` against transformers on random weights,
knock-outs under concurrent requests, and what the lens capture costs a stored run."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import gpt2
from playground import validate
from playground.inspection import RunStore
from playground.models import ModelTable
from playground.service import Service
from playground.validate import Settings
from test_explain import hf_lens

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"
MODEL = "local:tiny"


def hf_ablated_greedy(hf, ids: list[int], n: int, heads: dict[int, list[int]]) -> list[int]:
    """transformers' greedy ids with `heads` zeroed by a forward pre-hook on attn.c_proj."""
    hd = hf.config.n_embd // hf.config.n_head

    def zero(layer):
        def hook(module, args):
            x = args[0].clone()
            for h in heads.get(layer, []):
                x[..., h * hd:(h + 1) * hd] = 0
            return (x, *args[1:])
        return hook

    handles = [hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero(layer)) for layer in heads]
    try:
        out = list(ids)
        with torch.no_grad():
            for _ in range(n):
                out.append(int(hf(torch.tensor([out])).logits[0, -1].argmax()))
        return out[len(ids):]
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def service(tiny_checkpoint):
    """The app's test model (sharp attention, so knocking out heads changes the text)."""
    return Service(ModelTable({"tiny": str(tiny_checkpoint)}), RunStore())


@pytest.fixture(scope="module")
def hf(tiny_checkpoint):
    from conftest import hf_reference

    return hf_reference(tiny_checkpoint)


def settings(prompt=PROMPT, **kw) -> Settings:
    return Settings(**{**dict(prompt=prompt, model="tiny", temperature=0.0, top_k=0, top_p=1.0,
                              max_new_tokens=10, seed=0), **kw})


# -- the service: what the page and the API share -----------------------------------------------
def test_lens_of_any_text_equals_transformers(service, hf):
    run = service.inspect_text(PROMPT, "tiny")
    lens = service.lens(run, slice(0, len(run.ids)), 5)
    want = hf_lens(hf, torch.tensor([run.ids]))  # [L, T, vocab]
    top = torch.topk(want, 5, dim=-1)
    torch.testing.assert_close(lens.probs[:, 0], top.values, atol=1e-4, rtol=0)
    assert torch.equal(lens.ids[:, 0], top.indices)


def test_a_generated_run_keeps_the_lens_and_counts_it(service, hf):
    """A finished run's lens comes from its capture (no second pass), equals transformers over
    its whole text, and the store's budget counts 4 * n_embd bytes per token and block."""
    last = list(service.generate(settings()))[-1]
    run = service.run(last.run_id)
    c = run.config
    kept = sum(t.numel() * t.element_size() for outs in run.capture._out.values() for t in outs)
    assert kept == 4 * c.n_embd * c.n_layer * len(run.ids)
    assert run.nbytes() == 4 * len(run.ids) * c.n_embd * (3 * c.n_layer + c.n_layer)
    lens = service.lens(run, slice(0, len(run.ids)), 3)
    top = torch.topk(hf_lens(hf, torch.tensor([run.ids])), 3, dim=-1)
    torch.testing.assert_close(lens.probs[:, 0], top.values, atol=1e-4, rtol=0)


def test_greedy_knockout_equals_transformers(service, hf):
    heads = {0: [1, 3], 1: [2]}
    out = service.ablate(settings(max_new_tokens=12), heads)
    ids = gpt2.encode(PROMPT)
    assert out.baseline == hf_ablated_greedy(hf, ids, 12, {})
    assert out.ablated == hf_ablated_greedy(hf, ids, 12, heads)
    assert out.ablated != out.baseline  # the knock-out changed something on these weights
    assert out.first_difference == next(i for i, (a, b) in enumerate(zip(out.baseline, out.ablated)) if a != b)


def test_knockouts_under_concurrent_requests(service, hf):
    """Eight requests at once, each with its own heads (or none) and settings: each gets what it
    would alone, and transformers' ids for the greedy ones."""
    cases = [({0: [h]}, 0.0) for h in range(4)] + [({1: [h]}, 0.9) for h in range(4)]
    alone = [service.ablate(settings(max_new_tokens=8, temperature=t, seed=i), heads)
             for i, (heads, t) in enumerate(cases)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda a: service.ablate(settings(max_new_tokens=8, temperature=a[1][1],
                                                                   seed=a[0]), a[1][0]), enumerate(cases)))
    assert [(o.baseline, o.ablated) for o in together] == [(o.baseline, o.ablated) for o in alone]
    ids = gpt2.encode(PROMPT)
    for (heads, t), out in zip(cases, together):
        if t == 0:
            assert out.ablated == hf_ablated_greedy(hf, ids, 8, heads)


def test_chosen_probs_with_and_without_a_knockout(service, hf):
    ids = gpt2.encode(PROMPT)
    heads = {1: [0, 1]}
    base, ablated = service.chosen_probs("tiny", ids, None), service.chosen_probs("tiny", ids, heads)
    with torch.no_grad():
        want = torch.softmax(hf(torch.tensor([ids])).logits[0, :-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.from_numpy(base), want, atol=1e-5, rtol=0)
    assert base.shape == ablated.shape == (len(ids) - 1,) and not (base == ablated).all()


@pytest.mark.parametrize("value, message", [
    ([], "heads is empty"), ("", "heads is empty"), (["1"], 'must be "layer.head"'),
    (["a.b"], 'must be "layer.head"'), ([1.0], 'must be "layer.head"'), (["2.0"], "layer must be in 0..1"),
    (["0.4"], "head must be in 0..3"), (["0.0"] * 65, "at most 64"), (7, "must be a list"),
])
def test_bad_heads_are_refused_clearly(value, message):
    with pytest.raises(ValueError, match=message):
        validate.heads(value, 2, 4)


def test_heads_parse_from_a_list_or_the_page_field():
    assert validate.heads(["1.2", "0.3", "1.0", "1.2"], 2, 4) == {0: [3], 1: [0, 2]}
    assert validate.heads("1.0, 1.2 0.3", 2, 4) == {0: [3], 1: [0, 2]}
    assert validate.heads_text({0: [3], 1: [0, 2]}) == "0.3, 1.0, 1.2"


# -- the running app, through gradio_client --------------------------------------------------------
def test_logit_lens_endpoint_equals_transformers(client, tiny_checkpoint):
    from conftest import hf_reference

    hf = hf_reference(tiny_checkpoint)
    out = client.predict(text=PROMPT, model=MODEL, position=-1, k=4, api_name="/logit_lens")
    ids = gpt2.encode(PROMPT)
    assert out["position"] == len(ids) - 1
    want = torch.topk(hf_lens(hf, torch.tensor([ids]))[:, -1], 4, dim=-1)  # [L, k]
    assert [entry["layer"] for entry in out["layers"]] == [0, 1]
    for layer, entry in enumerate(out["layers"]):
        assert [t["id"] for t in entry["top"]] == want.indices[layer].tolist()
        assert [t["token"] for t in entry["top"]] == [gpt2.decode([i]) for i in want.indices[layer].tolist()]
        torch.testing.assert_close(torch.tensor([t["prob"] for t in entry["top"]]), want.values[layer],
                                   atol=1e-4, rtol=0)
    third = client.predict(text=PROMPT, model=MODEL, position=2, k=1, api_name="/logit_lens")
    assert third["position"] == 2 and [len(e["top"]) for e in third["layers"]] == [1, 1]


def test_ablate_endpoint_equals_transformers(client, tiny_checkpoint):
    from conftest import hf_reference

    hf = hf_reference(tiny_checkpoint)
    out = client.predict(prompt=PROMPT, model=MODEL, heads=["0.1", "1.2"], max_new_tokens=8, temperature=0,
                         top_k=0, top_p=1, seed=0, api_name="/ablate")
    ids = gpt2.encode(PROMPT)
    assert set(out) == {"baseline", "ablated", "baseline_ids", "ablated_ids"}
    assert out["baseline_ids"] == hf_ablated_greedy(hf, ids, 8, {})
    assert out["ablated_ids"] == hf_ablated_greedy(hf, ids, 8, {0: [1], 1: [2]})
    assert out["baseline"] == gpt2.decode(out["baseline_ids"]) and out["ablated"] == gpt2.decode(out["ablated_ids"])


@pytest.mark.parametrize("api_name, kwargs, message", [
    ("/logit_lens", dict(text=PROMPT, model=MODEL, position=-1, k=21), "k must be between 1 and 20"),
    ("/logit_lens", dict(text=PROMPT, model=MODEL, position=99, k=3), "position must be between"),
    ("/ablate", dict(prompt=PROMPT, model=MODEL, heads=["9.0"], max_new_tokens=4, temperature=0, top_k=0,
                     top_p=1, seed=0), "layer must be in 0..1"),
    ("/ablate", dict(prompt=PROMPT, model=MODEL, heads=[], max_new_tokens=4, temperature=0, top_k=0,
                     top_p=1, seed=0), "heads is empty"),
])
def test_explain_endpoints_refuse_bad_input_clearly(client, api_name, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(**kwargs, api_name=api_name)


def test_side_by_side_marks_the_first_difference_and_escapes_text():
    from playground import explain

    a, b = gpt2.encode(" <b>bold</b> and"), gpt2.encode(" <b>bold</b> or")
    out = explain.side_by_side("<script>x</script>", ("as is", "knocked out"), a, b)
    assert "<script>" not in out and "&lt;script&gt;" in out and "<b>bold" not in out
    first = explain.first_difference(a, b)
    assert out.count('class="first-diff"') == 2 and f'data-first-diff="{first}"' in out
    assert explain.first_difference([1, 2], [1, 2]) is None and explain.first_difference([1, 2], [1]) == 1
    assert explain.file_name("gpt2 · fp32", "layer5", "head 1") == "gpt2-fp32-layer5-head-1"
