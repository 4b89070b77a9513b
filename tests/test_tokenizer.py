import hashlib

import pytest

import gpt2
from gpt2.tokenizer import RANKS_FILE, RANKS_SHA256


def test_known_gpt2_ids():
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.get_tokenizer().n_vocab == 50257


def test_ranks_file_is_checked(tmp_path):
    assert hashlib.sha256(RANKS_FILE.read_bytes()).hexdigest() == RANKS_SHA256
    altered = tmp_path / "gpt2.tiktoken"
    altered.write_bytes(RANKS_FILE.read_bytes().replace(b" 0\n", b" 1\n", 1))
    with pytest.raises(ValueError, match="is not GPT-2's ranks file"):
        gpt2.get_tokenizer.__wrapped__(altered)


@pytest.mark.parametrize("text", [
    "naïve café, Œuvre — “quotes” ½ 東京 🤖👩‍👩‍👧 e\u0301 \u0301",
    "  leading and   multiple spaces\n\n\ttabs\r\n",
    "emoji at end 🎉",
    "",
    "\x00 NUL and \x07 bell",
])
def test_round_trip(text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_endoftext_is_the_special_token_and_never_raises():
    ids = gpt2.encode("one<|endoftext|>two")
    assert gpt2.EOT_ID in ids and ids.count(gpt2.EOT_ID) == 1
    assert gpt2.decode(ids) == "one<|endoftext|>two"
    assert gpt2.EOT_ID not in gpt2.encode("<|im_start|> <|fim_prefix|>")  # ordinary text


def test_lone_surrogate_becomes_replacement_char():
    assert gpt2.decode(gpt2.encode("a\ud800b")) == "a\ufffdb"


def test_stream_decoder_holds_back_partial_characters():
    ids = gpt2.encode("🤖 robot 東京")
    decoder = gpt2.StreamDecoder()
    pieces = [decoder.add(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == "🤖 robot 東京"
    assert all("\ufffd" not in p for p in pieces)
