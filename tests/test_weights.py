"""Loading checkpoints: layouts accepted, and a clear error for every broken one."""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import gpt2
from conftest import TINY


def _copy(tiny_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, d)
    return d


def _rewrite(d, edit):
    state = load_file(d / "model.safetensors")
    edit(state)
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})


def test_hub_layout_variants_load_the_same(tiny_dir, tiny_model, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    # no "transformer." prefix, an explicit lm_head and the old mask buffers
    def edit(state):
        for k in list(state):
            state[k.removeprefix("transformer.")] = state.pop(k)
        state["lm_head.weight"] = state["wte.weight"].clone()
        state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    _rewrite(d, edit)
    model = gpt2.load_model(d)
    idx = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(idx), tiny_model(idx), atol=0, rtol=0)


def test_own_format_round_trip_and_dtype(tiny_model, tmp_path):
    path = gpt2.save_model(tiny_model, tmp_path / "tiny.safetensors")
    model = gpt2.load_model(path)
    assert model.config == tiny_model.config
    idx = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(idx), tiny_model(idx), atol=0, rtol=0)
    bf16 = gpt2.load_model(path, dtype=torch.bfloat16)
    assert bf16.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    assert bf16.wte.weight.dtype == torch.bfloat16  # the tied LM head computes in fp32 (GPT.logits)
    assert bf16(idx).dtype == torch.float32


def test_sizes_come_from_config_json(tmp_path):
    from conftest import save_hf_checkpoint
    cfg = gpt2.GPTConfig(vocab_size=50304, context_length=16, n_embd=24, n_layer=3, n_head=2,
                         layer_norm_eps=1e-6)
    model = gpt2.load_model(save_hf_checkpoint(cfg, tmp_path))
    assert model.config == cfg


def test_truncated_file(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(gpt2.WeightsError, match=r"model\.safetensors: not a readable safetensors file"):
        gpt2.load_model(d)


def test_corrupt_header(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(gpt2.WeightsError, match="not a readable safetensors file"):
        gpt2.load_model(d)


def test_missing_key(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    _rewrite(d, lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(gpt2.WeightsError, match=r"model\.safetensors: missing key 'h\.1\.mlp\.c_fc\.bias'"):
        gpt2.load_model(d)


def test_extra_key(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    _rewrite(d, lambda s: s.update({"transformer.h.0.adapter.weight": torch.zeros(2)}))
    with pytest.raises(gpt2.WeightsError, match=r"unexpected key 'h\.0\.adapter\.weight'"):
        gpt2.load_model(d)


def test_shape_mismatch(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    _rewrite(d, lambda s: s.update({"transformer.wpe.weight": torch.zeros(32, 32)}))
    with pytest.raises(gpt2.WeightsError, match=r"'wpe\.weight' has shape \(32, 32\), expected \(64, 32\)"):
        gpt2.load_model(d)


def test_config_disagrees_with_tensors(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_layer"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(gpt2.WeightsError, match=r"missing key 'h\.2\."):
        gpt2.load_model(d)


def test_missing_config_json(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(gpt2.WeightsError, match=r"config\.json: file not found"):
        gpt2.load_model(d)


def test_missing_weights_and_pickle_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(gpt2.WeightsError, match=r"model\.safetensors: file not found\. Found pytorch_model\.bin: pickle"):
        gpt2.load_model(tmp_path)


def test_unknown_source():
    with pytest.raises(gpt2.WeightsError, match="not a preset .*gpt2-medium.* and no such file"):
        gpt2.load_model("gpt2-huge")


def test_safetensors_file_without_our_metadata(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "model.safetensors", tmp_path / "other.safetensors")
    with pytest.raises(gpt2.WeightsError, match="no 'gpt2_config' metadata"):
        gpt2.load_model(tmp_path / "other.safetensors")


def test_offline_with_nothing_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GPT2_WEIGHTS_DIR", str(tmp_path / "weights"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(gpt2.WeightsError, match=r"openai-community/gpt2: cannot download .* not in the "
                       r"Hugging Face cache .*python -m gpt2 download gpt2"):
        gpt2.load_model("gpt2")


def test_preset_name_uses_converted_file_in_weights_dir(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_WEIGHTS_DIR", str(tmp_path))
    gpt2.save_model(tiny_model, tmp_path / "gpt2-medium.safetensors")
    assert gpt2.load_model("openai-community/gpt2-medium").config == tiny_model.config


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    """Online mode, nothing cached, no route to the Hub: a clear error before huggingface_hub's
    ~25 s of retries (the download is never attempted)."""
    import huggingface_hub
    import huggingface_hub.constants as c
    attempts = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: attempts.append(a))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "ENDPOINT", "https://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("GPT2_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(gpt2.WeightsError, match="not in the Hugging Face cache .*Hub is unreachable"):
        gpt2.load_model("gpt2-large")
    assert attempts == []


def test_cached_preset_loads_without_the_network(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as c
    cache = tmp_path / "hub"
    snapshot = cache / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / f, snapshot / f)
    (cache / "models--openai-community--gpt2" / "refs").mkdir()
    (cache / "models--openai-community--gpt2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "ENDPOINT", "https://127.0.0.1:9")
    monkeypatch.setenv("GPT2_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert gpt2.load_model("gpt2").config == TINY


# -- a config is checked against the file's header before anything is built or read ----------
HUGE = [{"n_layer": 100_000}, {"n_embd": 1_000_000, "n_head": 10}, {"n_positions": 10**9},
        {"vocab_size": 10**9}, {"n_layer": 10**12, "n_embd": 10**6, "n_head": 1}]


@pytest.mark.parametrize("claim", HUGE, ids=[next(iter(c)) + str(i) for i, c in enumerate(HUGE)])
def test_a_config_claiming_a_huge_model_is_refused_before_building(tiny_dir, tmp_path, monkeypatch, claim):
    """Such a config used to build (on the meta device) a module per claimed block and grow
    without bound; now the claim is compared with the file's own tensor headers first."""
    d = _copy(tiny_dir, tmp_path)
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), **claim}))
    monkeypatch.setattr(gpt2.GPT, "__init__", lambda *a, **k: pytest.fail("built a model"))
    monkeypatch.setattr(gpt2.weights, "read_tensors", lambda *a, **k: pytest.fail("read the tensors"))
    with pytest.raises(gpt2.WeightsError, match=r"model\.safetensors: (missing key|'\w+\.weight' has shape)"):
        gpt2.load_model(d)


BAD_CONFIGS = [
    ({"n_head": 0}, "n_head must be a whole number >= 1, got 0"),
    ({"n_head": -4}, "n_head must be a whole number >= 1, got -4"),
    ({"n_head": 5}, "n_embd=32 is not divisible by n_head=5"),
    ({"n_embd": 32.5}, "n_embd must be a whole number >= 1, got 32.5"),
    ({"n_embd": "32"}, "n_embd must be a whole number >= 1, got '32'"),
    ({"n_layer": True}, "n_layer must be a whole number >= 1, got True"),
    ({"n_positions": 0}, "context_length must be a whole number >= 1, got 0"),
    ({"layer_norm_epsilon": -1}, "layer_norm_eps must be a positive number, got -1"),
    ({"vocab_size": 100}, "vocab_size=100 is smaller than GPT-2's tokenizer, whose ids reach 50256"),
    ({"n_embd": None}, "n_embd must be a whole number >= 1, got None"),
]


@pytest.mark.parametrize("change, message", BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
def test_configs_that_make_no_sense_are_refused_at_load(tiny_dir, tmp_path, change, message):
    d = _copy(tiny_dir, tmp_path)
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), **change}))
    with pytest.raises(gpt2.WeightsError, match=re.escape(message)):
        gpt2.load_model(d)


def test_our_format_with_bad_metadata_is_refused(tiny_model, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    bad = json.dumps({**tiny_model.config.to_dict(), "n_head": 0})
    save_file(state, tmp_path / "bad.safetensors", metadata={"gpt2_config": bad})
    with pytest.raises(gpt2.WeightsError, match="bad 'gpt2_config' metadata .*n_head must be"):
        gpt2.load_model(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused(tiny_dir, tmp_path, value):
    d = _copy(tiny_dir, tmp_path)
    _rewrite(d, lambda s: s["transformer.h.1.mlp.c_proj.weight"].view(-1).__setitem__(7, value))
    with pytest.raises(gpt2.WeightsError, match=r"'h\.1\.mlp\.c_proj\.weight' holds NaN or infinite values"):
        gpt2.load_model(d)


def test_an_integer_tensor_is_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    _rewrite(d, lambda s: s.update({"transformer.ln_f.bias": torch.zeros(32, dtype=torch.int32)}))
    with pytest.raises(gpt2.WeightsError, match=r"'ln_f\.bias' has dtype I32, expected floats"):
        gpt2.load_model(d)


def test_expected_shapes_are_the_models_own():
    config = gpt2.GPTConfig(vocab_size=50257, context_length=16, n_embd=24, n_layer=3, n_head=2)
    with torch.device("meta"):
        real = {k: tuple(v.shape) for k, v in gpt2.GPT(config).state_dict().items()}
    assert gpt2.weights.expected_shapes(config) == real
def test_presets_come_from_the_hub_cache_and_convert_once(offline_hub, tmp_path, monkeypatch):
    """`load_model("gpt2")` through huggingface_hub's own cache lookup (the stand-in Hub of
    conftest), offline; `convert` writes weights/NAME.safetensors, which then loads the same."""
    from conftest import HUB_STANDINS

    monkeypatch.setenv("GPT2_WEIGHTS_DIR", str(tmp_path / "weights"))
    snapshot = gpt2.hub.download("gpt2")
    assert snapshot.is_relative_to(offline_hub / "hub" / "models--openai-community--gpt2" / "snapshots")
    model = gpt2.load_model("gpt2", compile=False)
    assert model.config == HUB_STANDINS["gpt2"]
    assert gpt2.hub.obtainable("gpt2") and not gpt2.hub.obtainable("gpt2-large")
    assert gpt2.convert("gpt2") == tmp_path / "weights" / "gpt2.safetensors"
    idx = torch.tensor([[464, 3290, 3332]])
    torch.testing.assert_close(gpt2.load_model("gpt2", compile=False)(idx), model(idx), rtol=0, atol=0)


@pytest.mark.parametrize("nested", ['{"n_embd": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                    '{"n_embd": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001],
                         ids=["lists", "objects"])
def test_deeply_nested_config_metadata_is_refused(tiny_model, tmp_path, nested):
    """Issue 28 item 9: JSON nested past Python's recursion limit is a WeightsError, not a
    RecursionError escaping load_model; a Hub-layout config.json likewise."""
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(state, tmp_path / "nested.safetensors", metadata={"gpt2_config": nested})
    with pytest.raises(gpt2.WeightsError, match="bad 'gpt2_config' metadata .*RecursionError"):
        gpt2.load_model(tmp_path / "nested.safetensors")
    d = tmp_path / "hub"
    d.mkdir()
    save_file(state, d / "model.safetensors")
    (d / "config.json").write_text(nested)
    with pytest.raises(gpt2.WeightsError, match="not a GPT-2 config .*RecursionError"):
        gpt2.load_model(d)
