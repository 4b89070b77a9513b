"""Input checks at the API boundary, and the model table."""
from __future__ import annotations


import pytest

import torch

import gpt2
from playground import models, validate

OFFERED = ["local:tiny", "gpt2"]
GOOD = dict(prompt="Hello", model="gpt2", temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=20, seed=None)


def check(**change):
    return validate.settings(**{**GOOD, **change}, offered=OFFERED)


def test_good_settings_are_normalised():
    s = check(top_k=40.0, max_new_tokens="20", seed="12")
    assert (s.top_k, s.max_new_tokens, s.seed) == (40, 20, 12)
    assert check(seed="  ").seed is None and check(seed=None).seed is None
    assert check(temperature=0).temperature == 0.0


@pytest.mark.parametrize("change, message", [
    (dict(prompt=""), "prompt is empty"), (dict(prompt=" \n "), "prompt is empty"),
    (dict(prompt="x" * (validate.MAX_PROMPT_CHARS + 1)), "too long"), (dict(prompt=None), "text"),
    (dict(model="/etc/passwd"), "model must be one of"), (dict(model="gpt2-xl"), "model must be one of"),
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(temperature="hot"), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_k=50258), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=0), "top_p"), (dict(top_p=1.01), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=10_000), "max_new_tokens"),
    (dict(seed=1.5), "seed"), (dict(seed=-1), "seed"), (dict(seed="abc"), "seed"),
    (dict(seed=True), "seed"),
])
def test_bad_settings_say_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        check(**change)


def test_offered_models_name_local_checkpoints_without_their_path():
    assert list(models.offered_sources("gpt2")) == [models.BUILTIN, *gpt2.PRESETS]
    local = models.offered_sources("/data/ckpt/tiny.safetensors")
    assert list(local)[0] == "local:tiny" and local["local:tiny"] == "/data/ckpt/tiny.safetensors"
    extra = models.offered_sources("gpt2", ["/data/a", "/data/b.safetensors"])
    assert list(extra) == ["local:a", "local:b", models.BUILTIN, *gpt2.PRESETS] and extra["local:b"] == "/data/b.safetensors"
    with pytest.raises(ValueError, match="same name"):
        models.offered_sources("/data/tiny", ["/other/tiny.safetensors"])


class Fake:
    """Stands in for a loaded model: only its config matters to the table."""

    def __init__(self, name: str):
        self.config = gpt2.PRESETS[name]

    def state_dict(self) -> dict:  # fp32-sized, on the meta device: no memory
        return {"weight": torch.empty(models.model_bytes(self.config) // 4, device="meta")}


def test_table_drops_least_recently_used_presets_to_fit(monkeypatch):
    loaded = []

    monkeypatch.setattr(gpt2, "load_model", lambda source, **tier: loaded.append(source) or Fake(source))
    monkeypatch.setattr(gpt2.hub, "download", lambda name: None)  # sizes matter here, not files
    small, medium = (models.model_bytes(gpt2.PRESETS[n]) for n in ("gpt2", "gpt2-medium"))
    evicted = []
    table = models.ModelTable({n: n for n in gpt2.PRESETS}, max_bytes=small + medium,
                              on_evict=evicted.append)
    table.get("gpt2"), table.get("gpt2-medium")
    assert table.loaded("gpt2") and table.loaded("gpt2-medium")
    table.get("gpt2")  # now the most recently used
    table.get("gpt2-medium")
    table.get("gpt2")
    table.get("gpt2-large")  # does not fit beside either
    assert table.loaded("gpt2-large") and not table.loaded("gpt2-medium") and not table.loaded("gpt2")
    assert evicted == ["gpt2-medium", "gpt2"]  # least recently used first
    assert table.loop("gpt2-large").model is table.get("gpt2-large")  # its decode loop
    assert models.model_bytes(gpt2.PRESETS["gpt2"]) == pytest.approx(4 * 124_439_808, rel=1e-3)


def test_load_error_message_says_how_to_fix():
    text = models.load_error_message("gpt2", gpt2.WeightsError("offline and not cached"))
    assert "offline and not cached" in text and "--model" in text
    local = models.load_error_message("local:x", gpt2.WeightsError("local:x/model.safetensors: corrupt"))
    assert "corrupt" in local and "replace the checkpoint" in local and "internet" not in local


def test_presets_are_offered_at_every_tier_and_tiers_load(tiny_checkpoint):
    sources, tiers = models.with_tiers(models.offered_sources(str(tiny_checkpoint)))
    local = models.local_name(str(tiny_checkpoint))
    assert tiers[local] == tiers[models.BUILTIN] == "fp32"  # small local models: fp32 only
    assert tiers["gpt2"] == models.DEFAULT_TIER
    assert {tiers[name] for name in sources if name.startswith("gpt2-xl")} == {"fp32", "bf16", "int8"}
    table = models.ModelTable({"a": str(tiny_checkpoint), "b": str(tiny_checkpoint)}, {"a": "int8", "b": "bf16"})
    assert table.get("a").h[0].mlp.c_fc.weight.dtype == torch.int8
    assert table.get("b").h[0].mlp.c_fc.weight.dtype == torch.bfloat16
    assert models.resident_bytes(table.get("a")) < models.resident_bytes(gpt2.load_model(tiny_checkpoint))


@pytest.mark.parametrize("field", ["seed", "temperature", "model", "top_k"])
def test_a_huge_bad_value_is_not_echoed_whole(field):
    huge = "9x" * 10_000
    args = dict(prompt="Hi", model="builtin", temperature=0.5, top_k=0, top_p=1.0, max_new_tokens=4, seed=None)
    with pytest.raises(ValueError) as refused:
        validate.settings(**{**args, field: huge}, offered=["builtin"])
    message = str(refused.value)
    assert len(message) < 300 and "'9x9x9x" in message and "(20,002 characters)" in message


def test_a_huge_head_is_not_echoed_whole():
    from playground.service import parse_head

    with pytest.raises(ValueError) as refused:
        parse_head("h" * 5000, 12)
    assert len(str(refused.value)) < 200 and "(5,002 characters)" in str(refused.value)


def test_a_preset_that_cannot_download_is_one_paragraph_with_one_fix():
    """Issue 29 item 9: the library's reason, without its own terminal advice (nor 'Set
    HF_HUB_OFFLINE=1', irrelevant on a page), then what to do: one paragraph."""
    error = gpt2.WeightsError("openai-community/gpt2-medium: cannot download the weights and they are not in the "
                              "Hugging Face cache (offline, or the Hub is unreachable). Go online and run `python -m "
                              "gpt2 download gpt2-medium` once, or put a converted file at /w/gpt2-medium.safetensors. "
                              "Set HF_HUB_OFFLINE=1 to skip the network when everything is cached.")
    text = models.load_error_message("gpt2-medium", error)
    assert text.startswith("Could not load `gpt2-medium`. openai-community/gpt2-medium: cannot download the weights")
    assert "\n" not in text and "HF_HUB_OFFLINE" not in text and "/w/" not in text
    assert text.count("To fix") == 1 and "--model" in text and "python -m gpt2 download gpt2-medium" in text
    assert models.load_error_message("local:x", gpt2.WeightsError("local:x: corrupt")).startswith(
        "Could not load `local:x`. local:x: corrupt. To fix: replace")
