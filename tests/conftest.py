"""Shared fixtures: tiny random GPT-2 checkpoints in the Hub's exact file layout, a stand-in for
the Hub's cache, the app served from them in a subprocess, and the package installed from a
wheel into a fresh environment."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import gpt2

# The kernels wherever they build: a tiny model's load-time timing (gpt2.fast.kernels.speedup)
# could keep it eager, and the tests of the kernels must run them. test_kernels checks the
# automatic choice itself; app subprocesses inherit this.
os.environ.setdefault("GPT2_KERNELS", "on")

TINY = gpt2.GPTConfig(vocab_size=50257, context_length=64, n_embd=32, n_layer=2, n_head=4)


def save_hf_checkpoint(config: gpt2.GPTConfig, directory: Path, seed: int = 0) -> Path:
    """Random weights written by transformers' own `save_pretrained` (safetensors)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in config.to_hf().items()
                                       if k not in ("model_type", "architectures")}))
    hf.save_pretrained(directory)
    return directory


def hf_reference(directory: Path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_hf_checkpoint(TINY, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_hf(tiny_dir):
    return hf_reference(tiny_dir)


def runnable_isas() -> list[str]:
    """The decode paths this CPU runs (`GPT2_CPU_ISA`): its own and every lower one of its kind."""
    from gpt2.fast import rowdot

    return list(rowdot.runnable_isas())


@contextlib.contextmanager
def forced_isa(isa: str) -> Iterator[None]:
    """This process as on a CPU that has only path `isa`: `GPT2_CPU_ISA` set (the tiers' stream
    dtype follows it) and the kernels that models built meanwhile use, that path's."""
    from gpt2.fast import kernels, rowdot

    saved_env, saved_lib = os.environ.get("GPT2_CPU_ISA"), kernels._library
    os.environ["GPT2_CPU_ISA"] = isa
    try:
        kernels._library = rowdot.build(isa)
        kernels._self_test(kernels._library)
        yield
    finally:
        kernels._library = saved_lib
        if saved_env is None:
            os.environ.pop("GPT2_CPU_ISA", None)
        else:
            os.environ["GPT2_CPU_ISA"] = saved_env


def compiled(model: gpt2.GPT) -> gpt2.GPT:
    """The model once its background compile finished; fails the test if it did not work."""
    assert model.compile_status is not None and model.compile_status.wait(timeout=600), \
        model.compile_status and model.compile_status.error
    return model


@pytest.fixture(scope="session", params=["compiled", "eager"])
def tiny_model(request, tiny_dir) -> gpt2.GPT:
    """Every test using it runs on both decode paths: compiled one-row kernels and eager."""
    if request.param == "eager":
        return gpt2.load_model(tiny_dir, compile=False)
    return compiled(gpt2.load_model(tiny_dir))


@pytest.fixture(autouse=True)
def no_compile_left_running():
    """A background compile saves and restores torch's global RNG around its tracing, so one
    left running could rewind another test's random draws: let each test's finish first."""
    yield
    for thread in threading.enumerate():
        if thread.name == "gpt2-compile":
            thread.join(timeout=600)


# -- the real app in a subprocess (shared by the test_app_server, robustness and security tests) --
ROOT = Path(__file__).resolve().parent.parent
BROKEN = {  # local checkpoint name -> what its load error must say
    "truncated": "truncated or corrupt",
    "corrupt": "truncated or corrupt",
    "wrong-shapes": "has shape (50257, 32), expected (50257, 48)",
    "no-config": "config.json: file not found",
}


@dataclass(frozen=True)
class AppServer:
    url: str
    pid: int
    log: Path
    gradio_tmp: Path  # GRADIO_TEMP_DIR: where Gradio would keep uploads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app did not start in {timeout}s:\n{log.read_text()[-3000:]}")


def save_random_gpt2(directory: Path, n_positions: int) -> Path:
    """A random 2-layer model in Hub layout, saved by transformers itself; sharp attention
    (initializer_range 0.3) so its maps are worth drawing."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=n_positions, n_embd=32, n_layer=2,
                               n_head=4, initializer_range=0.3)).save_pretrained(directory)
    return directory


def make_broken(good: Path, root: Path) -> dict[str, Path]:
    """One damaged copy of `good` per entry of BROKEN."""
    paths = {name: Path(shutil.copytree(good, root / name)) for name in BROKEN}
    weights = paths["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    weights = paths["corrupt"] / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # a header length of ~2**64
    config = paths["wrong-shapes"] / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "n_embd": 48}))
    (paths["no-config"] / "config.json").unlink()
    return paths


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[str]:
    """Run an app command (on the port GRADIO_SERVER_PORT in `env`, or its --port) with its
    output in `log`; yield its URL once it answers; end it with Ctrl+C (SIGINT), as a user would."""
    port = env["GRADIO_SERVER_PORT"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The app's default model: 128-token context."""
    return save_random_gpt2(tmp_path_factory.mktemp("ckpt") / "tiny", n_positions=128)


@pytest.fixture(scope="session")
def long_checkpoint(tmp_path_factory) -> Path:
    """Same size, 1024-token context: room for a generation long enough to stop midway."""
    return save_random_gpt2(tmp_path_factory.mktemp("ckpt") / "long", n_positions=1024)


@pytest.fixture(scope="session")
def broken_checkpoints(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    return make_broken(tiny_checkpoint, tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="session")
def big_broken_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two ~30 MB checkpoints (128 wide) that fail to load: `big-nan` after reading every
    tensor (a NaN in the last one read), `big-shape` on its header (config wider than the file)."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("big")
    good = save_hf_checkpoint(gpt2.GPTConfig(context_length=64, n_embd=128, n_layer=2, n_head=4), root / "good")
    paths = {name: Path(shutil.copytree(good, root / name)) for name in ("big-nan", "big-shape")}
    weights = paths["big-nan"] / "model.safetensors"
    state = load_file(weights)
    state["transformer.h.1.mlp.c_proj.weight"][0, 0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    config = paths["big-shape"] / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "n_embd": 256}))
    return paths


@pytest.fixture(scope="session")
def app_server(tiny_checkpoint, long_checkpoint, broken_checkpoints, big_broken_checkpoints, tmp_path_factory):
    """`python app.py --model <tiny> --extra-model ... --port <free> --trust-forwarded-for`,
    offline with an empty Hub cache; killed when the session ends. Extras: `long`, `fresh` (a copy of tiny that
    only the load-once test uses), every BROKEN checkpoint and the big broken ones."""
    home = tmp_path_factory.mktemp("app")
    fresh = shutil.copytree(tiny_checkpoint, home / "fresh")
    extras = [long_checkpoint, fresh, *broken_checkpoints.values(), *big_broken_checkpoints.values()]
    port, log = free_port(), home / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf"),
           "GPT2_WEIGHTS_DIR": str(home / "weights"), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(home / "gradio-tmp")}
    env.pop("GPT2_EXTRA_MODELS", None)
    command = [sys.executable, "app.py", "--model", str(tiny_checkpoint), "--port", str(port),
               "--trust-forwarded-for"]  # tests tell clients apart by X-Forwarded-For
    command += [arg for path in extras for arg in ("--extra-model", str(path))]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        yield AppServer(url, proc.pid, log, home / "gradio-tmp")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def app_url(app_server) -> str:
    return app_server.url


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


# -- a stand-in for the Hugging Face Hub: its cache, with random weights under the presets' names --
HUB_STANDINS = {  # preset -> a narrow model with the preset's depth and heads (blocks use layer 5, head 1)
    "gpt2": gpt2.GPTConfig(n_embd=96, n_layer=12, n_head=12),
    "gpt2-medium": gpt2.GPTConfig(n_embd=128, n_layer=24, n_head=16),
}


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory) -> Path:
    """An HF_HOME whose cache holds the stand-ins as huggingface_hub lays a download out
    (`hub/models--openai-community--NAME/refs/main` naming `snapshots/<revision>/`), so
    `load_model("gpt2")` goes through huggingface_hub's own cache lookup."""
    home = tmp_path_factory.mktemp("hf-home")
    for seed, (name, config) in enumerate(HUB_STANDINS.items()):
        repo = home / "hub" / f"models--openai-community--{name}"
        revision = hashlib.sha1(name.encode()).hexdigest()
        save_hf_checkpoint(config, repo / "snapshots" / revision, seed=seed)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
    return home


def hub_env(hub_home: Path) -> dict[str, str]:
    """The environment of a process that must find the stand-ins and never the network."""
    return {"HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def offline_hub(hub_home, monkeypatch) -> Path:
    """The stand-in cache for this process too: huggingface_hub read the environment when it
    was imported, so its constants change with it."""
    from huggingface_hub import constants

    for name, value in hub_env(hub_home).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HOME", str(hub_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_home


# -- the package as a user installs it --------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would put the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPT2_MODEL", "GPT2_EXTRA_MODELS")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", **extra}


def copy_source(dest: Path) -> Path:
    """What a wheel is built from, copied (setuptools writes build/ and egg-info into it)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for package in ("gpt2", "playground"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def make_venv(path: Path) -> Path:
    """A fresh environment that sees this machine's packages (torch, gradio, ...: nothing to
    download), pip and setuptools included (a venv's own would be the older ones bundled with
    Python), but not the checkout. Returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
                   check=True, env=clean_env(), timeout=300)
    return path / "bin"


def pip(bin_dir: Path, *args: str) -> None:
    run = subprocess.run([str(bin_dir / "python"), "-m", "pip", *args], capture_output=True, text=True,
                         env=clean_env(), timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """The bin folder of a fresh environment with the wheel of this checkout installed."""
    root = tmp_path_factory.mktemp("install")
    source = copy_source(root / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(root / "dist"), str(source)], capture_output=True, text=True,
                           env=clean_env(), timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    bin_dir = make_venv(root / "venv")
    pip(bin_dir, "install", "--no-deps", "--no-index", str(next((root / "dist").glob("*.whl"))))
    return bin_dir


def pytest_configure(config) -> None:
    """One torch thread for the test run, on the main thread and on the compute thread of
    `gpt2.BatchedGenerator`: on a busy 2-core machine, OpenMP threads waiting for a core that
    another process holds make these small models many times slower."""
    torch.set_num_threads(1)
    gpt2.compute.set_threads(1)
