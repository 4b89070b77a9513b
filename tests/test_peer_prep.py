"""benchmarks/peer.py without llama.cpp: the checkpoint it hands to llama.cpp's converter
(n_ctx in config.json, GPT-2's tokenizer files rebuilt offline) and its message when
llama-cpp-python is not installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gpt2

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def peer(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import peer
    return peer


def test_n_ctx_added_from_n_positions(peer, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1024}))
    peer.ensure_n_ctx(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "model_type": "gpt2", "n_positions": 1024, "n_ctx": 1024}


def test_n_ctx_kept_when_present(peer, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"n_positions": 1024, "n_ctx": 512}))
    peer.ensure_n_ctx(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["n_ctx"] == 512


def test_tokenizer_files_are_gpt2s(peer, tmp_path):
    """transformers loads the rebuilt vocab.json and merges.txt as GPT-2's tokenizer: the
    same ids as ours, 50,000 merges, <|endoftext|> as id 50256 and the EOS token."""
    from transformers import AutoTokenizer

    peer.write_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello world! It's 2024: naïve café, 🤖 emoji, tabs\tand  spaces\n\n<|endoftext|>Next"
    assert tokenizer.encode(text) == gpt2.encode(text)
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
    assert len((tmp_path / "merges.txt").read_text().splitlines()) == 1 + 50000


def test_missing_converter_is_a_message(peer, tmp_path):
    with pytest.raises(SystemExit, match="--llama-cpp-src"):
        peer.find_converter(None)
    with pytest.raises(SystemExit, match="no convert_hf_to_gguf.py"):
        peer.find_converter(str(tmp_path))


def test_without_llama_cpp_python_it_says_how_to_build_it(tmp_path):
    """A stand-in `llama_cpp` that fails to import, as when it is not installed: one line
    pointing at the README, no traceback."""
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer.py")], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode == 1
    assert "llama-cpp-python is not installed" in done.stderr and "benchmarks/README.md" in done.stderr
    assert "Traceback" not in done.stderr
