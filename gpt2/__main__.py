"""Command line: `python -m gpt2 download NAME` (a preset or a Hub repo `org/name[@revision]`),
`generate PROMPT ...` and `train --out PATH ...`.

Every flag's help shows its default. A bad value is refused in one line on stderr with exit
code 2 before anything is loaded or trained; a model that cannot load exits with code 1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

import torch

from . import PRESETS, TIERS, StreamDecoder, WeightsError, convert, load_model, load_tokenizer, stream
from .hub import parse_repo
from .weights import download_repo, preset_name, read_hf_dir
from .config import GPTConfig
from .training.trainer import TrainConfig

MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes, as the app's limit
MAX_TRAIN_SEED = 2**32 - 1  # the trainer derives a seed per step as seed * 1_000_003 + step
VOCAB_SIZE = GPTConfig().vocab_size


def refuse(prog: str, message: str) -> NoReturn:
    """Exit with code 2 and one line on stderr (argparse would print the whole usage first)."""
    sys.stderr.write(f"{prog}: error: {message} (see {prog} --help)\n")
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse, with each error in one line."""

    def error(self, message: str) -> NoReturn:
        refuse(self.prog, message)


def _bounds(low: float, high: float, low_open: bool = False) -> str:
    if high == math.inf:
        return f"{'>' if low_open else '>='} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}]"


def integer(low: int, high: float = math.inf) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        value = int(text)  # a ValueError reads "invalid integer value: 'x'"
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number {_bounds(low, high)}, "
                                             f"got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high], or (low, high] with `low_open`."""
    def parse(text: str) -> float:
        value = float(text)
        if not (math.isfinite(value) and low <= value <= high and not (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be a finite number {_bounds(low, high, low_open)}, "
                                             f"got {text}")
        return value

    parse.__name__ = "number"
    return parse


def existing_file(text: str) -> str:
    """An argparse type: a file this process can read."""
    if not Path(text).is_file() or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"no readable file {text!r}")
    return text


# TrainConfig's fields as flags: help text and type. A new field needs an entry here.
TRAIN_FLAGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "steps": ("optimizer steps", integer(1)),
    "batch_size": ("rows per step (story windows plus repeated-segment rows)", integer(1)),
    "seq_len": ("tokens per story window (at most --context-length)", integer(1)),
    "lr": ("peak learning rate (AdamW)", number(0, low_open=True)),
    "min_lr": ("learning rate at the last step (cosine decay)", number(0)),
    "warmup": ("steps of linear warm-up", integer(0)),
    "weight_decay": ("AdamW weight decay of the matrices", number(0)),
    "grad_clip": ("gradient norm clip", number(0, low_open=True)),
    "embed_std": ("std of the token-embedding init (GPT-2's is 0.02)", number(0)),
    "pos_std": ("RMS of the sinusoidal position-embedding init (0: GPT-2's random init)", number(0)),
    "repeat_frac": ("share of each batch's tokens in repeated random segments", number(0, 1)),
    "min_seg": ("shortest repeated segment", integer(1)),
    "max_seg_start": ("longest repeated segment at the start (curriculum)", integer(1)),
    "max_seg_end": ("longest repeated segment at the end of the curriculum", integer(1)),
    "curriculum": ("share of the steps over which the longest segment grows", number(0, 1)),
    "corpus_docs": ("documents in the built-in corpus (ignored with --text)", integer(1)),
    "val_fraction": ("held-out share of the text", number(0, 0.5, low_open=True)),
    "eval_every": ("steps between validations", integer(1)),
    "eval_batches": ("batches per validation", integer(1)),
    "ckpt_every": ("steps between checkpoints", integer(1)),
    "seed": ("seed of the corpus, the init and the batches", integer(0, MAX_TRAIN_SEED)),
}


def downloadable(text: str) -> str:
    """An argparse type: a preset, or a Hub repo id (org/name or org/name@revision)."""
    if preset_name(text) is None and parse_repo(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a preset ({', '.join(PRESETS)}) nor a Hub "
                                         "repo id (org/name or org/name@revision)")
    return text


def cmd_download(args: argparse.Namespace) -> None:
    name = preset_name(args.name)
    if name is not None and "@" not in args.name:
        print(f"saved {convert(name)}")
        return
    folder = download_repo(args.name)
    read_hf_dir(folder)  # every check a load makes, before saying it is ready
    tokenizer = load_tokenizer(folder)
    own = "its own tokenizer" if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")) \
        else "GPT-2's tokenizer"
    print(f"{args.name}: in the Hugging Face cache at {folder} ({own}, {tokenizer.n_vocab:,} ids); "
          f"load_model({args.name!r}) and --model {args.name} read it from there")


def cmd_generate(args: argparse.Namespace) -> None:
    model = load_model(args.model, compile=args.compile, **TIERS[args.tier])
    tokenizer = load_tokenizer(args.model)  # the checkpoint's own, else GPT-2's
    idx = torch.tensor([tokenizer.encode(args.prompt)])
    decoder = StreamDecoder(tokenizer)
    sys.stdout.write(args.prompt)
    for next_id in stream(model, idx, args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k or None, top_p=args.top_p, seed=args.seed):
        sys.stdout.write(decoder.add(int(next_id[0])))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")


def cmd_train(args: argparse.Namespace) -> None:
    from .training.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    model_config = GPTConfig(context_length=args.context_length, n_embd=args.n_embd,
                             n_layer=args.n_layer, n_head=args.n_head)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    started = time.perf_counter()
    history = train(args.out, model_config, cfg, text_path=args.text, resume=not args.no_resume)
    print(f"done in {time.perf_counter() - started:.0f} s wall; final train loss "
          f"{history['train_loss'][-1]:.3f}, val loss {history['val_loss'][-1]:.3f}; wrote {args.out}")


def train_problem(args: argparse.Namespace) -> str | None:
    """What makes a `train` command fail later, found before any work: sizes that do not fit
    together, or an --out that cannot be written."""
    if args.n_embd % args.n_head:
        return f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}"
    if args.seq_len > args.context_length:
        return f"--seq-len {args.seq_len} is longer than --context-length {args.context_length}"
    if args.min_seg > min(args.max_seg_start, args.max_seg_end) or 3 * args.min_seg > args.seq_len:
        return (f"--min-seg {args.min_seg} must be at most --max-seg-start, --max-seg-end and a "
                f"third of --seq-len")
    out = Path(args.out)
    if out.is_dir():
        return f"--out {args.out} is a folder; give a file name, e.g. {out / 'model.safetensors'}"
    try:  # the trainer's first step; a probe file, because os.access says yes to root everywhere
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as e:
        return f"--out {args.out}: cannot write to {out.parent} ({e.strerror or e})"
    if out.exists() and not os.access(out, os.W_OK):
        return f"--out {args.out}: the file is read-only"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m gpt2", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("download", help="fetch a preset (saved under weights/) or a Hub repo",
                       description="Download a preset into the Hugging Face cache and convert it once "
                       "into weights/NAME.safetensors ($GPT2_WEIGHTS_DIR), which load_model then reads "
                       "without the network; or download a GPT-2-architecture Hub repo (org/name, "
                       "org/name@revision: config.json, model.safetensors and its tokenizer files) into "
                       "the Hugging Face cache, checked as a load checks it. A repo with only a pickle "
                       "(pytorch_model.bin) is refused with how to convert it.", formatter_class=defaults)
    p.add_argument("name", type=downloadable, metavar="NAME",
                   help=f"a preset ({', '.join(sorted(PRESETS))}) or a Hub repo id: org/name or org/name@revision")
    p.set_defaults(run=cmd_download)

    p = sub.add_parser("generate", help="stream a continuation of PROMPT to stdout",
                       description="Stream a continuation of PROMPT to stdout.", formatter_class=defaults)
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--model", default="gpt2",
                   help=f"preset ({', '.join(PRESETS)}), builtin, a Hub-layout folder, a .safetensors file, "
                        "or a Hub repo id (org/name or org/name@revision)")
    p.add_argument("--tier", choices=tuple(TIERS), default="fp32",
                   help="weight precision: bf16 and int8 decode faster, with small logit changes")
    p.add_argument("--compile", action="store_true",
                   help="compile the fast decode kernels in the background (pays off for long "
                        "outputs; the first time takes ~10 s more, and the process waits for it)")
    p.add_argument("--max-new-tokens", type=integer(1), default=50,
                   help="tokens to generate (prompt + new tokens must fit the model's context)")
    p.add_argument("--temperature", type=number(0), default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=integer(0, VOCAB_SIZE), default=0,
                   help="sample from the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=number(0, 1, low_open=True), default=1.0,
                   help="sample from the smallest set of tokens whose probability reaches p; 1 = off")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=None,
                   help="seed for sampling (none: random)")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("train", help="pre-train a GPT-2 from scratch", formatter_class=defaults,
                       description="Pre-train a GPT-2 on a text file or the built-in corpus. Writes OUT "
                       "(load with gpt2.load_model) and, beside it, a resumable checkpoint "
                       "(.train.safetensors + .train.json) and a loss curve (.loss.html).")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS,
                   help="model file to write, e.g. runs/tiny.safetensors (required)")
    p.add_argument("--text", type=existing_file, default=None,
                   help="UTF-8 text file to train on (none: the built-in corpus)")
    p.add_argument("--n-embd", type=integer(1), default=80, help="width of the model")
    p.add_argument("--n-layer", type=integer(1), default=3, help="transformer blocks")
    p.add_argument("--n-head", type=integer(1), default=4, help="attention heads (must divide --n-embd)")
    p.add_argument("--context-length", type=integer(1), default=256, help="positions the model can see")
    p.add_argument("--threads", type=integer(1), default=None,
                   help="torch CPU threads (none: torch's choice)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    for f in fields(TrainConfig):
        text, kind = TRAIN_FLAGS[f.name]
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=text)
    p.set_defaults(run=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and (problem := train_problem(args)):
        refuse(f"{parser.prog} train", problem)
    try:
        args.run(args)
    except (WeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
