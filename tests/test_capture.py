"""Attention capture: through generation, per request under concurrency, absent when off."""
import threading

import pytest
import torch

import gpt2


def _capture_forward(model, ids):
    with gpt2.capture_attention(model) as att:
        with torch.no_grad():
            model(ids)
    return att


@pytest.mark.parametrize("batch, sampling", [(1, {}), (2, {}), (1, dict(temperature=1.0, top_k=40, seed=5)),
                                             (2, dict(temperature=0.7, top_p=0.9, seed=9))])
def test_capture_through_generate_equals_capture_of_full_text(tiny_model, batch, sampling):
    idx = torch.randint(0, 50257, (batch, 9), generator=torch.Generator().manual_seed(batch))
    plain = gpt2.generate(tiny_model, idx, 12, **sampling)
    with gpt2.capture_attention(tiny_model) as att:
        ids = gpt2.generate(tiny_model, idx, 12, **sampling)
    assert torch.equal(ids, plain)
    ref = _capture_forward(tiny_model, ids)
    assert att.num_tokens == ids.size(1)
    for layer in range(tiny_model.config.n_layer):
        torch.testing.assert_close(att[layer], ref[layer], atol=1e-5, rtol=0)
    with torch.no_grad():
        want = torch.softmax(tiny_model(ids), dim=-1)
    torch.testing.assert_close(att.next_token_probs(), want, atol=1e-5, rtol=0)


def test_windowed_rows_equal_the_full_map(tiny_model):
    ids = torch.randint(0, 50257, (1, 30))
    att = _capture_forward(tiny_model, ids)
    torch.testing.assert_close(att.probs(1, slice(10, 20)), att[1][:, :, 10:20, :20], atol=1e-6, rtol=0)


def test_rows_of_a_generation_read_across_its_steps(tiny_model):
    """A generation keeps a prefill chunk, then one chunk per step: any rows, one or many,
    across those chunks, equal the same rows of the whole map."""
    with gpt2.capture_attention(tiny_model) as att:
        gpt2.generate(tiny_model, torch.randint(0, 50257, (1, 9)), 8)
    full = att[0]
    for rows in (slice(0, 1), slice(8, 9), slice(9, 10), slice(16, 17), slice(5, 13), slice(10, 14)):
        torch.testing.assert_close(att.probs(0, rows), full[:, :, rows, :rows.stop], atol=1e-6, rtol=0)


def test_selected_layers_only(tiny_model):
    with gpt2.capture_attention(tiny_model, layers=[1]) as att:
        with torch.no_grad():
            tiny_model(torch.tensor([[1, 2, 3]]))
    assert att[1].shape == (1, 4, 3, 3)
    with pytest.raises(KeyError, match="layer 0 was not captured"):
        att[0]
    with pytest.raises(ValueError, match="layers must be in 0..1"):
        with gpt2.capture_attention(tiny_model, layers=[2]):
            pass


def test_hooks_exist_only_while_capturing(tiny_model):
    modules = list(tiny_model.modules())
    with gpt2.capture_attention(tiny_model):
        assert any(m._forward_hooks for m in modules)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def test_concurrent_captures_each_see_only_their_own_pass(tiny_model):
    prompts = [torch.randint(0, 50257, (1, 5 + 3 * i), generator=torch.Generator().manual_seed(i))
               for i in range(6)]
    alone = [_capture_forward(tiny_model, p) for p in prompts]
    alone_gen = []
    for p in prompts:
        with gpt2.capture_attention(tiny_model) as att:
            ids = gpt2.generate(tiny_model, p, 6, temperature=1.0, seed=1)
        alone_gen.append((ids, att))
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(prompts) * 2)

    def forward_worker(i):
        barrier.wait()
        for _ in range(3):
            results[i] = _capture_forward(tiny_model, prompts[i])

    def generate_worker(i):
        barrier.wait()
        with gpt2.capture_attention(tiny_model) as att:
            ids = gpt2.generate(tiny_model, prompts[i], 6, temperature=1.0, seed=1)
        results[100 + i] = (ids, att)

    threads = [threading.Thread(target=f, args=(i,)) for i in range(len(prompts))
               for f in (forward_worker, generate_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(prompts)):
        ids, att = results[100 + i]
        assert torch.equal(ids, alone_gen[i][0])
        for layer in range(2):
            torch.testing.assert_close(results[i][layer], alone[i][layer], atol=1e-6, rtol=0)
            torch.testing.assert_close(att[layer], alone_gen[i][1][layer], atol=1e-6, rtol=0)


def test_stream_resumed_on_other_threads_keeps_its_capture(tiny_model):
    """A streamed generation stepped from different threads, interleaved with another."""
    a, b = torch.tensor([[11, 12, 13]]), torch.tensor([[21, 22, 23, 24, 25]])
    ref_a, ref_b = (_capture_forward(tiny_model, gpt2.generate(tiny_model, p, 8)) for p in (a, b))
    with gpt2.capture_attention(tiny_model) as att_a, gpt2.capture_attention(tiny_model) as att_b:
        streams = [gpt2.stream(tiny_model, a, 8, capture=att_a), gpt2.stream(tiny_model, b, 8, capture=att_b)]
        done = [False, False]
        while not all(done):
            for s in (0, 1):
                t = threading.Thread(target=lambda s=s: done.__setitem__(s, next(streams[s], None) is None))
                t.start()
                t.join()
    for att, ref in ((att_a, ref_a), (att_b, ref_b)):
        assert att.num_tokens == ref.num_tokens
        for layer in range(2):
            torch.testing.assert_close(att[layer], ref[layer], atol=1e-6, rtol=0)


def test_a_capture_records_one_forward_pass(tiny_model):
    with gpt2.capture_attention(tiny_model) as att:
        with torch.no_grad():
            tiny_model(torch.tensor([[1, 2, 3]]))
            tiny_model(torch.tensor([[4, 5, 6, 7]]))
    assert att.num_tokens == 3 and att.hidden().shape == (1, 3, 32)


def test_capture_keeps_keys_but_not_the_generations_values(tiny_model):
    import gc
    import weakref
    cache = gpt2.KVCache(tiny_model.config, 1, 8)
    with gpt2.capture_attention(tiny_model) as att:
        att.bind(cache)
        with torch.no_grad():
            tiny_model(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]), cache)
    cache_alive = weakref.ref(cache)
    del cache
    gc.collect()
    assert cache_alive() is None  # the cache, and its values, went with the generation
    assert att[0].shape == (1, 4, 8, 8)  # the maps still come from the kept keys
