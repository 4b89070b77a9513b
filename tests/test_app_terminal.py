"""What the app says in the terminal: the model it serves and where, in a few lines of its
own; without a C++ compiler, one line saying so (and the app runs eager); no traceback, and
nothing alarming when Ctrl+C ends it."""
from __future__ import annotations

import sys

import torch

import gpt2
from conftest import ROOT, clean_env, free_port, serving
from gpt2.fast.kernels import NO_COMPILER


def test_the_terminal_says_model_url_and_a_missing_compiler_once(tmp_path):
    port, log = free_port(), tmp_path / "app.log"
    env = clean_env(GRADIO_SERVER_PORT=str(port), CXX="/nonexistent/c++", HF_HUB_OFFLINE="1",
                    HF_HOME=str(tmp_path / "hf"), GPT2_KERNEL_DIR=str(tmp_path / "kernels"))
    with serving([sys.executable, "app.py", "--model", "builtin"], env, ROOT, log) as url:
        from gradio_client import Client

        client = Client(url, verbose=False)
        text = client.predict(prompt="Once upon a time", model="builtin", temperature=0,
                              max_new_tokens=8, api_name="/generate")
    ids = torch.tensor([gpt2.encode("Once upon a time")])
    eager = gpt2.generate(gpt2.load_model("builtin", compile=False), ids, 8)
    assert text == gpt2.decode(eager[0, ids.size(1):].tolist())  # served, eager

    lines = log.read_text().splitlines()
    said = [line.split(": ", 1)[1] for line in lines if " playground." in line or " gpt2." in line]
    assert "serving builtin (fp32 weights), loaded on first use" in said
    assert f"GPT-2 playground running at http://127.0.0.1:{port}/ (Ctrl+C to stop)" in said
    assert [line for line in said if "C++" in line] == [NO_COMPILER]
    assert not [line for line in lines if " httpx: " in line]  # gradio's requests to itself
    assert "Traceback" not in log.read_text() and "Running on local URL" not in log.read_text()
