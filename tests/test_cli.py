import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt2

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, cwd, env_extra=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_generate_streams_greedy_text(tiny_dir, tiny_model, tmp_path):
    run = _run("generate", "Hello world", "--model", str(tiny_dir), "--max-new-tokens", "6", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    ids = torch.tensor([gpt2.encode("Hello world")])
    want = gpt2.decode(gpt2.generate(tiny_model, ids, 6)[0].tolist())
    assert run.stdout == want + "\n"


def test_clear_error_without_traceback(tmp_path):
    run = _run("generate", "hi", "--model", str(tmp_path / "nope.safetensors"), cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.startswith("error: ") and "no such file or folder" in run.stderr
    assert "Traceback" not in run.stderr
    run = _run("download", "gpt2", cwd=tmp_path, env_extra={"HF_HOME": str(tmp_path / "hf")})
    assert run.returncode == 1 and "cannot download" in run.stderr and "Traceback" not in run.stderr


def test_builtin_is_a_model_name(tmp_path):
    """`--model builtin`, as in the library and the app; the same text as the library's."""
    run = _run("generate", "Once upon a time", "--model", "builtin", "--max-new-tokens", "8", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    ids = torch.tensor([gpt2.encode("Once upon a time")])
    want = gpt2.generate(gpt2.load_model("builtin", compile=False), ids, 8)
    assert run.stdout == gpt2.decode(want[0].tolist()) + "\n"


def test_every_flag_has_help_and_shows_its_default():
    from gpt2.__main__ import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"download", "generate", "train"}
    for name, parser in commands.items():
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, name
        for action in parser._actions:
            assert action.help, f"{name} {action.dest} has no help"
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
    assert "optimizer steps (default: 20000)" in " ".join(commands["train"].format_help().split())


def _refused(capsys, *argv: str) -> str:
    """main(argv) must exit with code 2 and one line on stderr, naming the command."""
    from gpt2.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"python -m gpt2 {argv[0]}: error: "), err
    return err


NOWHERE = "/nonexistent/model.safetensors"  # a flag that slipped through would fail the load with code 1


@pytest.mark.parametrize("flags, says", [
    (["--max-new-tokens", "0"], "--max-new-tokens: must be a whole number >= 1, got 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens: must be a whole number >= 1, got -1"),
    (["--max-new-tokens", "ten"], "--max-new-tokens: invalid integer value: 'ten'"),
    (["--temperature", "-0.5"], "--temperature: must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature: must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature: must be a finite number >= 0"),
    (["--top-k", "-1"], "--top-k: must be a whole number in [0, 50257]"),
    (["--top-k", "50258"], "--top-k: must be a whole number in [0, 50257]"),
    (["--top-p", "0"], "--top-p: must be a finite number in (0, 1]"),
    (["--top-p", "1.5"], "--top-p: must be a finite number in (0, 1]"),
    (["--top-p", "nan"], "--top-p: must be a finite number in (0, 1]"),
    (["--seed", "-1"], "--seed: must be a whole number in [0, 9223372036854775807]"),
    (["--seed", str(2**64)], "--seed: must be a whole number in [0, 9223372036854775807]"),
    (["--tier", "int4"], "--tier: invalid choice: 'int4'"),
])
def test_generate_refuses_bad_flags_in_one_line(capsys, flags, says):
    assert says in _refused(capsys, "generate", "hi", "--model", NOWHERE, *flags)


@pytest.mark.parametrize("flags, says", [
    (["--steps", "0"], "--steps: must be a whole number >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size: must be a whole number >= 1, got 0"),
    (["--n-head", "0"], "--n-head: must be a whole number >= 1, got 0"),
    (["--n-head", "3"], "--n-embd 80 is not divisible by --n-head 3"),
    (["--n-embd", "-8"], "--n-embd: must be a whole number >= 1, got -8"),
    (["--threads", "-2"], "--threads: must be a whole number >= 1, got -2"),
    (["--threads", "0"], "--threads: must be a whole number >= 1, got 0"),
    (["--text", "missing.txt"], "--text: no readable file 'missing.txt'"),
    (["--seed", str(2**64)], "--seed: must be a whole number in [0, 4294967295]"),
    (["--seed", "-1"], "--seed: must be a whole number in [0, 4294967295]"),
    (["--lr", "0"], "--lr: must be a finite number > 0, got 0"),
    (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    (["--repeat-frac", "1.5"], "--repeat-frac: must be a finite number in [0, 1], got 1.5"),
    (["--val-fraction", "0"], "--val-fraction: must be a finite number in (0, 0.5], got 0"),
    (["--seq-len", "512"], "--seq-len 512 is longer than --context-length 256"),
    (["--min-seg", "50"], "--min-seg 50 must be at most --max-seg-start"),
])
def test_train_refuses_bad_flags_in_one_line_before_any_work(capsys, tmp_path, monkeypatch, flags, says):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "model.safetensors"
    assert says in _refused(capsys, "train", "--out", str(out), *flags)
    assert not out.exists() and not list(out.parent.glob("*"))  # no step, no checkpoint


def _unwritable_outs(tmp_path: Path) -> list[str]:
    """Places no one can write to, root included (os.access says yes to root everywhere)."""
    (tmp_path / "file").write_text("")
    outs = [str(tmp_path / "file" / "model.safetensors")]  # a file where the folder should be
    if Path("/proc/self").is_dir():
        outs.append("/proc/self/model.safetensors")  # an existing folder that takes no files
    return outs


def test_train_refuses_an_unwritable_out_before_training(capsys, tmp_path):
    for out in _unwritable_outs(tmp_path):
        assert f"--out {out}: cannot write to " in _refused(capsys, "train", "--out", out)
    assert "is a folder; give a file name" in _refused(capsys, "train", "--out", str(tmp_path))


def test_train_runs_with_checked_flags(tmp_path):
    """The checks pass a real (tiny) run, and its model loads."""
    out = tmp_path / "runs" / "tiny.safetensors"
    run = _run("train", "--out", str(out), "--steps", "2", "--warmup", "0", "--n-embd", "16",
               "--n-layer", "1", "--n-head", "2", "--context-length", "32", "--seq-len", "32",
               "--batch-size", "2", "--corpus-docs", "40", "--eval-every", "2", "--eval-batches", "1",
               "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"wrote {out}" in run.stdout
    assert gpt2.load_model(out, compile=False).config.n_embd == 16




@pytest.mark.parametrize("flags", [["--temperature", "1e-45"], ["--temperature", "0.8", "--top-p", "1e-45"]])
def test_extreme_but_valid_sampling_values_do_not_crash(tmp_path, flags):
    """Accepted values must generate, not end in a traceback inside sampling (issue 14 item 7)."""
    run = _run("generate", "Once upon a time", "--model", "builtin", "--max-new-tokens", "4",
               "--seed", "0", *flags, cwd=tmp_path)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stdout.startswith("Once upon a time") and len(run.stdout) > len("Once upon a time\n")
