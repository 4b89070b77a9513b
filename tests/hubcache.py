"""A Hugging Face cache holding tiny GPT-2 repos under other ids than OpenAI's, laid out as
huggingface_hub lays out a download (`hub/models--ORG--NAME/snapshots/<revision>/`, `refs/`):
shared by tests/test_hub_repos.py and tests/test_app_hub_models.py."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest

import gpt2
from conftest import save_hf_checkpoint
from gpt2.training.corpus import documents

OWN = "tiny-org/own-bpe"  # relu, n_inner=48, its own tokenizer.json (600 ids)
PAIR = "tiny-org/pair-bpe"  # vocab.json + merges.txt, an untied head, per-layer attention scaling
PICKLE = "tiny-org/pickle-only"  # config.json + pytorch_model.bin only
SPECIALS = ["<|endoftext|>", "<|user|>"]
TEXT = "Once upon a time, Mia found a red box in the garden.<|endoftext|>Tom said: <|user|> hello"


def revision(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def trained_tokenizer():
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(documents(200, seed=0), vocab_size=600, min_frequency=2, special_tokens=SPECIALS)
    return tokenizer


def snapshot(home: Path, repo_id: str, rev: str, refs: tuple[str, ...] = ("main",)) -> Path:
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / rev
    folder.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(rev)
    return folder


def make_hf_home(home: Path) -> Path:
    """An HF_HOME holding OWN (main, and a tag v1 with other weights), PAIR and PICKLE."""
    tokenizer = trained_tokenizer()
    V, eot = tokenizer.get_vocab_size(), tokenizer.token_to_id(SPECIALS[0])
    own = gpt2.GPTConfig(vocab_size=V, context_length=128, n_embd=32, n_layer=2, n_head=4,
                         activation_function="relu", n_inner=48, bos_token_id=eot, eos_token_id=eot)
    for name, seed, refs in ((OWN, 0, ("main",)), (OWN + "@v1", 1, ("v1",))):
        folder = snapshot(home, OWN, revision(name), refs)
        save_hf_checkpoint(own, folder, seed=seed)
        tokenizer.save(str(folder / "tokenizer.json"))
    pair = gpt2.GPTConfig(vocab_size=V, context_length=64, n_embd=32, n_layer=2, n_head=4,
                          tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True,
                          bos_token_id=eot, eos_token_id=eot)
    folder = snapshot(home, PAIR, revision(PAIR))
    save_hf_checkpoint(pair, folder, seed=2)
    tokenizer.save_model(str(folder))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": SPECIALS[0],
                                                                "additional_special_tokens": SPECIALS[1:]}))
    folder = snapshot(home, PICKLE, revision(PICKLE))
    (folder / "config.json").write_text(json.dumps(gpt2.GPTConfig(n_embd=32, n_layer=1, n_head=4).to_hf()))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    return home


class Boom:
    """Unpickling this fails the test: proof that no pickle is ever read."""

    def __reduce__(self):
        return (pytest.fail, ("a pickle was read",))




def folder_of(home: Path, name: str) -> Path:
    repo_id = name.split("@")[0]
    return home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision(name)


def use_offline(home: Path, monkeypatch) -> Path:
    """This process reads `home` as its Hub cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home
