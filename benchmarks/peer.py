"""llama.cpp as a measured peer: our GPT-2 tiers vs llama.cpp (llama-cpp-python) on the same
random weights, greedy, both with the same number of threads.

For each model size, transformers builds a random GPT-2 (seed 0, as generation.py does) and
saves it with the tokenizer files; llama.cpp's `convert_hf_to_gguf.py` (from the
llama-cpp-python source distribution) turns that checkout into GGUF f32, bf16, f16 and q8_0.
Then every system runs in its own process (no torch in llama.cpp's; no two OpenMP runtimes or
allocators sharing one), held open while this one asks each in turn, in interleaved rounds:
ours per tier (`gpt2.load_model(path, **gpt2.TIERS[tier])`, kernels compiled before timing)
and llama.cpp per format (`Llama(..., flash_attn=True)`, greedy through `eval` and an argmax
over the logits, so EOS never stops it); each call is timed inside its system's process. It
reports per prompt length the decode tok/s (63 / (t64 - t1), as generation.py),
the time to first token (t1), and per system how many of the first 16 greedy tokens agree
with transformers fp32; then, in a fresh process per system, the peak RSS (VmHWM) after
loading and after generating at the longest prompt, with that process's own decode speed.
Pairs compared: fp32 vs f32, bf16 vs the better of bf16/f16, int8 vs q8_0.

llama-cpp-python is optional (a ~15 min source build, see benchmarks/README.md):

    python benchmarks/peer.py --llama-cpp-src /tmp/llcp/src/llama_cpp_python-0.3.36   # -> PEER.md
    LLAMA_CPP_SRC=/tmp/llcp/src/llama_cpp_python-0.3.36 python benchmarks/peer.py --configs gpt2,gpt2-medium
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# torch, transformers and llama_cpp are imported where they are used: the process that
# measures llama.cpp's memory alone must not load torch.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

HERE = Path(__file__).resolve().parent
# Our tier -> the GGUF types llama.cpp runs it against (the better one counts).
PAIRS = {"fp32": ("f32",), "bf16": ("bf16", "f16"), "int8": ("q8_0",)}
AGREE_TOKENS = 16
BUILD_HINT = ("llama-cpp-python is not installed: this benchmark is optional. Build it "
              "(~15 min on 2 cores) as benchmarks/README.md shows, under 'peer.py'.")


# -- preparing the weights ----------------------------------------------------------------
def require_llama_cpp() -> None:
    """Exit with how to get llama-cpp-python unless it imports."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise SystemExit(BUILD_HINT) from None


def find_converter(source: str | None) -> Path:
    """`convert_hf_to_gguf.py` in an unpacked llama-cpp-python sdist (or its vendor/llama.cpp)."""
    if not source:
        raise SystemExit("give the unpacked llama-cpp-python source distribution with "
                         "--llama-cpp-src or LLAMA_CPP_SRC (see benchmarks/README.md)")
    for folder in (Path(source), Path(source) / "vendor" / "llama.cpp"):
        if (folder / "convert_hf_to_gguf.py").is_file():
            return folder / "convert_hf_to_gguf.py"
    raise SystemExit(f"{source}: no convert_hf_to_gguf.py there or under vendor/llama.cpp")


def ensure_n_ctx(directory: Path) -> None:
    """llama.cpp's GPT-2 converter reads `n_ctx`; transformers 5 may save only `n_positions`."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("n_ctx", config["n_positions"])
    path.write_text(json.dumps(config, indent=2))


def byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (vocab.json's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair BPE merges last into `token`: its bytes merged by every lower rank."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        _, i = min((ranks.get(a + b, ranks[token]), i) for i, (a, b) in enumerate(itertools.pairwise(parts)))
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def write_tokenizer(directory: Path) -> None:
    """GPT-2's vocab.json and merges.txt, rebuilt offline from the ranks file in gpt2/data/
    (the converter loads the tokenizer with transformers and checks it is GPT-2's)."""
    from gpt2.tokenizer import EOT, EOT_ID, token_bytes

    chars = byte_chars()
    ranks = {token_bytes(i): i for i in range(EOT_ID)}

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    vocab = {text(t): i for t, i in ranks.items()} | {EOT: EOT_ID}
    merges = [" ".join(map(text, merge_of(t, ranks))) for t in ranks if len(t) > 1]  # rank order
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def write_checkpoint(config, directory: Path, seed: int = 0) -> Path:
    """transformers' random GPT-2 (seeded, as generation.py) with GPT-2's tokenizer files."""
    import torch
    import transformers

    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.to_hf().items() if k not in ("model_type", "architectures")}
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs)).save_pretrained(directory)
    ensure_n_ctx(directory)
    write_tokenizer(directory)
    return directory


def convert(converter: Path, checkpoint: Path, outtype: str, out: Path) -> Path:
    """One GGUF file of `checkpoint` at `outtype` (f32, bf16, f16, q8_0)."""
    done = subprocess.run([sys.executable, str(converter), str(checkpoint), "--outtype", outtype,
                           "--outfile", str(out)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"convert_hf_to_gguf.py --outtype {outtype} failed:\n{done.stderr[-3000:]}")
    return out


# -- the engines --------------------------------------------------------------------------
@dataclass
class System:
    """`run(ids, n)`: (seconds, the `n` greedy tokens after the prompt `ids`)."""
    name: str  # "ours-int8", "llama-q8_0"
    run: Callable[[list[int], int], tuple[float, list[int]]]


def timing(generate: Callable[[list[int], int], list[int]]) -> Callable[[list[int], int], tuple[float, list[int]]]:
    def run(ids: list[int], n: int) -> tuple[float, list[int]]:
        start = time.perf_counter()
        tokens = generate(ids, n)
        return time.perf_counter() - start, tokens
    return run


def ours(path: Path, tier: str, threads: int) -> System:
    """Whatever `gpt2.load_model` gives for `tier` now, kernels ready before it is timed."""
    import torch

    import gpt2

    torch.set_num_threads(threads)
    model = gpt2.load_model(path, **gpt2.TIERS[tier])
    status = getattr(model, "compile_status", None)
    if status is not None and not status.wait():
        raise SystemExit(f"ours-{tier}: compiling the kernels failed: {status.error}")

    def run(ids: list[int], n: int) -> list[int]:
        return gpt2.generate(model, torch.tensor([ids]), n)[0, len(ids):].tolist()
    return System(f"ours-{tier}", timing(run))


def llama(path: Path, outtype: str, threads: int) -> System:
    """llama.cpp on one GGUF file: prefill with `eval`, then argmax and `eval` one token at a time."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=0, n_threads=threads, n_threads_batch=threads,
                          flash_attn=True, verbose=False)  # n_ctx=0: the model's own context
    vocab = llm.n_vocab()

    def run(ids: list[int], n: int) -> list[int]:
        llm.reset()
        llm.eval(ids)
        out = []
        while True:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            out.append(int(logits.argmax()))
            if len(out) == n:
                return out
            llm.eval(out[-1:])
    return System(f"llama-{outtype}", timing(run))


def hf_greedy(checkpoint: Path, ids: list[int], n: int) -> list[int]:
    """transformers fp32's `n` greedy tokens: the reference for the agreement column."""
    import torch
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def prompts_for(lengths: list[int], vocab_size: int) -> dict[int, list[int]]:
    """Random prompt ids, the same in every process (and as generation.py draws them)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return {T: torch.randint(vocab_size, (T,), generator=gen).tolist() for T in lengths}


# -- measuring ----------------------------------------------------------------------------
@dataclass
class Samples:
    t1: list[float] = field(default_factory=list)
    t64: list[float] = field(default_factory=list)

    def decode(self, new_tokens: int) -> list[float]:
        return [(new_tokens - 1) / (b - a) for a, b in zip(self.t1, self.t64)]


def agreeing(tokens: list[int], reference: list[int]) -> int:
    """How many leading tokens match the reference (after a difference the texts part)."""
    return next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(reference))


def measure_rounds(systems: list[System], prompts: dict[int, list[int]], rounds: int,
                   new_tokens: int, label: str) -> dict[tuple[int, str], Samples]:
    """A warm-up call per system and prompt, then per round and prompt every system in an
    order rotated by one each time: a 1-token call (t1) and a `new_tokens` call (t64)."""
    for s in systems:
        for ids in prompts.values():
            s.run(ids, 2)
    results = {(T, s.name): Samples() for T in prompts for s in systems}
    for r in range(rounds):
        start = time.perf_counter()
        for i, (T, ids) in enumerate(prompts.items()):
            k = (r + i) % len(systems)
            for s in systems[k:] + systems[:k]:
                results[(T, s.name)].t1.append(s.run(ids, 1)[0])
                results[(T, s.name)].t64.append(s.run(ids, new_tokens)[0])
        print(f"{label}: round {r + 1}/{rounds} done in {time.perf_counter() - start:.1f} s", flush=True)
    return results


def vm_hwm_mb() -> float:
    """This process's peak resident memory so far (VmHWM), MB."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib * 1024 / 1e6


def load_system(spec: str, model: Path, threads: int) -> System:
    """"ours:TIER" or "llama:TYPE" on `model`, in this process."""
    kind, tier = spec.split(":")
    return ours(model, tier, threads) if kind == "ours" else llama(model, tier, threads)


def serve(args: argparse.Namespace) -> None:
    """`--serve`: load one system alone, generate at the longest prompt, print a JSON line."""
    system = load_system(args.serve, args.model, args.threads)
    loaded = vm_hwm_mb()
    ids = max(json.loads(args.prompt_ids), key=len)
    system.run(ids, 2)  # warm-up, as in the timed rounds
    t1, t64 = system.run(ids, 1)[0], system.run(ids, args.new_tokens)[0]
    print(json.dumps({"loaded_mb": loaded, "peak_mb": vm_hwm_mb(),
                      "decode": (args.new_tokens - 1) / (t64 - t1)}))


def work(args: argparse.Namespace) -> None:
    """`--work`: one system in this process, for the timed rounds: each line on stdin a
    request {"ids": [...], "n": k}, answered on stdout with {"seconds": t, "tokens": [...]}."""
    system = load_system(args.work, args.model, args.threads)
    print(json.dumps({"name": system.name}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        seconds, tokens = system.run(request["ids"], request["n"])
        print(json.dumps({"seconds": seconds, "tokens": tokens}), flush=True)


def worker(spec: str, model: Path, args: argparse.Namespace) -> tuple[System, subprocess.Popen]:
    """A System whose calls run in a `--work` process of its own (closing its stdin ends it)."""
    command = [sys.executable, __file__, "--work", spec, "--model", str(model), "--threads", str(args.threads)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def reply() -> dict:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {spec} process ended (exit {proc.wait()})")
        return json.loads(line)

    name = reply()["name"]

    def run(ids: list[int], n: int) -> tuple[float, list[int]]:
        proc.stdin.write(json.dumps({"ids": ids, "n": n}) + "\n")
        proc.stdin.flush()
        answer = reply()
        return answer["seconds"], answer["tokens"]
    return System(name, run), proc


def serve_alone(spec: str, model: Path, prompts: dict[int, list[int]], args: argparse.Namespace) -> dict:
    """Run `serve` for one system in a fresh process."""
    command = [sys.executable, __file__, "--serve", spec, "--model", str(model), "--threads",
               str(args.threads), "--new-tokens", str(args.new_tokens),
               "--prompt-ids", json.dumps(list(prompts.values()))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"serving {spec} alone failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def run_config(name: str, converter: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """Everything for one model size; returns what the report needs."""
    from generation import CONFIGS  # gpt2.PRESETS, and `tiny` to smoke-test this script

    config = CONFIGS[name]
    checkpoint = write_checkpoint(config, workdir / name)
    ggufs = {t: convert(converter, checkpoint, t, workdir / f"{name}-{t}.gguf")
             for t in dict.fromkeys(t for tier in args.tiers for t in PAIRS[tier])}
    print(f"{name}: GGUF " + ", ".join(f"{t} {p.stat().st_size / 1e6:.0f} MB" for t, p in ggufs.items()),
          flush=True)
    prompts = prompts_for(args.prompts, config.vocab_size)
    first = prompts[args.prompts[0]]
    reference = hf_greedy(checkpoint, first, AGREE_TOKENS)
    started = [worker(f"ours:{tier}", checkpoint, args) for tier in args.tiers]
    started += [worker(f"llama:{t}", path, args) for t, path in ggufs.items()]
    systems = [system for system, _ in started]
    try:
        agree = {s.name: agreeing(s.run(first, AGREE_TOKENS)[1], reference) for s in systems}
        print(f"{name}: first {AGREE_TOKENS} greedy tokens agreeing with transformers fp32: "
              + ", ".join(f"{k} {v}" for k, v in agree.items()), flush=True)
        results = measure_rounds(systems, prompts, args.rounds, args.new_tokens, name)
    finally:
        for _, proc in started:
            proc.stdin.close()
            proc.wait(timeout=120)
    names = [s.name for s in systems]
    alone = {f"ours-{tier}": serve_alone(f"ours:{tier}", checkpoint, prompts, args) for tier in args.tiers}
    alone |= {f"llama-{t}": serve_alone(f"llama:{t}", path, prompts, args) for t, path in ggufs.items()}
    return {"name": name, "systems": names, "results": results, "agree": agree, "alone": alone}


# -- reporting ----------------------------------------------------------------------------
def spread(values: list[float], fmt: str) -> str:
    """common.spread's cell; a copy, as common imports torch, which a llama.cpp worker must not."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"


def environment(converter: Path) -> list[str]:
    """CPU model and flags, versions of torch, transformers and llama-cpp-python, and the CPU
    features llama.cpp was built for."""
    import llama_cpp
    import torch
    from generation import environment as machine_lines  # CPU, flags, torch, transformers

    pyproject = (converter.parent / "gguf-py" / "pyproject.toml").read_text()
    gguf_py = re.search(r'^version = "(.+)"', pyproject, re.MULTILINE)
    return [*machine_lines(torch.device("cpu")),
            (f"- llama-cpp-python {llama_cpp.__version__} ({Path(llama_cpp.__file__).parent}); "
             f"converter {converter} (its gguf-py {gguf_py[1] if gguf_py else '?'})"),
            f"- llama.cpp system info: `{llama_cpp.llama_print_system_info().decode().strip()}`"]


def speeds(run: dict, T: int, name: str, metric: str, new_tokens: int) -> list[float]:
    """One system's per-round speed at prompt `T`: decode tok/s, or 1 / TTFT."""
    samples = run["results"][(T, name)]
    return samples.decode(new_tokens) if metric == "decode" else [1 / t for t in samples.t1]


def ratio_cell(run: dict, tier: str, T: int, metric: str, new_tokens: int) -> str:
    """Ours ÷ llama.cpp's best format for `tier` (> 1: ours is faster, for TTFT too): the ratio
    of the medians over rounds, then the median [min–max] of each round's own ratio."""
    peers = {f"llama-{t}": statistics.median(speeds(run, T, f"llama-{t}", metric, new_tokens)) for t in PAIRS[tier]}
    peer = max(peers, key=peers.get)
    ours = speeds(run, T, f"ours-{tier}", metric, new_tokens)
    paired = [o / p for o, p in zip(ours, speeds(run, T, peer, metric, new_tokens))]
    return f"{statistics.median(ours) / peers[peer]:.2f} · {spread(paired, '.2f')} (vs {peer})"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def config_lines(run: dict, args: argparse.Namespace) -> list[str]:
    """One model size: every system, then ours against llama.cpp per tier."""
    n, longest = args.new_tokens, max(args.prompts)
    head = ["system", *(f"decode tok/s @{T}" for T in args.prompts), *(f"TTFT s @{T}" for T in args.prompts),
            f"agree /{AGREE_TOKENS}", "alone: RSS MB loaded / peak", f"alone: decode @{longest}"]
    rows = []
    for name in run["systems"]:
        samples, alone = [run["results"][(T, name)] for T in args.prompts], run["alone"][name]
        rows.append([name, *(spread(s.decode(n), ".1f") for s in samples),
                     *(spread(s.t1, ".3f") for s in samples), str(run["agree"][name]),
                     f"{alone['loaded_mb']:.0f} / {alone['peak_mb']:.0f}", f"{alone['decode']:.1f}"])
    ratios = []
    for tier in args.tiers:
        peak = min(run["alone"][f"llama-{t}"]["peak_mb"] for t in PAIRS[tier])
        ratios.append([tier, *(ratio_cell(run, tier, T, "decode", n) for T in args.prompts),
                       ratio_cell(run, tier, longest, "ttft", n),
                       f"{run['alone'][f'ours-{tier}']['peak_mb'] / peak:.2f}"])
    return [f"### {run['name']}", "", *table(head, rows), "",
            ("Ours ÷ llama.cpp, against its better format where it has two (speed > 1: ours is faster; "
             "peak RSS alone < 1: ours uses less). Speed cells: the ratio of the medians · the median "
             "[min–max] of each round's own ratio, the two systems' calls of a round seconds apart, so "
             "that the machine's drift (its memory bandwidth moves by up to 1.5x within minutes) "
             "cancels:"), "",
            *table(["tier", *(f"decode @{T}" for T in args.prompts), f"TTFT @{longest}", "peak RSS alone"],
                   ratios)]


def write_report(runs: list[dict], converter: Path, args: argparse.Namespace,
                 load: tuple[tuple[float, ...], tuple[float, ...]], started: datetime.datetime,
                 elapsed: float) -> None:
    def load_text(values: tuple[float, ...]) -> str:
        return " / ".join(f"{x:.2f}" for x in values)

    out = ["# Our GPT-2 vs llama.cpp", "", *([f"**{args.note}**", ""] if args.note else []),
           f"Command: `{shlex.join(['python', *sys.argv])}`  ",
           (f"Date: {started:%Y-%m-%d %H:%M} UTC, took {elapsed:.0f} s; {args.rounds} rounds, "
            f"{args.new_tokens} new tokens, batch 1, greedy, {args.threads} threads for both engines, "
            "same random weights (transformers, seed 0)."), "",
           *environment(converter),
           f"- Load average (1 / 5 / 15 min): {load_text(load[0])} at start, {load_text(load[1])} at end",
           "",
           (f"Each system in its own process, asked in turn (interleaved rounds), each call timed inside "
            f"that process: decode tok/s = {args.new_tokens - 1} / "
            f"(t({args.new_tokens} new) − t(1 new)), TTFT = t(1 new), median [min–max] over rounds. "
            f"`agree`: how many of the first {AGREE_TOKENS} greedy tokens after the {args.prompts[0]}-token "
            "prompt match transformers fp32. `alone`: a fresh process serving only that system (ours: "
            "torch imported and the kernels compiled in it; llama.cpp: no torch), its VmHWM after "
            "loading and after generating at the longest prompt, and the decode speed of that one "
            "call (a cross-check of the rounds)."), ""]
    for run in runs:
        out += [*config_lines(run, args), ""]
    args.out.write_text("\n".join(out))
    print(f"wrote {args.out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-cpp-src", default=os.environ.get("LLAMA_CPP_SRC"),
                   help="unpacked llama-cpp-python sdist (or its vendor/llama.cpp), for "
                        "convert_hf_to_gguf.py; default $LLAMA_CPP_SRC")
    p.add_argument("--configs", default="gpt2",
                   help="comma-separated gpt2.PRESETS names (gpt2,gpt2-medium); tiny: a smoke test")
    p.add_argument("--tiers", default="fp32,bf16,int8", help="comma-separated: fp32, bf16, int8")
    p.add_argument("--prompts", default="16,512", help="comma-separated prompt lengths")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="for torch and for llama.cpp")
    p.add_argument("--note", default="", help="a line for the report's header (e.g. a noisy machine)")
    p.add_argument("--out", type=Path, default=HERE / "PEER.md")
    p.add_argument("--serve", help=argparse.SUPPRESS)  # internal: ours:TIER or llama:TYPE alone
    p.add_argument("--work", help=argparse.SUPPRESS)  # internal: the same, for the timed rounds
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.configs, args.tiers = args.configs.split(","), args.tiers.split(",")
    args.prompts = [int(t) for t in args.prompts.split(",")]
    if unknown := set(args.tiers) - set(PAIRS):
        p.error(f"unknown tiers {sorted(unknown)}; choose from {', '.join(PAIRS)}")
    return args


def main() -> None:
    args = parse_args()
    if args.serve:
        return serve(args)
    if args.work:
        return work(args)
    require_llama_cpp()
    converter = find_converter(args.llama_cpp_src)
    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_config(name, converter, Path(tmp), args) for name in args.configs]
    elapsed = time.perf_counter() - clock
    write_report(runs, converter, args, (load_start, os.getloadavg()), started, elapsed)


if __name__ == "__main__":
    main()
