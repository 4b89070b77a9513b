"""`pip install` as a user runs it: the wheel, and an editable install, give the library with
its data files, the app and the `gpt2-playground` command, from any folder, with the checkout
nowhere on the path."""
from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import torch

import gpt2
from conftest import ROOT, clean_env, copy_source, make_venv, pip

PROMPT = "Once upon a time"
CHECK = f"""
import torch, gpt2
print(gpt2.__file__)
model = gpt2.load_model("builtin")
print(gpt2.decode(gpt2.generate(model, torch.tensor([gpt2.encode({PROMPT!r})]), 8)[0].tolist()))
"""


def _builtin_text() -> str:
    ids = torch.tensor([gpt2.encode(PROMPT)])
    return gpt2.decode(gpt2.generate(gpt2.load_model("builtin", compile=False), ids, 8)[0].tolist())


def _works_from_anywhere(bin_dir: Path, package_root: Path, cwd: Path) -> None:
    """Import from an unrelated folder, load the built-in model (its data files), generate,
    exit without a word on stderr; the CLI and the app's command run."""
    run = subprocess.run([str(bin_dir / "python"), "-c", CHECK], capture_output=True, text=True,
                         cwd=cwd, env=clean_env(), timeout=600)
    assert (run.returncode, run.stderr) == (0, ""), run.stderr[-3000:]
    location, text = run.stdout.splitlines()
    assert Path(location).is_relative_to(package_root) and not Path(location).is_relative_to(ROOT)
    assert text == _builtin_text()

    cli = subprocess.run([str(bin_dir / "python"), "-m", "gpt2", "generate", PROMPT, "--model", "builtin",
                          "--max-new-tokens", "8"], capture_output=True, text=True, cwd=cwd,
                         env=clean_env(), timeout=600)
    assert (cli.returncode, cli.stdout) == (0, _builtin_text() + "\n"), cli.stderr[-3000:]

    app = subprocess.run([str(bin_dir / "gpt2-playground"), "--help"], capture_output=True, text=True,
                         cwd=cwd, env=clean_env(), timeout=600)
    assert app.returncode == 0, app.stderr[-3000:]
    assert app.stdout.startswith("usage: gpt2-playground") and "--extra-model PATH" in app.stdout


def test_the_wheel_installs_library_data_app_and_command(installed, tmp_path):
    _works_from_anywhere(installed, installed.parent, tmp_path)
    [site] = installed.parent.glob("lib/python*/site-packages")
    shipped = [p.relative_to(ROOT) for package in ("gpt2", "playground") for p in (ROOT / package).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    assert Path("gpt2/data/builtin-model.safetensors") in shipped
    assert [p for p in shipped if not (site / p).is_file()] == []  # every module and data file


def test_an_editable_install_runs_the_source(tmp_path):
    source = copy_source(tmp_path / "src")
    bin_dir = make_venv(tmp_path / "venv")
    pip(bin_dir, "install", "--no-deps", "--no-build-isolation", "--editable", str(source))
    (tmp_path / "elsewhere").mkdir()
    _works_from_anywhere(bin_dir, source, tmp_path / "elsewhere")


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith(("#", "-r "))]


def test_declared_dependencies_are_the_requirements_files():
    """pyproject's runtime dependencies are requirements.txt, its `dev` extra the rest of
    requirements-dev.txt, pin for pin (torch stays pinned)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == _requirements("requirements.txt")
    assert project["optional-dependencies"]["dev"] == _requirements("requirements-dev.txt")
    assert "torch==2.13.0" in project["dependencies"]
    assert project["scripts"] == {"gpt2-playground": "playground.app:main"}
