"""The trainer: loss falls on the built-in corpus, and resuming reproduces an uninterrupted run."""
import json

import torch

import gpt2
from gpt2.training.trainer import TrainConfig, lr_at, train
from gpt2.training.checkpoints import state_paths

TINY = gpt2.GPTConfig(context_length=64, n_embd=32, n_layer=2, n_head=2)
FAST = TrainConfig(steps=8, batch_size=4, seq_len=32, warmup=2, corpus_docs=300, eval_every=4,
                   eval_batches=2, ckpt_every=4, lr=3e-3)


def test_loss_falls_on_builtin_corpus(tmp_path):
    cfg = TrainConfig(**{**FAST.__dict__, "steps": 30, "eval_every": 15, "ckpt_every": 30})
    history = train(tmp_path / "m.safetensors", TINY, cfg, progress=False)
    first, last = history["train_loss"][0], sum(history["train_loss"][-5:]) / 5
    print(f"train loss {first:.3f} -> {last:.3f}; val {history['val_loss']}")
    assert last < first - 0.4
    assert history["val_loss"][-1] < history["val_loss"][0]
    model = gpt2.load_model(tmp_path / "m.safetensors")  # the shipped format, full vocabulary
    assert model.config.vocab_size == 50257
    assert (tmp_path / "m.loss.html").stat().st_size > 0


def test_resume_gives_identical_losses(tmp_path):
    straight = train(tmp_path / "a.safetensors", TINY, FAST, progress=False)
    train(tmp_path / "b.safetensors", TINY, FAST, stop_at=4, progress=False)
    assert json.loads(state_paths(tmp_path / "b.safetensors")[1].read_text())["step"] == 4
    resumed = train(tmp_path / "b.safetensors", TINY, FAST, progress=False)
    print(straight["train_loss"], resumed["train_loss"], sep="\n")
    assert len(resumed["train_loss"]) == FAST.steps
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["val_loss"] == straight["val_loss"]
    a, b = (gpt2.load_model(tmp_path / f"{n}.safetensors").state_dict() for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_pickle_in_checkpoints(tmp_path):
    train(tmp_path / "m.safetensors", TINY, FAST, stop_at=4, progress=False)
    tensors_path, json_path, _ = state_paths(tmp_path / "m.safetensors")
    assert tensors_path.read_bytes()[8:9] == b"{"  # safetensors: u64 header size, JSON header
    json.loads(json_path.read_text())


def test_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert lr_at(10, cfg) > lr_at(50, cfg) > lr_at(99, cfg) >= 0.1


def test_corpus_is_deterministic_and_repeats_segments():
    from gpt2.training import corpus

    assert corpus.documents(20, seed=3) == corpus.documents(20, seed=3)
    assert corpus.documents(20, seed=3) != corpus.documents(20, seed=4)
    vocab = torch.arange(1000, 1100)
    filler = torch.arange(500)
    rows = corpus.repeated_segment_rows(vocab, filler, 50, 31, 3, 10, torch.Generator().manual_seed(0))
    lengths = set()
    for row in rows.tolist():
        seg = [t for t in row if t >= 1000]
        period = next(p for p in range(3, 11) if seg[:p] == seg[p:2 * p])
        assert len(seg) in (2 * period, 3 * period)
        lengths.add(period)
    assert len(lengths) >= 5  # varied lengths: no single look-back distance fits every row
