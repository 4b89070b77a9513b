"""A checkpoint's own byte-level BPE tokenizer (issue 31 item 2): `gpt2.load_tokenizer`
encodes like the `tokenizers` library on held-out text, special tokens included, decodes
back, and other kinds of tokenizer are refused by name."""
import glob
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt2
from conftest import ROOT, TINY, hf_reference
from gpt2.hf_tokenizer import byte_alphabet
from gpt2.training.corpus import documents

SPECIALS = ["<|endoftext|>", "<pad>", "<|im_start|>"]
SAMPLES = [
    "Hello <|endoftext|>world<pad> again<|im_start|>user\n",
    "<|endoftext|><|endoftext|><|im_start|><pad>",
    "It's, we'll, they'RE, I'd  \t\n\n   spaces\r\n\ttabs   ",
    "12345 3.14159 1,000,000 0x7f 2026-12-07",
    "héllo naïve café Ærø Straße ǅ e\u0301 ﬁ",
    "日本語のテキスト 中文 한국어 العربية עברית हिन्दी ไทย",
    "🙂🙃👩‍👩‍👧‍👦 🇫🇷 ⚙️ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "lone \ud800 surrogate",
    "", " ", "\n", "<|endoftext", "<|endoftext|", "a<pad>b<pad>",
]


def held_out() -> list[str]:
    """Text the tokenizer was not trained on: other stories, the tests' source, the samples."""
    sources = [Path(p).read_text() for p in sorted(glob.glob(str(ROOT / "tests" / "test_*.py")))[:12]]
    return documents(40, seed=1) + sources + SAMPLES


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4,000-token byte-level BPE trained by `tokenizers` on other text than `held_out`, as
    `tokenizer.json` in one folder and `vocab.json` + `merges.txt` (+ its special tokens in
    special_tokens_map.json) in another; and the `tokenizers` object itself."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    train = documents(300, seed=0) + [Path(p).read_text() for p in sorted(glob.glob(str(ROOT / "gpt2" / "**" / "*.py"),
                                                                                 recursive=True))]
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(train, vocab_size=4000, min_frequency=2, special_tokens=SPECIALS)
    json_dir, pair_dir = tmp_path_factory.mktemp("tokenizer-json"), tmp_path_factory.mktemp("vocab-merges")
    tokenizer.save(str(json_dir / "tokenizer.json"))
    tokenizer.save_model(str(pair_dir))
    (pair_dir / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": SPECIALS[0], "pad_token": {"content": SPECIALS[1]}, "additional_special_tokens": SPECIALS[2:]}))
    return json_dir, pair_dir, Tokenizer.from_file(str(json_dir / "tokenizer.json"))


def _reference_ids(reference, text: str) -> list[int]:
    return reference.encode(text.replace("\ud800", "\ufffd"), add_special_tokens=False).ids


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json + merges.txt"])
def test_ids_equal_tokenizers_on_held_out_text(trained, layout):
    json_dir, pair_dir, reference = trained
    ours = gpt2.load_tokenizer(json_dir if layout == "tokenizer.json" else pair_dir)
    assert ours.n_vocab == reference.get_vocab_size()
    for text in held_out():
        ids = ours.encode(text)
        assert ids == _reference_ids(reference, text), text[:80]
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=False)
    assert ours.encode("<|im_start|>") == [reference.token_to_id("<|im_start|>")]


def test_streaming_decode_with_an_own_tokenizer(trained):
    ours = gpt2.load_tokenizer(trained[0])
    text = SAMPLES[6] + SAMPLES[5]
    stream = gpt2.StreamDecoder(ours)
    pieces = [stream.add(i) for i in ours.encode(text)]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)  # a character split over tokens waits


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """GPT-2's own tokenizer as transformers ships it (vocab.json + merges.txt), written from
    the ranks in gpt2/data: each token's merge is the pair its lower ranks build it from."""
    ranks = gpt2.get_tokenizer()._mergeable_ranks
    chars = {b: c for c, b in byte_alphabet().items()}
    text = lambda token: "".join(chars[b] for b in token)  # noqa: E731

    def parts(token: bytes, limit: int) -> list[bytes]:
        pieces = [bytes([b]) for b in token]
        while (pairs := [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]) \
                and min(pairs)[0] < limit:
            i = min(pairs)[1]
            pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
        return pieces

    merges = [" ".join(map(text, parts(token, rank))) for token, rank in sorted(ranks.items(), key=lambda x: x[1])
              if rank >= 256]
    directory = tmp_path_factory.mktemp("gpt2-tokenizer")
    vocab = {text(token): rank for token, rank in ranks.items()} | {gpt2.tokenizer.EOT: gpt2.EOT_ID}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def test_gpt2s_own_files_encode_as_tokenizers_and_as_tiktoken(gpt2_files):
    from tokenizers import ByteLevelBPETokenizer

    reference = ByteLevelBPETokenizer(str(gpt2_files / "vocab.json"), str(gpt2_files / "merges.txt"))
    reference.add_special_tokens([gpt2.tokenizer.EOT])
    ours = gpt2.load_tokenizer(gpt2_files)
    for text in held_out():
        ids = ours.encode(text)
        assert ids == _reference_ids(reference, text) == gpt2.encode(text), text[:80]
        assert ours.decode(ids) == gpt2.decode(ids)


def test_sources_without_tokenizer_files_use_gpt2s(tiny_dir, tmp_path):
    gpt2s = gpt2.tokenizer.gpt2_tokenizer()
    model_file = gpt2.save_model(gpt2.GPT(TINY), tmp_path / "ours.safetensors")
    for source in ("gpt2", "openai-community/gpt2-xl", "builtin", tiny_dir, tiny_dir / "model.safetensors", model_file):
        assert gpt2.load_tokenizer(source) is gpt2s
    with pytest.raises(gpt2.WeightsError, match="not a preset .* and no such file or folder"):
        gpt2.load_tokenizer(tmp_path / "missing")


@pytest.fixture(scope="module")
def own_vocabulary_model(trained, tmp_path_factory):
    """A 4,000-token model (fewer ids than GPT-2's, so loadable only with its own tokenizer
    beside it), saved by transformers into the tokenizer.json folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    json_dir, _, reference = trained
    directory = shutil.copytree(json_dir, tmp_path_factory.mktemp("own-vocabulary") / "model")
    torch.manual_seed(0)
    fields = {k: v for k, v in TINY.to_hf().items() if k not in ("model_type", "architectures")}
    GPT2LMHeadModel(GPT2Config(**{**fields, "vocab_size": reference.get_vocab_size(), "bos_token_id": 0,
                                  "eos_token_id": 0, "initializer_range": 0.2})).save_pretrained(directory)
    return directory


PROMPT = "Mira found a shiny key in the park. She"


def test_a_model_with_its_own_vocabulary_generates_like_transformers(trained, own_vocabulary_model, tmp_path):
    reference = trained[2]
    model, tokenizer = gpt2.load_model(own_vocabulary_model), gpt2.load_tokenizer(own_vocabulary_model)
    idx = torch.tensor([tokenizer.encode(PROMPT)])
    want = hf_reference(own_vocabulary_model).generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)
    ours = gpt2.generate(model, idx, 12, eos_id=model.config.eos_token_id)
    assert torch.equal(ours, want)
    assert tokenizer.decode(ours[0].tolist()) == reference.decode(ours[0].tolist(), skip_special_tokens=False)
    without = shutil.copytree(own_vocabulary_model, tmp_path / "without")
    (without / "tokenizer.json").unlink()
    with pytest.raises(gpt2.WeightsError, match="smaller than GPT-2's tokenizer"):
        gpt2.load_model(without, compile=False)


def test_the_cli_generates_with_the_models_own_tokenizer(own_vocabulary_model, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "gpt2", "generate", PROMPT, "--model", str(own_vocabulary_model),
                          "--max-new-tokens", "10"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    tokenizer = gpt2.load_tokenizer(own_vocabulary_model)
    ids = gpt2.generate(gpt2.load_model(own_vocabulary_model, compile=False), torch.tensor([tokenizer.encode(PROMPT)]), 10)
    assert run.stdout == tokenizer.decode(ids[0].tolist()) + "\n"


def _tokenizers_file(kind: str, directory: Path) -> Path:
    """A tokenizer.json of another kind, written by `tokenizers` itself."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "WordPiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer, trainer = pre_tokenizers.BertPreTokenizer(), trainers.WordPieceTrainer(
            vocab_size=200, special_tokens=["[UNK]"])
    elif kind == "Unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer, trainer = pre_tokenizers.Metaspace(), trainers.UnigramTrainer(vocab_size=100)
    else:  # a BPE over other pieces, or GPT-2's split with what it does not compute
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = {"Metaspace": pre_tokenizers.Metaspace(),
                             "prefix": pre_tokenizers.ByteLevel(add_prefix_space=True),
                             "normalizer": pre_tokenizers.ByteLevel(add_prefix_space=False)}[kind]
        if kind == "normalizer":
            tok.normalizer = normalizers.NFKC()
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents(50, seed=0), trainer=trainer)
    tok.save(str(directory / "tokenizer.json"))
    return directory


REFUSED = [
    ("WordPiece", "tokenizer.json: a WordPiece tokenizer, not byte-level BPE"),
    ("Unigram", "tokenizer.json: a SentencePiece (Unigram) tokenizer, not byte-level BPE"),
    ("Metaspace", "tokenizer.json: pre_tokenizer 'Metaspace' is not byte-level"),
    ("prefix", "pre_tokenizer ByteLevel with add_prefix_space=true is not computed here"),
    ("normalizer", "normalizer 'NFKC' is not computed here"),
]


@pytest.mark.parametrize("kind, message", REFUSED, ids=[k for k, _ in REFUSED])
def test_other_kinds_of_tokenizer_are_refused_by_name(tmp_path, kind, message):
    with pytest.raises(gpt2.WeightsError, match=re.escape(message)):
        gpt2.load_tokenizer(_tokenizers_file(kind, tmp_path))


@pytest.mark.parametrize("name, message", [
    ("tokenizer.model", "tokenizer.model: a SentencePiece tokenizer, not byte-level BPE"),
    ("spiece.model", "spiece.model: a SentencePiece tokenizer"),
    ("vocab.txt", "vocab.txt: a WordPiece tokenizer, not byte-level BPE"),
    ("vocab.json", r"merges\.txt: file not found \(a byte-level BPE tokenizer needs vocab\.json and merges\.txt\)"),
])
def test_tokenizer_files_of_other_kinds_are_refused(tiny_dir, tmp_path, name, message):
    directory = shutil.copytree(tiny_dir, tmp_path / "model")
    (directory / name).write_text("{}")
    with pytest.raises(gpt2.WeightsError, match=message):
        gpt2.load_tokenizer(directory)


def test_a_vocabulary_outside_the_byte_alphabet_is_refused(trained, tmp_path):
    directory = shutil.copytree(trained[1], tmp_path / "tok")
    vocab = json.loads((directory / "vocab.json").read_text())
    (directory / "vocab.json").write_text(json.dumps({**vocab, "▁the": len(vocab)}))
    with pytest.raises(gpt2.WeightsError, match="token '▁the' holds '▁', outside GPT-2's byte-level alphabet"):
        gpt2.load_tokenizer(directory)


@pytest.mark.parametrize("name, content", [
    ("tokenizer.json", '{"model": {"type": "BPE"}, "pre_tokenizer": ["ByteLevel"]}'),
    ("tokenizer.json", '[1, 2'),
    ("added_tokens.json", '["<pad>"]'),
])
def test_malformed_tokenizer_files_are_refused(trained, tmp_path, name, content):
    directory = shutil.copytree(trained[1], tmp_path / "tok")
    (directory / name).write_text(content)
    where = name if name == "tokenizer.json" else "tok"  # the file, or the folder of vocab.json + merges.txt
    with pytest.raises(gpt2.WeightsError, match=rf"{where}: (not a readable JSON file|tokenizer files not of the)"):
        gpt2.load_tokenizer(directory)
