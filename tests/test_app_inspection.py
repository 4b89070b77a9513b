"""Windowing, the bounded run store, and the service's runs against the library."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import gpt2
from playground import tokens
from playground.inspection import MAX_WINDOW, RunStore, strongest_head, window
from playground.models import ModelTable, offered_sources
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
    last = list(service.generate(s))[-1]
    assert last.stored
    return last.text, service.run(last.run_id)


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
    torch.testing.assert_close(torch.from_numpy(view.earlier), full[2, 4:10, :4].sum(-1), atol=1e-5, rtol=0)
    assert abs(view.weights.sum(-1) + view.earlier - 1).max() < 1e-5  # every row sums to 1
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
    """Concurrent generations are rows of the model's one decode loop (batched steps once the
    kernels are built), and each gets the text, maps and candidates it gets alone."""
    loop = service.models.loop("tiny")
    assert loop.model.compile_status.wait(timeout=600), loop.model.compile_status.error
    prompts = [f"Request number {i} says hello to" for i in range(8)]
    alone = [finish(service, settings(p, seed=i, max_new_tokens=24)) for i, p in enumerate(prompts)]
    widest, running = [0], [True]

    def watch() -> None:
        while running[0]:
            widest[0] = max(widest[0], loop.active)

    watcher = ThreadPoolExecutor(1).submit(watch)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda a: finish(service, settings(a[1], seed=a[0], max_new_tokens=24)),
                                 enumerate(prompts)))
    running[0] = False
    watcher.result()
    assert widest[0] > 1  # they shared steps
    for (text, run), (text2, run2) in zip(alone, together):
        assert text == text2 and run.ids == run2.ids
        assert run2.capture.num_tokens == len(run2.ids)
        torch.testing.assert_close(run.attention(1, window(len(run.ids), 0, 64))[0],
                                   run2.attention(1, window(len(run2.ids), 0, 64))[0], rtol=0, atol=1e-5)
        assert [c.ids for c in run.candidates] == [c.ids for c in run2.candidates]
        for c, c2 in zip(run.candidates, run2.candidates):
            assert c.probs == pytest.approx(c2.probs, abs=1e-5)


def test_a_dropped_model_finishes_its_running_generation(checkpoint):
    """The table drops a model while someone generates with it: that generation ends normally,
    new requests load the model again, and the old loop leaves the compute thread."""
    table = ModelTable({"tiny": str(checkpoint), "other": str(checkpoint)}, max_bytes=1)
    service = Service(table, RunStore())
    steps = service.generate(settings(max_new_tokens=16))
    first = [next(steps), next(steps)]
    old = table.loop("tiny")
    table.get("other")  # does not fit beside it: "tiny" is dropped
    assert not table.loaded("tiny")
    rest = list(steps)
    assert first[-1].n_generated == 1 and rest[-1].stored and rest[-1].n_generated == 16
    assert table.loop("tiny") is not old
    assert old not in gpt2.compute.worker()._loops


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


def test_an_inspection_keeps_only_what_its_endpoint_reads(service):
    """/attention keeps one layer's queries and keys, no block outputs: the same weights as a
    capture of everything, for a fraction of the memory; /logit_lens keeps the blocks' outputs."""
    ids = gpt2.encode("one two three four five six seven eight")
    everything = service.inspect_ids("tiny", ids)
    one_layer = service.inspect_ids("tiny", ids, layers=[1], residuals=False)
    assert np.array_equal(service.view(one_layer, 1, None, 0, 8).weights, service.view(everything, 1, None, 0, 8).weights)
    assert one_layer.nbytes() < everything.nbytes()
    with pytest.raises(KeyError):
        one_layer.capture.probs(0)
    lens = service.inspect_ids("tiny", ids, layers=[0])
    assert torch.equal(service.lens(lens, slice(2, 3), 3).ids, service.lens(everything, slice(2, 3), 3).ids)


def test_long_prompts_keep_their_end_and_say_so(service):
    prompt = " ".join(f"word{i}" for i in range(200))
    _, run = finish(service, settings(prompt))
    assert run.n_prompt == CONFIG.context_length - 8
    assert run.dropped == len(gpt2.encode(prompt)) - run.n_prompt
    assert run.ids[:run.n_prompt] == gpt2.encode(prompt)[-run.n_prompt:]


# -- whole-text reads in blocks of rows: roles, the token view's map, one token's attention ------
@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 5 query rows, so short texts cross several; every read is recorded."""
    from gpt2.capture import AttentionCapture

    from playground import inspection

    monkeypatch.setattr(inspection, "ROW_CHUNK", 5)
    reads = []
    real = AttentionCapture.probs

    def probs(self, layer, rows=None):
        out = real(self, layer, rows)
        reads.append(out.shape[-2])
        return out

    monkeypatch.setattr(AttentionCapture, "probs", probs)
    return reads


def test_roles_are_scored_once_per_run_in_blocks_of_rows(service, small_blocks):
    _, run = finish(service, settings("The cat sat on the mat. The cat sat on the mat. The cat",
                                      max_new_tokens=10))
    reads_before = len(small_blocks)
    roles = run.roles
    assert small_blocks[reads_before:] and max(small_blocks[reads_before:]) <= 5  # never a whole map
    full = {layer: run.capture.probs(layer) for layer in range(CONFIG.n_layer)}  # [1, H, T, T] each
    expected = gpt2.head_scores(full, torch.tensor([run.ids]))
    for role, scores in expected.items():
        np.testing.assert_allclose(roles[role], scores.numpy(), atol=1e-5)
    reads = len(small_blocks)
    assert run.roles is roles and len(small_blocks) == reads  # kept with the run, not recomputed


def test_strongest_head_prefers_induction_then_previous_token():
    nan = np.full((2, 2), np.nan)
    scores = {"previous_token": np.array([[0.9, 0.1], [0.2, 0.1]]),
              "induction": np.array([[0.1, 0.2], [0.4, 0.1]]),
              "duplicate_token": nan, "first_token": np.array([[0.0, 0.95], [0.0, 0.0]])}
    assert strongest_head(scores) == (1, 0)  # an induction head, though weaker than the others
    scores["induction"] = np.full((2, 2), 0.1)
    assert strongest_head(scores) == (0, 0)
    scores["previous_token"] = np.zeros((2, 2))
    assert strongest_head(scores) == (0, 1)  # any role, when neither
    scores["first_token"] = np.zeros((2, 2))
    assert strongest_head(scores) is None


def test_token_matrix_and_token_attention_are_the_full_map(service, small_blocks):
    _, run = finish(service, settings(max_new_tokens=12))
    T = len(run.ids)
    full = run.capture.probs(1)[0]  # [H, T, T]
    small_blocks.clear()
    np.testing.assert_allclose(service.token_matrix(run, 1, 2), full[2].numpy(), atol=1e-6)
    np.testing.assert_allclose(service.token_matrix(run, 1, None), full.mean(0).numpy(), atol=1e-6)
    assert max(small_blocks) <= 5
    for position in (0, 7, T - 1):
        row = service.token_attention(run, 1, 2, position, "from")
        np.testing.assert_allclose(row.weights, full[2, position, :position + 1].numpy(), atol=1e-6)
        assert row.labels == tokens.labels(run.ids[:position + 1]) and row.position == position
        column = service.token_attention(run, 1, None, position, "to")
        np.testing.assert_allclose(column.weights, full[:, position:, position].mean(0).numpy(), atol=1e-6)
        assert column.labels == tokens.labels(run.ids[position:])
    assert service.token_attention(run, 0, 1, -1, "from").position == T - 1
    with pytest.raises(ValueError, match="direction must be 'from' or 'to'"):
        service.token_attention(run, 0, 1, 0, "sideways")
    with pytest.raises(ValueError, match=f"position must be in 0..{T - 1}"):
        service.token_attention(run, 0, 1, T, "from")
    with pytest.raises(ValueError, match="layer must be in 0..1"):
        service.token_attention(run, 2, 1, 0, "from")


def test_live_rows_are_the_finished_maps_rows(service):
    """While it streams, the newest captured row is the row the finished run will have; the
    other views wait for the end."""
    live = []
    for step in service.generate(settings(max_new_tokens=6)):
        if step.n_generated and not step.stored:
            with pytest.raises(LookupError, match="Still writing"):
                service.run(step.run_id)
            position, row = service.live_row(step, 1, 3)
            assert position == len(step.ids) - 2  # the token whose attention chose the newest one
            live.append((position, row))
    run = service.run(step.run_id)
    full = run.capture.probs(1)[0, 3]
    assert len(live) == 6
    for position, row in live:
        np.testing.assert_allclose(row, full[position, :position + 1].numpy(), atol=1e-6)


def test_a_stopped_generation_is_kept_whole(service, checkpoint):
    """Closing the stream (Stop, a closed tab) stores the text so far as a run whose capture
    holds every token, equal to a plain forward pass over the same ids."""
    steps = service.generate(settings(max_new_tokens=20))
    first = next(steps)
    for _ in range(5):
        step = next(steps)
    steps.close()
    run = service.run(first.run_id)
    assert step.run_id == first.run_id and run.ids == step.ids and run.ended == "stopped"
    assert run.n_generated == 5 and run.capture.num_tokens == len(run.ids)
    assert len(run.candidates) == len(run.ids) - 1
    model = gpt2.load_model(checkpoint)
    with gpt2.capture_attention(model) as att:
        model(torch.tensor([run.ids]))
    torch.testing.assert_close(run.capture.probs(1), att[1], atol=1e-5, rtol=0)


def test_a_generation_stopped_before_its_first_token_stores_nothing(service):
    steps = service.generate(settings())
    first = next(steps)
    steps.close()
    assert service.runs.get(first.run_id, wait=1.0) is None


def test_the_store_waits_for_a_reserved_run(service):
    _, run = finish(service, settings())
    store = RunStore()
    run_id = store.reserve()
    assert store.get(run_id) is None and store.pending(run_id)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.get, run_id, 30.0)
        store.add(run, run_id)
        assert waiting.result() is run and not store.pending(run_id)
    other = store.reserve()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.get, other, 30.0)
        store.release(other)
        assert waiting.result() is None


def test_stop_at_end_of_text_ends_a_story_there():
    """The built-in model ends its stories with <|endoftext|>: with the option on, the run ends
    there (and says so); without it, a new story follows."""
    service = Service(ModelTable(offered_sources(gpt2.BUILTIN)), RunStore())
    story = "Once upon a time, there was a girl named Mira. Mira had a red kite."
    runs = {}
    for stop in (True, False):
        s = Settings(story, gpt2.BUILTIN, 0.0, 0, 1.0, 150, 0, stop_at_end=stop)
        runs[stop] = service.run(list(service.generate(s))[-1].run_id)
    ended = runs[True]
    assert ended.ended == "end of text" and ended.ids[-1] == gpt2.EOT_ID and ended.n_generated < 150
    assert runs[False].ended == "length" and runs[False].n_generated == 150
    assert runs[False].ids[:len(ended.ids)] == ended.ids  # greedy: the same story, then more


def test_a_run_pushed_out_by_other_users_is_recomputed_for_its_owner(checkpoint):
    """Issue 14 item 9: 40 runs of other users used to expire a session's maps. The store
    keeps the capture of the 4 latest runs here; the owner of an older one gets it back,
    recomputed in one forward pass: same tokens and settings, same maps and candidates."""
    service = Service(ModelTable({"tiny": str(checkpoint)}), RunStore(max_runs=4))
    run_id = list(service.generate(settings(seed=5)))[-1].run_id
    original = service.run(run_id)
    for i in range(40):
        list(service.generate(settings(f"Another user, number {i}", seed=i, max_new_tokens=3)))
    assert service.runs.get(run_id) is None  # its capture was pushed out
    again = service.run(run_id)
    assert (again.ids, again.n_prompt, again.seed, again.seconds, again.model_name, again.ended) == \
        (original.ids, original.n_prompt, original.seed, original.seconds, original.model_name, original.ended)
    every = window(len(original.ids), 0, MAX_WINDOW)
    for layer in range(CONFIG.n_layer):
        for got, want in zip(again.attention(layer, every), original.attention(layer, every)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert [c.ids for c in again.candidates] == [c.ids for c in original.candidates]
    for a, b in zip(again.candidates, original.candidates):
        assert max(abs(x - y) for x, y in zip(a.probs + [a.chosen_prob], b.probs + [b.chosen_prob])) < 1e-5
    assert service.runs.get(run_id) is again  # kept again, under the same id


def test_records_are_bounded_too(checkpoint):
    service = Service(ModelTable({"tiny": str(checkpoint)}), RunStore(max_runs=1, max_records=3))
    ids = [list(service.generate(settings(seed=i, max_new_tokens=2)))[-1].run_id for i in range(5)]
    with pytest.raises(LookupError, match="unknown to the server"):
        service.run(ids[0])
    assert service.run(ids[2]).ids == service.run(ids[2]).ids
