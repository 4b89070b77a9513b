"""bf16 and int8 tiers: they load, generate and capture like fp32 (fidelity on a trained
model is in test_fidelity.py)."""
import pytest
import torch

import gpt2
from conftest import compiled


@pytest.fixture(scope="module", params=["bf16", "int8"])
def tier(request, tiny_dir):
    if request.param == "bf16":
        return compiled(gpt2.load_model(tiny_dir, dtype=torch.bfloat16))
    return compiled(gpt2.load_model(tiny_dir, quantize="int8"))


def test_int8_weights_are_one_byte(tiny_dir):
    model = gpt2.load_model(tiny_dir, quantize="int8")
    c_fc = model.h[0].mlp.c_fc
    assert c_fc.weight.dtype == torch.int8 and c_fc.scales.shape == (128,)
    assert model.wte.weight.dtype == torch.bfloat16  # the embedding, and the head's rescoring
    assert model.int8_head.weight.dtype == torch.int8 and model.int8_head.weight.shape == (50257, 32)
    assert gpt2.load_model(tiny_dir, dtype=torch.bfloat16).wte.weight.dtype == torch.bfloat16


def test_tier_logits_are_fp32_math(tier):
    """The head stores bf16 weights but must not round the logits to bf16: one row through
    the compiled kernel and many rows through gpt2.fast.gemm both equal fp32 math on those weights."""
    idx = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.inference_mode():
        hidden = tier.hidden_states(idx)
        want = torch.nn.functional.linear(hidden.float(), tier.wte.weight.float())
        many, one = tier.logits(hidden), tier.logits(hidden[:, -1:])
    assert many.dtype == one.dtype == torch.float32
    torch.testing.assert_close(many, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(one, want[:, -1:], atol=1e-5, rtol=0)
    assert not torch.equal(want, want.bfloat16().float())  # the check could tell the difference


@pytest.mark.parametrize("path", ["compiled", "eager"])
def test_int8_head_scans_in_int8_and_rescores_its_best_in_fp32_math(tiny_dir, path):
    """The int8 tier's head: every logit within the int8 scan's error of the bf16 head's fp32
    math, and its best RESCORE exactly that math; one row (decode) and many rows (a full
    forward) alike."""
    model = gpt2.load_model(tiny_dir, quantize="int8", compile=path == "compiled")
    model = compiled(model) if path == "compiled" else model
    idx = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        x = model.residual_stream(idx)
        want = torch.nn.functional.linear(model.ln_f(x).float(), model.wte.weight.float())
        for rows, ref in ((x, want), (x[:1, -1:], want[:1, -1:])):
            got = model.head(rows)
            assert got.dtype == torch.float32
            best = model.int8_head._scan(rows).topk(model.int8_head.RESCORE, dim=-1).indices
            torch.testing.assert_close(got.gather(-1, best), ref.gather(-1, best), atol=1e-5, rtol=0)
            scanned = (got - ref).abs()
            assert 0 < scanned.max() < 0.02 * ref.abs().max()  # int8 elsewhere: close, not equal
            assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_tier_logits_close_to_fp32(tier, tiny_model):
    idx = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = tiny_model(idx), tier(idx).float()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_tier_capture_through_generate(tier):
    idx = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with gpt2.capture_attention(tier) as att:
        ids = gpt2.generate(tier, idx, 10)
    assert torch.equal(ids, gpt2.generate(tier, idx, 10))
    with gpt2.capture_attention(tier) as ref:
        with torch.no_grad():
            tier(ids)
    for layer in range(2):
        assert att[layer].dtype == torch.float32
        torch.testing.assert_close(att[layer], ref[layer], atol=2e-2, rtol=0)
        torch.testing.assert_close(att[layer].sum(-1), torch.ones(1, 4, 18), atol=1e-5, rtol=0)


def test_unknown_quantization(tiny_dir):
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        gpt2.load_model(tiny_dir, quantize="int4")


def test_app_summary_counts_every_tiers_weights(tmp_path):
    """int8 weights are buffers, not parameters: the page must still say the model's size,
    and which tier the loaded weights are."""
    from conftest import save_hf_checkpoint
    from playground.models import describe

    directory = save_hf_checkpoint(gpt2.GPTConfig(context_length=32, n_embd=128, n_layer=4, n_head=4),
                                   tmp_path)
    fp32 = gpt2.load_model(directory, compile=False)
    want = f"{sum(p.numel() for p in fp32.parameters()) / 1e6:,.1f}M parameters"  # 7.2M
    for tier, args in gpt2.TIERS.items():
        summary = describe("m", gpt2.load_model(directory, compile=False, **args))
        assert want in summary and f"ready · {tier} · " in summary
