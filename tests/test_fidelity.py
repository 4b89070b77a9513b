"""bf16 and int8 tiers against fp32 on the trained built-in model (on random weights the
logits are near-uniform and agreement would prove nothing)."""

import pytest
import torch

import gpt2
from gpt2.training import corpus, restricted
from gpt2.fast import rowdot
from gpt2.tiers import compare_tiers
from conftest import compiled, forced_isa, runnable_isas

MODEL_FILE = gpt2.weights.BUILTIN_FILE
HELD_OUT_SEED = 31337  # the model was trained on seed 0 (as in benchmarks/fidelity.py)


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    T = 256
    ids = corpus.corpus_tokens(60, seed=HELD_OUT_SEED)
    return ids[: len(ids) // T * T].view(-1, T)


# int8: the issue asks 97%; 99% holds the LM head to fp32 logits (bf16 logits gave 98.3%).
@pytest.mark.parametrize("tier, bound", [("bf16", 0.99), ("int8", 0.99)])
def test_tier_agrees_with_fp32(held_out, tier, bound):
    fp32 = gpt2.load_model(MODEL_FILE)
    fast = (gpt2.load_model(MODEL_FILE, dtype=torch.bfloat16) if tier == "bf16"
            else gpt2.load_model(MODEL_FILE, quantize="int8"))
    result = compare_tiers(fp32, fast, held_out, vocab=restricted.trained_ids(fp32))
    print(f"{tier}: {result}")
    assert result.tokens >= 500
    assert result.top1_agreement >= bound
    assert result.mean_logit_error < 0.1


@pytest.mark.parametrize("isa", runnable_isas())
@pytest.mark.parametrize("tier, bound", [("fp32", 0.999), ("bf16", 0.99), ("int8", 0.99)])
def test_tier_decoding_token_by_token_agrees_with_fp32(held_out, tier, bound, isa):
    """The path generation takes, on every instruction set this CPU runs: one token at a time
    through the KV cache and the compiled one-row kernels (int8: integer products of
    quantised rows; the LM head in fp32 math), against eager fp32's full forward."""
    fp32 = gpt2.load_model(MODEL_FILE, compile=False)
    rows = held_out[:3]  # 3 x 256 tokens, the model's whole context each
    agree = total = 0
    with forced_isa(isa), torch.inference_mode():
        fast = compiled(gpt2.load_model(MODEL_FILE, **gpt2.TIERS[tier]))
        stream = torch.bfloat16 if tier != "fp32" and rowdot.native_bf16() else torch.float32
        assert fast.wpe.weight.dtype == stream and fast.compile_status.isa.startswith(isa)
        want = fp32(rows).argmax(-1)
        for row, row_want in zip(rows, want):
            cache = gpt2.KVCache(fast.config, 1, row.numel())
            for t, token in enumerate(row.tolist()):
                got = fast(torch.tensor([[token]]), cache)[0, -1]
                assert got.dtype == torch.float32
                agree += int(got.argmax() == row_want[t])
                total += 1
    assert total >= 500
    assert agree / total >= bound, f"{tier} on {isa}: {agree}/{total}"
