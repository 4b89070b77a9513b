"""The shipped model: loads offline, predicts its corpus, copies from context, has a
previous-token head and an induction head, and never emits an id it was not trained on."""

import pytest
import torch
import torch.nn.functional as F

import gpt2
from gpt2.training import corpus, restricted
from gpt2.heads import head_scores
from gpt2.training.trainer import repeated_sequences

MODEL_FILE = gpt2.weights.BUILTIN_FILE
VAL_LOSS_BOUND = 0.6  # nats/token on stories from a seed never trained on (see BUILTIN_MODEL.md)
T_MAX = 20.0  # the never-unused-id guarantee is proved for every temperature up to this
LENGTHS = (12, 24)


@pytest.fixture(scope="module")
def model() -> gpt2.GPT:
    return gpt2.load_model(MODEL_FILE)


@pytest.fixture(scope="module")
def vocab(model) -> torch.Tensor:
    return restricted.trained_ids(model)


def test_small_enough_for_plain_git_and_loads_offline(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert MODEL_FILE.stat().st_size <= 9_000_000
    assert model.config.vocab_size == 50257 and not model.training
    assert gpt2.load_model(MODEL_FILE).wte.weight.dtype == torch.float32


def test_val_loss_on_fresh_corpus_sample(model):
    ids = corpus.corpus_tokens(100, seed=424242)  # the model was trained on seed 0
    T = model.config.context_length
    rows = ids[: (len(ids) - 1) // T * T + 1]
    x, y = rows[:-1].view(-1, T), rows[1:].view(-1, T)  # [N, T] each
    with torch.no_grad():  # row by row: full-vocabulary logits are 51 MB per row
        total = sum(F.cross_entropy(model(xi[None])[0], yi, reduction="sum").item()
                    for xi, yi in zip(x, y))
    loss = total / y.numel()
    print(f"val loss on a fresh sample ({y.numel()} tokens, full 50,257-way softmax): {loss:.3f}")
    assert loss < VAL_LOSS_BOUND


def test_writes_a_story(model):
    prompt = "Once upon a time, there was a girl named Mira. Mira had a red kite."
    ids = gpt2.generate(model, torch.tensor([gpt2.encode(prompt)]), 60)
    text = gpt2.decode(ids[0].tolist())
    print(text)
    continuation = text[len(prompt):]
    assert "Mira" in continuation and "kite" in continuation  # names and objects come back
    assert continuation.count(".") >= 2


def scores_on_repeats(m: gpt2.GPT, vocab: torch.Tensor, length: int) -> tuple[dict, torch.Tensor]:
    ids = repeated_sequences(vocab[vocab != gpt2.EOT_ID], 16, length, seed=2024)  # [16, 1+2L]
    with torch.no_grad(), gpt2.capture_attention(m) as att:
        logits = m(ids)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return head_scores([att[i] for i in range(m.config.n_layer)], ids), loss.view(16, -1)


@pytest.mark.parametrize("length", LENGTHS)
def test_previous_token_and_induction_heads(model, vocab, length):
    torch.manual_seed(0)
    random_model = gpt2.GPT(model.config).eval()
    trained, loss = scores_on_repeats(model, vocab, length)
    untrained, _ = scores_on_repeats(random_model, vocab, length)
    for role in ("previous_token", "induction"):
        best, random_best = trained[role].max().item(), untrained[role].abs().max().item()
        where = divmod(int(trained[role].argmax()), model.config.n_head)
        print(f"length {length} {role}: trained best {best:.3f} at (layer, head) {where}, "
              f"random-weight best |score| {random_best:.4f}")
        assert best >= 0.3 and best >= 10 * random_best
    # targets s2..sL of each copy (s1 of the second copy cannot be predicted by copying)
    first, second = loss[:, 1:length].mean().item(), loss[:, length + 1:].mean().item()
    print(f"length {length}: loss on first copy {first:.2f}, on second copy {second:.2f}")
    assert second < 0.3 * first


def test_unused_ids_are_provably_never_sampled(model, vocab):
    """From the weights alone: every unused id's logit is below every input's best in-vocab
    logit by more than 110 * T_MAX, so float32 softmax(logits / T) gives them exactly 0."""
    upper_unused, lower_best = restricted.logit_bounds(model, vocab)
    print(f"{len(vocab)} trained ids; unused logit <= {upper_unused:.1f}; "
          f"best in-vocab logit >= {lower_best:.1f}")
    assert lower_best - upper_unused > 110 * T_MAX
    probs = torch.softmax(torch.tensor([lower_best, upper_unused]) / T_MAX, dim=0)
    assert probs[1] == 0


def test_generation_stays_in_vocab(model, vocab):
    """The empirical side: in- and out-of-vocabulary prompts under many sampling settings."""
    allowed = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    allowed[vocab] = True
    gen = torch.Generator().manual_seed(0)
    prompts = [vocab[torch.randint(len(vocab), (8, 8), generator=gen)],
               torch.randint(model.config.vocab_size, (8, 8), generator=gen),  # mostly unseen ids
               torch.tensor([gpt2.encode("Quantum chromodynamics, Zürich 1984: ")] * 8)]
    settings = [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=T_MAX),
                dict(temperature=2.0, top_k=50), dict(temperature=1.5, top_p=0.95)]
    for prompt in prompts:
        for seed, kwargs in enumerate(settings):
            new = gpt2.generate(model, prompt, 24, seed=seed, **kwargs)[:, prompt.size(1):]
            assert allowed[new].all(), (kwargs, new[~allowed[new]])
    with torch.no_grad():
        logits = model(torch.cat([p[:, :8] for p in prompts]))  # every position of every prompt
    probs = torch.softmax(logits / T_MAX, dim=-1)
    assert probs[..., ~allowed].max() == 0
