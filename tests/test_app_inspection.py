"""Windowing, the bounded run store, and the service's runs against the library."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import gpt2
from playground.inspection import MAX_WINDOW, RunStore, window
from playground.models import ModelTable
from playground.service import Service, parse_head
from playground.validate import Settings

CONFIG = gpt2.GPTConfig(vocab_size=50257, context_length=96, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = gpt2.GPT(CONFIG)
    for block in model.h:  # peaked attention, so heads differ
        block.attn.c_attn.weight.data.mul_(20)
    return gpt2.save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture
def service(checkpoint):
    return Service(ModelTable({"tiny": str(checkpoint)}), RunStore())


def settings(prompt="The cat sat on the mat. The cat", seed=3, **kw) -> Settings:
    return Settings(**{**dict(prompt=prompt, model="tiny", temperature=0.9, top_k=40, top_p=0.95,
                              max_new_tokens=8, seed=seed), **kw})


def finish(service, s):
    text, run_id = list(service.generate(s))[-1]
    return text, service.run(run_id)


# -- windowing ------------------------------------------------------------------------------
def test_window_defaults_to_the_end_and_clamps():
    assert window(200, None, 48) == window(200, 152, 48)
    assert (window(200, None, 48).start, window(200, None, 48).stop) == (152, 200)
    assert window(10, None, 48).size == 10  # never larger than the text
    assert window(10, 7, 4).start == 6  # slid back to fit
    assert window(10, -5, 4).start == 0
    assert window(5000, 0, 1024).size == MAX_WINDOW  # never a huge matrix
    assert window(10, 0, 0).size == 1
    assert "tokens 152–199 of 200" in window(200, None, 48).describe()
    assert window(10, None, 48).describe() == "All 10 tokens shown."
    with pytest.raises(ValueError):
        window(0, None, 4)


def test_parse_head():
    assert parse_head("mean", 4) is None and parse_head(None, 4) is None
    assert parse_head("head 3", 4) == parse_head("3", 4) == parse_head(3, 4) == 3
    for bad in ("4", "-1", "x"):
        with pytest.raises(ValueError, match="head"):
            parse_head(bad, 4)


# -- runs -----------------------------------------------------------------------------------
def test_run_text_and_maps_match_the_library(service, checkpoint):
    text, run = finish(service, settings())
    model = gpt2.load_model(checkpoint)
    prompt = gpt2.encode("The cat sat on the mat. The cat")
    out = gpt2.generate(model, torch.tensor([prompt]), 8, temperature=0.9, top_k=40, top_p=0.95, seed=3)
    assert run.ids == out[0].tolist() and text == gpt2.decode(run.ids[len(prompt):])
    assert (run.n_prompt, run.n_generated, run.seed) == (len(prompt), 8, 3)
    with gpt2.capture_attention(model) as att:
        model(out)
    full = att[1][0]  # [H, T, T] from one plain forward pass
    view = service.view(run, 1, 2, 4, 6)
    assert (view.window.start, view.window.stop) == (4, 10)
    torch.testing.assert_close(torch.from_numpy(view.weights), full[2, 4:10, 4:10], atol=1e-5, rtol=0)
    mean = service.view(run, 1, None, 4, 6)
    torch.testing.assert_close(torch.from_numpy(mean.weights), full[:, 4:10, 4:10].mean(0), atol=1e-5, rtol=0)
    heads = service.all_heads(run, 0, None, 100)
    assert heads.weights.shape == (4, len(run.ids), len(run.ids))


def test_candidates_are_the_models_predictions(service, checkpoint):
    _, run = finish(service, settings(temperature=0.0))
    assert len(run.candidates) == len(run.ids) - 1
    for position in range(run.n_prompt, len(run.ids)):  # greedy: the chosen token is the top one
        c = run.candidates[position - 1]
        assert c.ids[0] == run.ids[position] and c.probs[0] == pytest.approx(c.chosen_prob)
        assert c.probs == sorted(c.probs, reverse=True)


def test_concurrent_runs_each_get_their_own_text_and_maps(service):
    prompts = [f"Request number {i} says hello to" for i in range(8)]
    alone = [finish(service, settings(p, seed=i)) for i, p in enumerate(prompts)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda a: finish(service, settings(a[1], seed=a[0])), enumerate(prompts)))
    for (text, run), (text2, run2) in zip(alone, together):
        assert text == text2 and run.ids == run2.ids
        assert run2.capture.num_tokens == len(run2.ids)
        torch.testing.assert_close(run.attention(1, window(len(run.ids), 0, 64)),
                                   run2.attention(1, window(len(run2.ids), 0, 64)))


def test_store_keeps_recent_runs_within_budget(service):
    _, run = finish(service, settings())
    store = RunStore(max_runs=2)
    ids = [store.add(run) for _ in range(3)]
    assert store.get(ids[0]) is None and store.get(ids[2]) is run and len(store) == 2
    small = RunStore(max_bytes=run.nbytes() + 1)
    first, second = small.add(run), small.add(run)
    assert small.get(first) is None and small.get(second) is run
    assert store.get("made-up") is None and store.get(None) is None
    store.drop_model("other")
    assert store.get(ids[2]) is run
    store.drop_model("tiny")  # the table dropped the model: its runs go too
    assert len(store) == 0
    with pytest.raises(LookupError, match="unknown to the server"):
        service.run("made-up")
    with pytest.raises(LookupError, match="Generate some text first"):
        service.run(None)


def test_inspect_text_without_generation(service):
    run = service.inspect_text("one two three four", "tiny")
    assert run.ids == gpt2.encode("one two three four") and run.capture.num_tokens == 4
    assert service.view(run, 0, 1, 0, 4).weights.shape == (4, 4)


def test_long_prompts_keep_their_end_and_say_so(service):
    prompt = " ".join(f"word{i}" for i in range(200))
    _, run = finish(service, settings(prompt))
    assert run.n_prompt == CONFIG.context_length - 8
    assert run.dropped == len(gpt2.encode(prompt)) - run.n_prompt
    assert run.ids[:run.n_prompt] == gpt2.encode(prompt)[-run.n_prompt:]


def test_a_run_pushed_out_by_other_users_is_recomputed_for_its_owner(checkpoint):
    """Issue 14 item 9: 40 runs of other users used to expire a session's maps. The store
    keeps the capture of the 4 latest runs here; the owner of an older one gets it back,
    recomputed in one forward pass: same tokens and settings, same maps and candidates."""
    service = Service(ModelTable({"tiny": str(checkpoint)}), RunStore(max_runs=4))
    text, run_id = list(service.generate(settings(seed=5)))[-1]
    original = service.run(run_id)
    for i in range(40):
        list(service.generate(settings(f"Another user, number {i}", seed=i, max_new_tokens=3)))
    assert service.runs.get(run_id) is None  # its capture was pushed out
    again = service.run(run_id)
    assert (again.ids, again.n_prompt, again.seed, again.seconds, again.model_name) == \
        (original.ids, original.n_prompt, original.seed, original.seconds, original.model_name)
    every = window(len(original.ids), 0, MAX_WINDOW)
    for layer in range(CONFIG.n_layer):
        torch.testing.assert_close(again.attention(layer, every), original.attention(layer, every),
                                   atol=1e-5, rtol=0)
    assert [c.ids for c in again.candidates] == [c.ids for c in original.candidates]
    for a, b in zip(again.candidates, original.candidates):
        assert max(abs(x - y) for x, y in zip(a.probs + [a.chosen_prob], b.probs + [b.chosen_prob])) < 1e-5
    assert service.runs.get(run_id) is again  # kept again, under the same id


def test_records_are_bounded_too(checkpoint):
    service = Service(ModelTable({"tiny": str(checkpoint)}), RunStore(max_runs=1, max_records=3))
    ids = [list(service.generate(settings(seed=i, max_new_tokens=2)))[-1][1] for i in range(5)]
    with pytest.raises(LookupError, match="unknown to the server"):
        service.run(ids[0])
    assert service.run(ids[2]).ids == service.run(ids[2]).ids
