"""GPT-2 checkpoints whose config.json differs from OpenAI's (issue 31 item 1): each variant
saved by transformers itself, computed as transformers' GPT2LMHeadModel computes it (logits,
greedy ids, attention maps), or refused with the field named."""
import dataclasses
import json
import re
import shutil

import pytest
import torch

import gpt2
from conftest import TINY, hf_reference
from gpt2 import activations
from gpt2.fast import kernels


def save_variant(directory, seed: int = 0, **overrides):
    """A tiny random GPT-2 with `overrides` on its config, saved by transformers. Weights drawn
    wider than GPT-2's init (0.2, not 0.02), so that what a variant changes shows in the logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    fields = {k: v for k, v in TINY.to_hf().items() if k not in ("model_type", "architectures")}
    GPT2LMHeadModel(GPT2Config(**{**fields, "initializer_range": 0.2, **overrides})).save_pretrained(directory)
    return directory


VARIANTS = [{"activation_function": name} for name in sorted(activations.NAMES)] + [
    {"scale_attn_weights": False},
    {"scale_attn_by_inverse_layer_idx": True},
    {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True},
    {"reorder_and_upcast_attn": True},
    {"n_inner": 48},
    {"layer_norm_epsilon": 1e-2},
    {"n_positions": 40},
    {"vocab_size": 50300},
    {"tie_word_embeddings": False},
    {"tie_word_embeddings": False, "activation_function": "relu", "n_inner": 80,
     "scale_attn_by_inverse_layer_idx": True},
]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v))
def variant(request, tmp_path_factory):
    """(overrides, transformers' model, ours compiled where the kernels serve it)."""
    directory = save_variant(tmp_path_factory.mktemp("variant"), **request.param)
    model = gpt2.load_model(directory)
    model.compile_status.wait(timeout=600)
    return request.param, hf_reference(directory), model


def test_logits_match_transformers(variant):
    _, hf, model = variant
    g = torch.Generator().manual_seed(0)
    for T in (1, 9, model.config.context_length):
        idx = torch.randint(0, model.config.vocab_size, (2, T), generator=g)
        with torch.no_grad():
            want = hf(idx).logits
            cache = gpt2.KVCache(model.config, 2, T)
            stepped = torch.cat([model(idx[:, t:t + 1], cache) for t in range(T)], dim=1)
            torch.testing.assert_close(model(idx), want, atol=1e-4, rtol=0)
        torch.testing.assert_close(stepped, want, atol=1e-4, rtol=0)


def test_greedy_ids_match_transformers(variant):
    _, hf, model = variant
    idx = torch.randint(0, 50257, (2, 7), generator=torch.Generator().manual_seed(1))
    want = hf.generate(idx, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(gpt2.generate(model, idx, 16), want)


def test_attention_maps_match_output_attentions(variant):
    """Captured through a generation (prefill, then step by step), against transformers'
    output_attentions on the whole text."""
    _, hf, model = variant
    idx = torch.randint(0, 50257, (2, 13), generator=torch.Generator().manual_seed(2))
    with gpt2.capture_attention(model) as att:
        ids = gpt2.generate(model, idx, 8)
    with torch.no_grad():
        want = hf(ids, output_attentions=True).attentions
    for layer in range(model.config.n_layer):
        torch.testing.assert_close(att[layer], want[layer], atol=1e-5, rtol=0)


def test_decode_kernels_run_only_on_openais_variant(variant):
    """The compiled kernels compute tanh GELU, q.k / sqrt(head_dim) and the tied head: any
    other variant stays eager, and says which fields keep it there."""
    overrides, _, model = variant
    status = model.compile_status
    if model.config.kernel_compatible:
        assert status.ready, status.summary
        return
    assert not status.ready and kernels._describe(model, trial=True) is None
    assert not any(layer.use_kernels for layer in kernels.fast_layers(model))
    changed = {k for k in overrides if k not in ("reorder_and_upcast_attn", "layer_norm_epsilon", "n_positions",
                                                "vocab_size")}
    assert changed and all(name in status.summary for name in changed), status.summary


COMPUTATION = [v for v in VARIANTS if "n_inner" not in v and "tie_word_embeddings" not in v
               and v.get("activation_function") not in activations.TANH_GELU
               and v.keys() & {"activation_function", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"}]


@pytest.mark.parametrize("overrides", COMPUTATION, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v))
def test_each_variant_changes_what_is_computed(overrides, tmp_path):
    """The checks above are not vacuous: the same weights read as OpenAI's GPT-2 give other
    logits than the variant's (by far more than the 1e-4 they are held to)."""
    model = gpt2.load_model(save_variant(tmp_path, **overrides), compile=False)
    defaults = {f.name: f.default for f in dataclasses.fields(gpt2.GPTConfig) if f.name in overrides}
    as_gpt2 = gpt2.GPT(dataclasses.replace(model.config, **defaults))
    as_gpt2.load_state_dict(model.state_dict())
    idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(idx) - as_gpt2(idx)).abs().max() > 1e-3


def test_fields_are_read_and_round_trip_through_our_format(tmp_path):
    overrides = dict(activation_function="silu", n_inner=40, scale_attn_by_inverse_layer_idx=True,
                     tie_word_embeddings=False, layer_norm_epsilon=1e-3, bos_token_id=7, eos_token_id=[11])
    model = gpt2.load_model(save_variant(tmp_path / "hf", **overrides), compile=False)
    c = model.config
    assert (c.activation_function, c.n_inner, c.scale_attn_by_inverse_layer_idx, c.tie_word_embeddings,
            c.layer_norm_eps, c.bos_token_id, c.eos_token_id) == ("silu", 40, True, False, 1e-3, 7, 11)
    assert sum(p.numel() for p in model.parameters()) == c.num_params
    assert not torch.equal(model.head_weight, model.wte.weight)
    again = gpt2.load_model(gpt2.save_model(model, tmp_path / "ours.safetensors"), compile=False)
    assert again.config == c
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(again(idx), model(idx), atol=0, rtol=0)


def test_eos_token_id_stops_generation_as_transformers(tmp_path):
    """A config's eos_token_id is the model's: generating with it ends where transformers' does."""
    idx = torch.randint(0, 50257, (1, 6), generator=torch.Generator().manual_seed(4))
    free = gpt2.generate(gpt2.load_model(save_variant(tmp_path / "a", activation_function="relu"),
                                         compile=False), idx, 12)
    eos = int(free[0, 6 + 4])  # the fifth token it writes; the same weights again, with that eos
    directory = save_variant(tmp_path / "b", activation_function="relu", eos_token_id=eos)
    model = gpt2.load_model(directory, compile=False)
    assert model.config.eos_token_id == eos
    want = hf_reference(directory).generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)
    ours = gpt2.generate(model, idx, 12, eos_id=model.config.eos_token_id)
    assert torch.equal(ours, want) and ours.size(1) == 6 + 5 and int(ours[0, -1]) == eos


@pytest.mark.parametrize("tier", ["bf16", "int8"])
def test_fast_tiers_of_an_untied_variant_use_its_own_head(tmp_path, tier):
    directory = save_variant(tmp_path, tie_word_embeddings=False, activation_function="quick_gelu")
    exact = gpt2.load_model(directory, compile=False)
    fast = gpt2.load_model(directory, compile=False, **gpt2.TIERS[tier])
    if tier == "int8":
        torch.testing.assert_close(fast.int8_head.bias, exact.lm_head.weight @ exact.ln_f.bias, atol=1e-4, rtol=0)
    fidelity = gpt2.tiers.compare_tiers(exact, fast, torch.randint(0, 50257, (2, 32), generator=torch.Generator()
                                                                   .manual_seed(5)))
    assert fidelity.top1_agreement >= 0.9, fidelity


def _rewritten(tiny_dir, tmp_path, change: dict):
    directory = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    return directory


REFUSED = [
    ({"add_cross_attention": True}, "add_cross_attention=True: cross-attention"),
    ({"model_type": "llama"}, "model_type='llama': not a GPT-2 checkpoint"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantization_config (quant_method='gptq')"),
    ({"quantization_config": {"quant_method": "bitsandbytes_4bit"}}, "quant_method='bitsandbytes_4bit'"),
    ({"activation_function": "prelu"}, "activation_function='prelu' has learned weights"),
    ({"activation_function": "xielu"}, "activation_function='xielu' has learned weights"),
    ({"activation_function": "gelu_fancy"}, "activation_function='gelu_fancy' is not one transformers' GPT-2"),
    ({"activation_function": ["relu"]}, "activation_function=['relu'] is not one"),
    ({"scale_attn_weights": "yes"}, "scale_attn_weights must be true or false, got 'yes'"),
    ({"tie_word_embeddings": 0}, "tie_word_embeddings must be true or false, got 0"),
    ({"n_inner": 0}, "n_inner must be a whole number >= 1 or null, got 0"),
    ({"eos_token_id": [3, 4]}, "eos_token_id=[3, 4]: one end-of-text id is supported, not 2"),
    ({"bos_token_id": -1}, "bos_token_id must be a token id >= 0 or null, got -1"),
    ({"n_inner": 64}, "'h.0.mlp.c_fc.weight' has shape (128, 32), expected (64, 32)"),
    ({"tie_word_embeddings": False}, "missing key 'lm_head.weight'"),
]


@pytest.mark.parametrize("change, message", REFUSED, ids=[str(c) for c, _ in REFUSED])
def test_what_gpt2_code_cannot_compute_is_refused_by_name(tiny_dir, tmp_path, change, message):
    with pytest.raises(gpt2.WeightsError, match=re.escape(message)):
        gpt2.load_model(_rewritten(tiny_dir, tmp_path, change), compile=False)


def test_a_cross_attention_checkpoint_saved_by_transformers_is_refused(tmp_path):
    with pytest.raises(gpt2.WeightsError, match=r"config\.json: .*add_cross_attention=True"):
        gpt2.load_model(save_variant(tmp_path, add_cross_attention=True), compile=False)
