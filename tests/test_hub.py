"""A Hub that accepts connections but never answers: found out in seconds, never waited on
for minutes (issue 14, item 5)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, free_port, wait_until_up

import gpt2
from gpt2 import hub


def serve(answer_probe: bool) -> Iterator[str]:
    """A local HTTP server that accepts every connection and then says nothing, except (when
    `answer_probe`) a 200 to `HEAD /`, so that the probe passes and the download hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            if answer_probe:
                conn.settimeout(0.5)
                try:
                    request = conn.recv(4096)
                except OSError:
                    continue
                if request.startswith(b"HEAD / "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


@pytest.fixture
def silent_hub() -> Iterator[str]:
    yield from serve(answer_probe=False)


@pytest.fixture
def stalling_hub() -> Iterator[str]:
    yield from serve(answer_probe=True)


@pytest.fixture
def online_with_empty_cache(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GPT2_WEIGHTS_DIR", str(tmp_path / "weights"))


def test_a_silent_hub_is_unreachable(silent_hub, online_with_empty_cache, monkeypatch):
    """The probe used to open a TCP connection and call that reachable."""
    import huggingface_hub.constants as c

    assert hub.reachable(silent_hub, timeout=0.5) is False
    monkeypatch.setattr(c, "ENDPOINT", silent_hub)
    monkeypatch.setattr(hub, "PROBE_SECONDS", 0.5)
    assert hub.obtainable("gpt2-large") is False
    with pytest.raises(gpt2.WeightsError, match="not in the Hugging Face cache .*Hub is unreachable"):
        gpt2.load_model("gpt2-large")


def test_a_download_that_stalls_is_reported_as_stuck(stalling_hub, online_with_empty_cache, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", stalling_hub)
    assert hub.reachable(stalling_hub)
    with pytest.raises(gpt2.WeightsError, match=r"openai-community/gpt2-large: the download is stuck: "
                                                r"the Hugging Face Hub sent nothing for 1\.5 s"):
        hub.download("gpt2-large", stall_seconds=1.5)


def test_a_stuck_download_holds_up_no_other_model(stalling_hub, tiny_checkpoint, tmp_path):
    """The app online against a Hub that answers the probe and then never sends a byte: two
    requests for `gpt2` wait on the stuck download while two for the local model run and
    finish; then the stuck ones are told so. (With the loads inside the two generation slots,
    the local requests used to wait for the download to give up.)"""
    from gradio_client import Client

    port, log = free_port(), tmp_path / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": stalling_hub, "HF_HOME": str(tmp_path / "hf"),
           "GPT2_WEIGHTS_DIR": str(tmp_path / "weights"), "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--model", str(tiny_checkpoint), "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        finished: list[str] = []

        def ask(model: str) -> str:
            try:
                Client(url, verbose=False).predict(prompt="Hello", model=model, temperature=0.0,
                                                   max_new_tokens=8, api_name="/generate")
                outcome = "ok"
            except Exception as error:  # noqa: BLE001
                outcome = str(error)
            finished.append(model)
            return outcome

        with ThreadPoolExecutor(4) as pool:
            stuck = [pool.submit(ask, "gpt2") for _ in range(2)]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "loading model gpt2" not in log.read_text():
                time.sleep(0.1)
            local = [pool.submit(ask, "local:tiny") for _ in range(2)]
            assert [f.result() for f in local] == ["ok", "ok"]
            assert finished == ["local:tiny", "local:tiny"]  # the gpt2 requests are still waiting
            assert all("the download is stuck" in f.result() for f in stuck)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
