"""Command line: `python -m gpt2 download NAME`, `generate PROMPT ...` and `train --out PATH ...`."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

import torch

from . import PRESETS, TIERS, StreamDecoder, WeightsError, convert, encode, load_model, stream
from .config import GPTConfig
from .training.trainer import TrainConfig


def cmd_download(args: argparse.Namespace) -> None:
    print(f"saved {convert(args.name)}")


def cmd_generate(args: argparse.Namespace) -> None:
    model = load_model(args.model, compile=args.compile, **TIERS[args.tier])
    idx = torch.tensor([encode(args.prompt)])
    decoder = StreamDecoder()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpt2", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch a preset from the Hub and save it under weights/")
    p.add_argument("name", choices=sorted(PRESETS))
    p.set_defaults(run=cmd_download)

    p = sub.add_parser("generate", help="stream a continuation of PROMPT to stdout")
    p.add_argument("prompt")
    p.add_argument("--model", default="gpt2", help="preset name, Hub-layout folder or .safetensors file")
    p.add_argument("--tier", choices=tuple(TIERS), default="fp32",
                   help="weight precision: bf16 and int8 decode faster, with small logit changes")
    p.add_argument("--compile", action="store_true",
                   help="compile the fast decode kernels in the background (pays off for long "
                        "outputs; the first time takes ~10 s more, and the process waits for it)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("train", help="pre-train a GPT-2 from scratch",
                       description="Pre-train a GPT-2 on a text file or the built-in corpus. Writes OUT "
                       "(load with gpt2.load_model) and, beside it, a resumable checkpoint "
                       "(.train.safetensors + .train.json) and a loss curve (.loss.html).")
    p.add_argument("--out", required=True, help="model file to write, e.g. runs/tiny.safetensors")
    p.add_argument("--text", default=None, help="UTF-8 training text (default: the built-in corpus)")
    p.add_argument("--n-embd", type=int, default=80)
    p.add_argument("--n-layer", type=int, default=3)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    p.set_defaults(run=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (WeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
