"""GPT-2's byte-level BPE via tiktoken, built from the ranks file shipped in `gpt2/data/`.

`<|endoftext|>` typed in a prompt is the real end-of-text token (id 50256), as the seed
project and GPT-2's training data treat it: it starts a new document. Any other
special-looking text (`<|im_start|>`, ...) is ordinary text.
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


def encode(text: str) -> list[int]:
    """Text -> ids. Lone surrogates (invalid Unicode) become U+FFFD instead of raising."""
    return get_tokenizer().encode(_SURROGATES.sub("\ufffd", text), allowed_special={EOT})


def decode(ids: list[int]) -> str:
    """Ids -> text; bytes that do not form valid UTF-8 become U+FFFD."""
    return get_tokenizer().decode(ids, errors="replace")


def token_bytes(token_id: int) -> bytes:
    return get_tokenizer().decode_single_token_bytes(token_id)


class StreamDecoder:
    """Turns ids arriving one at a time into text, holding back a multi-byte character
    (an emoji split over two tokens) until it is complete."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        return self._utf8.decode(token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

