"""A checkpoint's own tokenizer, read from its Hugging Face files: byte-level BPE (GPT-2's
kind) only, as `vocab.json` + `merges.txt` or as `tokenizer.json`.

The files become a tiktoken encoding: every byte is a token of its own, and each merge, in
the order of `merges`, makes the token its two parts join into, with the next rank. tiktoken
then merges, in each piece of GPT-2's split, the adjacent pair whose join ranks lowest: the
`tokenizers` library's BPE, which merges the pair listed first in `merges`, wherever each
token comes from one merge (as in GPT-2's files and those `tokenizers` trains). Ranks are
mapped to the files' own ids. Added tokens (`<|endoftext|>`, ...) are special: typed in a
text they are that token, as in `tokenizers`.

What is not byte-level BPE (SentencePiece, WordPiece, a BPE over other pieces) or asks for
what this does not compute (a normalizer, a prefix space, BPE dropout) is refused by name.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import tiktoken

from .hub import WeightsError
from .tokenizer import _PATTERN, EOT, Tokenizer

OTHER_KINDS = {  # files of tokenizers that are not byte-level BPE -> their kind
    "tokenizer.model": "SentencePiece", "spiece.model": "SentencePiece",
    "sentencepiece.bpe.model": "SentencePiece", "vocab.txt": "WordPiece",
}
MODEL_KINDS = {"Unigram": "SentencePiece (Unigram)", "WordPiece": "WordPiece", "WordLevel": "WordLevel"}
SPECIAL_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


@functools.cache
def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte in its
    files (`bytes_to_unicode`), mapped to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def read_tokenizer_dir(directory: Path) -> Tokenizer | None:
    """The folder's own tokenizer: `tokenizer.json`, else `vocab.json` + `merges.txt`; None
    where it has no tokenizer files (GPT-2's is then the model's). WeightsError for a
    tokenizer that is not byte-level BPE, naming the file and what it is."""
    if (directory / "tokenizer.json").is_file():
        return _parsed(directory / "tokenizer.json", lambda: from_tokenizer_json(directory / "tokenizer.json"))
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return _parsed(directory, lambda: from_vocab_and_merges(vocab, merges))
    for name, kind in OTHER_KINDS.items():
        if (directory / name).is_file():
            raise WeightsError(f"{directory / name}: a {kind} tokenizer, not byte-level BPE; only GPT-2's kind "
                               "of tokenizer is read (tokenizer.json, or vocab.json + merges.txt)")
    if vocab.is_file() or merges.is_file():
        missing = merges if vocab.is_file() else vocab
        raise WeightsError(f"{missing}: file not found (a byte-level BPE tokenizer needs vocab.json and merges.txt)")
    return None


def _parsed(path: Path, make: Callable[[], Tokenizer]) -> Tokenizer:
    """`make()`; tokenizer files of the wrong shape (a list where an object belongs, ...) a
    WeightsError naming `path`."""
    try:
        return make()
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise WeightsError(f"{path}: tokenizer files not of the expected shape ({type(e).__name__}: {e})") from None


def has_tokenizer_files(directory: Path) -> bool:
    """Whether the folder holds a tokenizer of its own (any kind): GPT-2's does not apply."""
    names = ("tokenizer.json", "vocab.json", "merges.txt", *OTHER_KINDS)
    return any((directory / name).is_file() for name in names)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WeightsError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None


def from_tokenizer_json(path: Path) -> Tokenizer:
    """A `tokenizers` file (tokenizer.json) of a byte-level BPE."""
    data = _json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise WeightsError(f"{path}: no tokenizer model in it")
    kind = model.get("type")
    if kind != "BPE":
        raise WeightsError(f"{path}: a {MODEL_KINDS.get(kind, repr(kind))} tokenizer, not byte-level BPE; only "
                           "GPT-2's kind of tokenizer is read")
    _check_pipeline(path, data, model)
    added = data.get("added_tokens") or []
    for token in added:
        _check_added(path, token)
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges") or []]
    return build(path, model.get("vocab") or {}, merges, {t["content"]: t["id"] for t in added})


def _check_added(path: Path, token: dict) -> None:
    """An added token is matched in a text as it is written: no stripping, no word bounds."""
    flags = [flag for flag in ("lstrip", "rstrip", "single_word") if token.get(flag)]
    if flags:
        raise WeightsError(f"{path}: added token {token.get('content')!r} has {flags[0]}=true, which is "
                           "not computed here")


def _check_pipeline(path: Path, data: dict, model: dict) -> None:
    """WeightsError naming the first part of the pipeline that is not GPT-2's."""
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel":
        raise WeightsError(f"{path}: pre_tokenizer {pre.get('type')!r} is not byte-level (a BPE over "
                           "other pieces, e.g. SentencePiece's); only GPT-2's ByteLevel split is read")
    if pre.get("add_prefix_space") or not pre.get("use_regex", True):
        field = "add_prefix_space=true" if pre.get("add_prefix_space") else "use_regex=false"
        raise WeightsError(f"{path}: pre_tokenizer ByteLevel with {field} is not computed here (GPT-2's has "
                           "add_prefix_space=false, use_regex=true)")
    if data.get("normalizer") is not None:
        raise WeightsError(f"{path}: normalizer {data['normalizer'].get('type')!r} is not computed here "
                           "(GPT-2's tokenizer has none)")
    decoder = data.get("decoder")
    if decoder is not None and decoder.get("type") != "ByteLevel":
        raise WeightsError(f"{path}: decoder {decoder.get('type')!r} is not byte-level")
    for field, plain in (("dropout", None), ("continuing_subword_prefix", None), ("end_of_word_suffix", None),
                         ("byte_fallback", False)):
        if model.get(field) not in (plain, ""):
            raise WeightsError(f"{path}: BPE {field}={model[field]!r} is not computed here")


def from_vocab_and_merges(vocab_file: Path, merges_file: Path) -> Tokenizer:
    """GPT-2's file pair (vocab.json, merges.txt), its special tokens from the files beside
    them (added_tokens.json, special_tokens_map.json, tokenizer_config.json); with none of
    those, `<|endoftext|>` where the vocabulary has it, as transformers' GPT2Tokenizer."""
    vocab = _json(vocab_file)
    if not isinstance(vocab, dict):
        raise WeightsError(f"{vocab_file}: not a vocabulary (a JSON object of token: id)")
    try:
        lines = merges_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise WeightsError(f"{merges_file}: not readable ({type(e).__name__}: {e})") from None
    merges = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    return build(merges_file, vocab, merges, _declared_specials(vocab_file.parent, vocab))


def _declared_specials(directory: Path, vocab: dict) -> dict[str, int]:
    """{content: id} of the special and added tokens the tokenizer's side files declare."""
    specials: dict[str, int] = {}
    declared = [directory / name for name in ("added_tokens.json", "special_tokens_map.json", "tokenizer_config.json")]
    if declared[0].is_file():
        specials.update(_json(declared[0]))
    for path in declared[1:]:
        data = _json(path) if path.is_file() else {}
        for token_id, token in (data.get("added_tokens_decoder") or {}).items():
            _check_added(path, token)
            specials[token["content"]] = int(token_id)
        named = [data.get(field) for field in SPECIAL_FIELDS] + list(data.get("additional_special_tokens") or [])
        for token in named:
            content = token.get("content") if isinstance(token, dict) else token
            if isinstance(content, str) and content in vocab:
                specials.setdefault(content, vocab[content])
    if not any(path.is_file() for path in declared) and EOT in vocab:
        specials[EOT] = vocab[EOT]
    return specials


def build(source: Path, vocab: dict[str, int], merges: list[list[str]], specials: dict[str, int]) -> Tokenizer:
    """The tokenizer of a byte-level BPE: `vocab` {token: id} and `merges` [[a, b], ...] in
    GPT-2's byte alphabet, `specials` {content: id} matched in texts before the split."""
    alphabet = byte_alphabet()

    def to_bytes(token: str) -> bytes:
        try:
            return bytes(alphabet[c] for c in token)
        except KeyError as e:
            raise WeightsError(f"{source}: token {token!r} holds {e.args[0]!r}, outside GPT-2's byte-level "
                               "alphabet: not a byte-level BPE tokenizer") from None

    def token_id(token: str) -> int:
        if token not in vocab:
            raise WeightsError(f"{source}: token {token!r} is not in the vocabulary")
        return vocab[token]

    ranks = {bytes([b]): b for b in range(256)}
    ids = [token_id(c) for c, _ in sorted(alphabet.items(), key=lambda item: item[1])]
    for merge in merges:
        if len(merge) != 2:
            raise WeightsError(f"{source}: merge {' '.join(merge)!r} is not a pair of tokens")
        joined = to_bytes(merge[0]) + to_bytes(merge[1])
        if joined not in ranks:
            ranks[joined] = len(ranks)
            ids.append(token_id(merge[0] + merge[1]))
    special_ranks = {content: len(ranks) + i for i, content in enumerate(specials)}
    ids += specials.values()
    by_id = {i: to_bytes(token) for token, i in vocab.items() if token not in specials}
    by_id.update({i: content.encode("utf-8") for content, i in specials.items()})
    encoding = tiktoken.Encoding(name=str(source), pat_str=_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=special_ranks)
    return Tokenizer(encoding, ids, by_id)
