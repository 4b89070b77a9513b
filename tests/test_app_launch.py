"""Command line and environment: local by default, Spaces' address on Spaces."""
from __future__ import annotations

import argparse
import os

import pytest

import app


def test_local_defaults(monkeypatch):
    for name in ("SPACE_ID", "GPT2_MODEL", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.model, args.host, args.port) == ("gpt2", "127.0.0.1", 7860)


def test_spaces_and_environment(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/gpt2-playground")
    monkeypatch.setenv("GPT2_MODEL", "gpt2-medium")
    args = app.parse_args([])
    assert (args.model, args.host, args.port) == ("gpt2-medium", "0.0.0.0", 7860)
    assert app.parse_args(["--model", "ckpt/", "--port", "8000", "--host", "::1"]).port == 8000


def test_extra_models_from_flags_and_environment(monkeypatch):
    monkeypatch.setenv("GPT2_EXTRA_MODELS", os.pathsep.join(["/a", "/b"]))
    assert app.parse_args(["--extra-model", "/c"]).extra_models == ["/a", "/b", "/c"]
    monkeypatch.delenv("GPT2_EXTRA_MODELS")
    assert app.parse_args([]).extra_models == []


def test_every_option_has_help_and_shows_its_default(monkeypatch):
    from playground.app import build_parser

    monkeypatch.setenv("GPT2_EXTRA_MODELS", "")
    parser = build_parser()
    assert parser.prog == "gpt2-playground"
    assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        assert action.help, action.dest
        if action.dest != "help":
            assert f"(default: {action.default})" in text, action.dest


def test_threads_from_flag_and_environment(monkeypatch, capsys):
    monkeypatch.setenv("GPT2_THREADS", "3")
    assert app.parse_args([]).threads == 3 and app.parse_args(["--threads", "1"]).threads == 1
    monkeypatch.setenv("GPT2_THREADS", "many")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app.main(["--threads", "0"])
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_builtin_is_a_model_name():
    """`--model builtin` opens on the built-in model, offered under that name, as the library
    and the CLI call it."""
    from playground.models import offered_sources, start_model, with_tiers

    names, tiers = with_tiers(offered_sources(app.parse_args(["--model", "builtin"]).model))
    assert start_model("builtin", list(names)) == ("builtin", None)
    assert names["builtin"] == "builtin" and tiers["builtin"] == "fp32"


def test_no_option_states_its_default_twice(monkeypatch):
    """`--help` said '(default: the cores this process may use) (default: 2)' for --threads:
    each option names its default once, the formatter's '(default: N)'."""
    monkeypatch.delenv("SPACE_ID", raising=False)
    from playground import app

    text = " ".join(app.build_parser().format_help().split())
    assert text.count("default:") == text.count("(default: ") == len(
        [a for a in app.build_parser()._actions if a.dest != "help"]), text
    assert "cores this process may use" in text
