"""Byte-level BPE via tiktoken: GPT-2's, built from the ranks file shipped in `gpt2/data/`,
or a checkpoint's own (`Tokenizer`, read from its files by `gpt2.hf_tokenizer`).

`<|endoftext|>` typed in a prompt is the real end-of-text token (id 50256), as the seed
project and GPT-2's training data treat it: it starts a new document. Any other
special-looking text (`<|im_start|>`, ...) is ordinary text. A checkpoint's own tokenizer
treats its own added tokens so, as the `tokenizers` library does.
"""
from __future__ import annotations

import base64
import codecs
import hashlib
import re
from functools import lru_cache
from pathlib import Path

import tiktoken

RANKS_FILE = Path(__file__).resolve().parent / "data" / "gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = "<|endoftext|>"
EOT_ID = 50256
# r50k_base's split pattern (GPT-2's regex, in tiktoken's faster equivalent form).
_SURROGATES = re.compile("[\ud800-\udfff]")
_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@lru_cache(maxsize=1)
def get_tokenizer(ranks_file: str | Path = RANKS_FILE) -> tiktoken.Encoding:
    """The GPT-2 encoding, offline. Raises if the ranks file is missing or altered."""
    data = Path(ranks_file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise ValueError(f"{ranks_file}: sha256 {digest} is not GPT-2's ranks file ({RANKS_SHA256})")
    ranks = {base64.b64decode(token): int(rank) for token, rank in
             (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(name="gpt2", pat_str=_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: EOT_ID})


class Tokenizer:
    """Byte-level BPE: text <-> ids. tiktoken encodes with `encoding`, whose ranks are the
    merge order; `ids` maps a rank to the token's id where they differ (a tokenizer trained
    by `tokenizers` numbers its tokens otherwise than GPT-2), and `vocab` gives each id's bytes
    for decoding (None: the encoding's ranks are the ids)."""

    def __init__(self, encoding: tiktoken.Encoding, ids: list[int] | None = None,
                 vocab: dict[int, bytes] | None = None):
        self.encoding = encoding
        self._ids = ids
        self._vocab = vocab
        self.n_vocab = encoding.n_vocab if vocab is None else max(vocab) + 1  # one more than the largest id

    def encode(self, text: str) -> list[int]:
        """Text -> ids; the tokenizer's special tokens in the text are those tokens. Lone
        surrogates (invalid Unicode) become U+FFFD instead of raising."""
        ranks = self.encoding.encode(_SURROGATES.sub("\ufffd", text), allowed_special="all")
        return ranks if self._ids is None else [self._ids[r] for r in ranks]

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; bytes that do not form valid UTF-8 become U+FFFD."""
        if self._vocab is None:
            return self.encoding.decode(ids, errors="replace")
        return b"".join(map(self.token_bytes, ids)).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if self._vocab is None:
            return self.encoding.decode_single_token_bytes(token_id)
        try:
            return self._vocab[token_id]
        except KeyError:
            raise KeyError(f"token id {token_id} is not in this tokenizer (0..{self.n_vocab - 1})") from None


@lru_cache(maxsize=1)
def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's: `<|endoftext|>` is its one special token."""
    return Tokenizer(get_tokenizer())


def encode(text: str) -> list[int]:
    """Text -> GPT-2's ids. Lone surrogates (invalid Unicode) become U+FFFD instead of raising."""
    return gpt2_tokenizer().encode(text)


def decode(ids: list[int]) -> str:
    """GPT-2's ids -> text; bytes that do not form valid UTF-8 become U+FFFD."""
    return gpt2_tokenizer().decode(ids)


def token_bytes(token_id: int) -> bytes:
    return gpt2_tokenizer().token_bytes(token_id)


class StreamDecoder:
    """Turns ids arriving one at a time into text, holding back a multi-byte character
    (an emoji split over two tokens) until it is complete. `tokenizer`: GPT-2's by default."""

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._token_bytes = (tokenizer or gpt2_tokenizer()).token_bytes

    def add(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

