"""Every code block of the README, and of the pages under docs/ that the README's details moved
to (docs/API.md, docs/LIBRARY.md, docs/CLI.md, ...: every page but those in NOT_RUN), runs as
written, against a stand-in for the Hugging Face Hub (`conftest.hub_home`: a local cache
holding random weights under the presets' names, with HF_HUB_OFFLINE=1): the Python blocks in
this process (the `gradio_client` one, in docs/API.md, against the app that the README's
`gpt2-playground` line starts), the shell commands in the environment the wheel was installed
into (`conftest.installed`), from a scratch folder, each `gpt2-playground` line started,
checked and stopped with Ctrl+C. Lines marked SKIP are not run; the flags of those that are
`python -m gpt2` commands are still parsed. The model names the pages give are exactly those
the app offers, and every relative link of the README and of docs/*.md (images included)
points at a file that exists, and at a heading of it where it names one."""
from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import gpt2
from conftest import ROOT, clean_env, free_port, hub_env, serving
from playground.app import parse_args
from playground.models import offered_sources, with_tiers

README = ROOT / "README.md"
DOCS = ROOT / "docs"
NOT_RUN = {  # pages under docs/ whose blocks are not run, and why
    "docs/APP.md": "its commands show options with placeholder paths (path/to/ckpt, a/, b/) and run test files",
}
SKIP = "not run by tests/test_readme.py"  # a block's first line, or a line's comment
DEFAULT_URL = "http://127.0.0.1:7860/"  # where the README's client connects; the test's app is elsewhere


def pages() -> list[Path]:
    """The README and every page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def run_pages() -> list[Path]:
    return [page for page in pages() if rel(page) not in NOT_RUN]


@dataclass(frozen=True)
class Block:
    page: str  # README.md, docs/API.md, ...
    language: str
    heading: str  # the section it is in
    code: str

    def commands(self) -> list[str]:
        """Shell commands, continuation lines joined, comment lines left out."""
        lines = self.code.replace("\\\n", " ").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]

    def skipped(self, command: str = "") -> bool:
        return SKIP in self.code.splitlines()[0] or SKIP in command


def page_blocks(page: Path) -> list[Block]:
    blocks, heading, code, language = [], "", None, ""
    for line in page.read_text().splitlines():
        if code is None and line.startswith("```"):
            code, language = [], line[3:].strip()
        elif code is not None and line.startswith("```"):
            blocks.append(Block(rel(page), language, heading, "\n".join(code) + "\n"))
            code = None
        elif code is not None:
            code.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


def readme_blocks() -> list[Block]:
    """The blocks this test runs: the README's and its docs pages', in order."""
    return [block for page in run_pages() for block in page_blocks(page)]


def of(language: str) -> list[Block]:
    return [b for b in readme_blocks() if b.language == language]


def test_the_readme_has_the_blocks_this_test_runs():
    headings = {(b.page, b.heading) for b in readme_blocks() if b.language in ("bash", "python")}
    assert {("README.md", "Install"), ("README.md", "Run the playground"), ("README.md", "The library"),
            ("README.md", "Tests"), ("docs/API.md", "Use it from Python (`gradio_client`)"),
            ("docs/LIBRARY.md", "The library (`gpt2`)"), ("docs/LIBRARY.md", "Why this token: the causal tools"),
            ("docs/CLI.md", "Command line (`python -m gpt2`)")} <= headings
    assert set(NOT_RUN) <= {rel(page) for page in pages()}  # each page left out exists
    assert all(b.language in ("bash", "python", "") for b in readme_blocks())  # nothing unrun
    skips = [c for b in of("bash") for c in b.commands() if b.skipped(c)]
    assert len(skips) <= 5, skips  # few, and each says why
    assert all(re.search(SKIP + r": \w", line) for b in of("bash")
               for line in b.code.splitlines() if SKIP in line)


# -- model names --------------------------------------------------------------------------
def _offered(extra: str = "/checkpoints/my-model.safetensors") -> dict[str, str]:
    return with_tiers(offered_sources("gpt2", [extra, "org/name"]))[0]  # a local checkpoint, a Hub repo


def test_the_model_names_are_exactly_what_the_app_offers():
    section = (DOCS / "MODELS.md").read_text().split("## Model names", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([^`]+)`", row)}
    offered = set(_offered())
    assert named - {"local:<name>"} == offered - {"local:my-model"}
    assert "local:<name>" in named and "local:my-model" in offered


def test_every_model_the_readme_names_is_one_the_app_or_library_takes():
    text, offered = "\n".join(page.read_text() for page in pages()), set(_offered())
    spans = re.findall(r"`((?:gpt2(?:-medium|-large|-xl)?|builtin)(?: · [^`]*)?)`", text)
    assert spans and [s for s in spans if s not in offered] == []  # e.g. `gpt2 · int8` is not
    clients = re.findall(r'model="([^"]+)"', "".join(b.code for b in of("python")))
    assert clients and set(clients) <= offered
    for block in of("bash"):
        for command in block.commands():
            words = shlex.split(command, comments=True)
            for flag, value in zip(words, words[1:]):
                if flag == "--model":
                    assert value in (*gpt2.PRESETS, gpt2.BUILTIN) or value.endswith(".safetensors"), command


# -- Python blocks ------------------------------------------------------------------------
def _run_python(block: Block, code: str | None = None) -> None:
    exec(compile(block.code if code is None else code, str(ROOT / block.page), "exec"),  # noqa: S102
         {"__name__": "readme"})  # the README's (or its docs page's) own code


def test_the_library_blocks_run(offline_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GPT2_WEIGHTS_DIR", raising=False)
    library = [b for b in of("python") if "gradio_client" not in b.code]
    assert library
    for block in library:
        _run_python(block)


def test_the_gradio_client_block_runs_against_the_app(serve):
    [block] = [b for b in of("python") if "gradio_client" in b.code]
    assert DEFAULT_URL in block.code
    url, _ = serve("gpt2-playground")
    _run_python(block, block.code.replace(DEFAULT_URL, url))


# -- shell commands -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The folder the commands run in, in order (a `download` before the `generate` using it)."""
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def env(installed, hub_home) -> dict[str, str]:
    """The installed package first on PATH, the stand-in Hub, no weights folder set."""
    return clean_env(PATH=f"{installed}:{clean_env()['PATH']}", **hub_env(hub_home))


@pytest.fixture(scope="module")
def serve(env, scratch) -> Iterator[Callable[[str], tuple[str, Path]]]:
    """Starts an app command once (on a free port) and keeps it until the module ends:
    command -> (url, log)."""
    started: dict[str, tuple[str, Path]] = {}
    with contextlib.ExitStack() as stack:
        def start(command: str) -> tuple[str, Path]:
            if command not in started:
                log = scratch / f"app-{len(started)}.log"
                port_env = {**env, "GRADIO_SERVER_PORT": str(free_port())}
                words = shlex.split(command, comments=True)
                url = stack.enter_context(serving(words, port_env, scratch, log))
                started[command] = url, log
            return started[command]

        yield start


def _is_server(command: str) -> bool:
    return command.startswith(("gpt2-playground", "python app.py")) and "--help" not in command


def _check_served(command: str, url: str, log: Path, monkeypatch) -> None:
    """The app serves the model the command asks for, at the tier its name promises (int8 for
    a bare preset), as its terminal says."""
    from gradio_client import Client

    monkeypatch.delenv("GPT2_MODEL", raising=False)
    name = parse_args(shlex.split(command, comments=True)[1:]).model
    tier = "int8" if name in gpt2.PRESETS else "fp32"
    assert f"serving {name} ({tier} weights)" in log.read_text()
    client = Client(url, verbose=False)
    assert client.predict(model=name, api_name="/load_model").startswith(f"**{name}** ready · {tier} · ")
    if name in gpt2.PRESETS:
        exact = f"{name} · fp32"
        assert client.predict(model=exact, api_name="/load_model").startswith(f"**{exact}** ready · fp32 · ")
    assert "Traceback" not in log.read_text()


def _run_command(command: str, env: dict[str, str], cwd: Path) -> None:
    run = subprocess.run(shlex.split(command, comments=True), capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=600)
    assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]


@pytest.mark.parametrize("block", of("bash"), ids=lambda b: f"{b.page}: {b.heading}")
def test_the_shell_commands_run(block, env, scratch, serve, monkeypatch):
    from gpt2.__main__ import build_parser

    for command in block.commands():
        if block.skipped(command):
            if command.startswith("python -m gpt2 "):
                build_parser().parse_args(shlex.split(command, comments=True)[3:])  # flags still exist
        elif _is_server(command):
            _check_served(command, *serve(command), monkeypatch)
        else:
            _run_command(command, env, scratch)


# -- links ----------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _unfenced(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """The text without its fenced code blocks and inline code (link texts keep their place)."""
    return re.sub(r"`[^`\n]*`", "", _unfenced(text))


def _anchors(page: Path) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.*)$", _unfenced(page.read_text()).replace("`", ""), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves():
    """Every relative link of the README and of docs/*.md, images included, names a file or
    folder of the repository (and a heading of the page, where it names one); none is let off."""
    broken = []
    for page in pages():
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{rel(page)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{rel(page)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
