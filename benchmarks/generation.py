"""Generation benchmark: our GPT-2 tiers vs `transformers.GPT2LMHeadModel`, same random weights.

For each model size and prompt length it measures, interleaved over several rounds:
time to first token (TTFT = time of a 1-new-token greedy call), decode tok/s excluding
prefill (63 / (t(64 new) - t(1 new))) and the peak RSS growth during the 64-token call.
It also measures the machine's memory read bandwidth and GEMM throughput and turns them
into a decode bound and a prefill bound, so each row shows its ratio to transformers and
its % of the bound. See benchmarks/README.md for the columns.

    python benchmarks/generation.py            # full run -> benchmarks/RESULTS.md
    python benchmarks/generation.py --quick    # 124M, prompts 16 and 512, 2 rounds -> RESULTS-quick.md
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import datetime
import gc
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import transformers
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gpt2  # noqa: E402
from common import FORCING, cpu_name, lscpu, sections, spread  # noqa: E402

HERE = Path(__file__).resolve().parent
OUR_TIERS = ("fp32", "bf16", "int8")
HF_TIERS = ("fp32", "bf16")
# Smoke-test size for checking the script itself (`--configs tiny`); not a GPT-2 size.
CONFIGS = {**gpt2.PRESETS, "tiny": gpt2.GPTConfig(n_embd=64, n_layer=2, n_head=4)}
# Per tier: bytes per matrix weight, bytes per vector parameter (bias, LayerNorm),
# bytes of per-output-row scales, and the GEMM dtype its prefill is bounded by.
TIER_COST = {  # (block matrix, vector, row scale, GEMM dtype, LM head [vocab, C] per weight)
    "fp32": (4, 4, 0, torch.float32, 4),
    "bf16": (2, 2, 0, torch.bfloat16, 2),
    "int8": (1, 2, 2, torch.bfloat16, 2),  # int8 blocks, bf16 scales, biases, LayerNorms, head
}
CPU_FLAGS = re.compile(r"^(avx2|avx512\w*|amx\w*|avx_vnni\w*|fma)$")


# -- systems under test -------------------------------------------------------------------
def make_tier(base: gpt2.GPT, tier: str) -> nn.Module:
    """Our model at precision `tier`."""
    if tier == "fp32":
        return base
    if tier == "bf16":
        return gpt2.to_bf16(copy.deepcopy(base))
    if tier == "int8":
        return gpt2.quantize_int8(copy.deepcopy(base))
    raise ValueError(f"unknown tier {tier!r}")


@dataclass
class System:
    """One model to time: `run(idx, n)` greedily generates `n` new tokens after `idx`."""
    name: str  # e.g. "ours-bf16", "hf-fp32"
    tier: str  # the key into TIER_COST that bounds it
    model: nn.Module
    run: Callable[[torch.Tensor, int], torch.Tensor]


def ours(model: nn.Module, tier: str) -> System:
    return System(f"ours-{tier}", tier, model, lambda idx, n: gpt2.generate(model, idx, n))


def ours_inspected(model: nn.Module, tier: str) -> System:
    """Generation inside an attention capture: the app's path (maps + candidates, no rerun)."""
    def run(idx: torch.Tensor, n: int) -> torch.Tensor:
        with gpt2.capture_attention(model) as att:
            return gpt2.generate(model, idx, n, capture=att)
    return System(f"ours-{tier}+capture", tier, model, run)


def hf(model: nn.Module, tier: str) -> System:
    def run(idx: torch.Tensor, n: int) -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, pad_token_id=0)
    return System(f"hf-{tier}", tier, model, run)


def build_systems(config: gpt2.GPTConfig, device: torch.device, hf_tiers: tuple[str, ...] = HF_TIERS,
                  seed: int = 0) -> tuple[list[System], dict[str, float]]:
    """transformers' random model (seeded), saved and loaded by both libraries: same weights.
    Our tiers run with the compiled decode kernels (`gpt2.fast.kernels`, CPU only), built here
    before timing (their seconds are returned per tier); `ours-fp32-eager` is the same model
    without them (`compile=False`)."""
    hf_kwargs = {k: v for k, v in config.to_hf().items() if k not in ("model_type", "architectures")}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_kwargs)).save_pretrained(tmp)
        hf_fp32 = transformers.GPT2LMHeadModel.from_pretrained(tmp).to(device).eval()
        base = gpt2.load_model(tmp, device=device, compile=False)
    systems, compile_seconds = [], {}
    for tier in OUR_TIERS:
        model = make_tier(copy.deepcopy(base), tier)
        if device.type == "cpu":
            status = gpt2.compile_kernels(model, background=False)
            if status.error:
                raise SystemExit(f"compiling the {tier} kernels failed: {status.error}")
            compile_seconds[tier] = status.seconds
        systems.append(ours(model, tier))
    systems.append(ours_inspected(next(s.model for s in systems if s.name == "ours-fp32"), "fp32"))
    if device.type == "cpu":
        systems.append(System("ours-fp32-eager", "fp32", base,
                              lambda idx, n: gpt2.generate(base, idx, n)))
    for tier in hf_tiers:
        systems.append(hf(hf_fp32 if tier == "fp32" else copy.deepcopy(hf_fp32).to(TIER_COST[tier][3]),
                          tier))
    return systems, compile_seconds


# -- measuring ----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None


def release_free_memory() -> None:
    """Hand the allocator's free heap pages back to the OS (glibc `malloc_trim`), so that an
    RSS baseline does not already hold the previous call's activations."""
    gc.collect()
    if LIBC is not None and hasattr(LIBC, "malloc_trim"):
        LIBC.malloc_trim(0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory growth inside a `with` block, in bytes.

    CPU: resident set size sampled from /proc/self/statm every `interval` s by a thread
    (peak minus the value on entry, after `release_free_memory`). CUDA: torch's peak
    allocated bytes minus the value on entry.
    """

    def __init__(self, device: torch.device, interval: float = 1e-3):
        self.device, self.interval = device, interval
        self.growth = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            release_free_memory()
            self.base = self.peak = rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.growth = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.growth = max(self.peak, rss_bytes()) - self.base


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    return min(timed(fn, device) for _ in range(repeats))


@dataclass
class Machine:
    """Measured ceilings: read bandwidth (B/s) and GEMM throughput (FLOP/s) per dtype."""
    sum_bandwidth: float
    gemv_bandwidth: float
    gemm: dict[torch.dtype, float] = field(default_factory=dict)

    @property
    def bandwidth(self) -> float:
        """The better of the two read figures: the one the bounds use."""
        return max(self.sum_bandwidth, self.gemv_bandwidth)


def measure_machine(device: torch.device, repeats: int = 5) -> Machine:
    """Bandwidth: `sum()` over a 512 MiB fp32 tensor (and a stock fp32 GEMV over a 256 MiB
    matrix, the access pattern of decode); GEMM: [512, 768] @ [768, 3072]; best of `repeats`."""
    big = torch.ones(128 * 2**20, device=device)  # 512 MiB
    bandwidth = big.numel() * 4 / best_time(big.sum, device, repeats)
    del big
    mat = torch.ones(8192, 8192, device=device)  # 256 MiB
    vec = torch.ones(1, 8192, device=device)
    gemv = mat.numel() * 4 / best_time(lambda: torch.nn.functional.linear(vec, mat), device, repeats)
    mat = None  # free the 256 MiB before the GEMMs
    gemm = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(512, 768, device=device, dtype=dtype)
        b = torch.randn(768, 3072, device=device, dtype=dtype)
        gemm[dtype] = 2 * a.size(0) * a.size(1) * b.size(1) / best_time(lambda: a @ b, device, repeats)
    return Machine(bandwidth, gemv, gemm)


def best_of(a: Machine, b: Machine) -> Machine:
    return Machine(max(a.sum_bandwidth, b.sum_bandwidth), max(a.gemv_bandwidth, b.gemv_bandwidth),
                   {k: max(a.gemm[k], b.gemm[k]) for k in a.gemm})


# -- bounds -------------------------------------------------------------------------------
def matrix_params(config: gpt2.GPTConfig) -> int:
    """Weights of the transformer blocks' four matrices (12 C^2 per layer)."""
    return 12 * config.n_embd ** 2 * config.n_layer


def decode_bytes(config: gpt2.GPTConfig, tier: str) -> float:
    """Weight bytes read per decoded token: block matrices at the tier's width (+ int8 row
    scales), the LM head [vocab, C], biases and LayerNorms; embedding rows are negligible."""
    weight, vector, scale, _, head = TIER_COST[tier]
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    rows = L * 9 * C  # output rows: c_attn 3C, c_proj C, c_fc 4C, mlp.c_proj C
    vectors = L * 13 * C + 2 * C  # biases (9C) and two LayerNorms (4C) per layer; ln_f
    return matrix_params(config) * weight + V * C * head + rows * scale + vectors * vector


def prefill_flops(config: gpt2.GPTConfig, T: int) -> float:
    """2 x matrix params x T, causal attention 2 T^2 C per layer, LM head on the last row."""
    return (2 * matrix_params(config) * T + 2 * config.n_layer * T * T * config.n_embd
            + 2 * config.vocab_size * config.n_embd)


def decode_bound(machine: Machine, config: gpt2.GPTConfig, tier: str) -> float:
    """Tokens/s if every decoded token only had to stream its weights at `machine.bandwidth`."""
    return machine.bandwidth / decode_bytes(config, tier)


def prefill_bound(machine: Machine, config: gpt2.GPTConfig, tier: str, T: int) -> float:
    """Roofline seconds for the prefill: the larger of compute and one read of the weights."""
    gemm_dtype = TIER_COST[tier][3] if tier == "fp32" else gpt2.tiers.stream_dtype()  # ours: fp32 off bf16 CPUs
    return max(prefill_flops(config, T) / machine.gemm[gemm_dtype],
               decode_bytes(config, tier) / machine.bandwidth)


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, shared (tied) storage counted once."""
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (*model.parameters(), *model.buffers())}
    return sum(seen.values())


# -- the run ------------------------------------------------------------------------------
@dataclass
class Samples:
    t1: list[float] = field(default_factory=list)
    t64: list[float] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)


def measure(system: System, idx: torch.Tensor, new_tokens: int, device: torch.device,
            samples: Samples) -> None:
    """One 1-token call and one `new_tokens` call; memory sampled during the latter."""
    samples.t1.append(timed(lambda: system.run(idx, 1), device))
    with PeakMemory(device) as mem:
        samples.t64.append(timed(lambda: system.run(idx, new_tokens), device))
    samples.peak.append(mem.growth)


def check_agreement(systems: list[System], idx: torch.Tensor) -> None:
    """Print whether ours-fp32 and hf-fp32 produce the same greedy tokens (same weights)."""
    by_name = {s.name: s for s in systems}
    a, b = by_name["ours-fp32"].run(idx, 8), by_name["hf-fp32"].run(idx, 8)
    same = torch.equal(a.cpu(), b.cpu())
    print(f"sanity: ours-fp32 and hf-fp32 greedy tokens {'agree' if same else 'DIFFER'}: "
          f"{a[0, -8:].tolist()} vs {b[0, -8:].tolist()}")


def run_config(name: str, prompts: list[int], rounds: int, new_tokens: int, device: torch.device,
               hf_tiers: tuple[str, ...] = HF_TIERS
               ) -> tuple[list[System], dict[tuple[int, str], Samples], dict[str, float]]:
    """All rounds for one model size: rounds x prompts x systems, system order rotated."""
    config = CONFIGS[name]
    systems, compile_seconds = build_systems(config, device, hf_tiers)
    gen = torch.Generator().manual_seed(0)
    idxs = {T: torch.randint(config.vocab_size, (1, T), generator=gen).to(device) for T in prompts}
    check_agreement(systems, idxs[prompts[0]])
    for s in systems:  # warm-up: every prefill shape and the decode step
        for idx in idxs.values():
            s.run(idx, 2)
    results = {(T, s.name): Samples() for T in prompts for s in systems}
    for r in range(rounds):
        start = time.perf_counter()
        for i, T in enumerate(prompts):
            k = (r + i) % len(systems)
            for s in systems[k:] + systems[:k]:
                measure(s, idxs[T], new_tokens, device, results[(T, s.name)])
        print(f"{name}: round {r + 1}/{rounds} done in {time.perf_counter() - start:.1f} s",
              flush=True)
    return systems, results, compile_seconds


@dataclass
class Row:
    model: str
    prompt: int
    system: str
    ttft: list[float]
    decode: list[float]
    x_hf: tuple[float, float]  # (decode, ttft) speed-ups over hf-fp32
    x_hf_bf16: tuple[float, float] | None  # same over hf-bf16, for our bf16 rows
    pct_decode: float
    pct_prefill: float
    peak_mb: float
    weights_mb: float


@dataclass(frozen=True)
class Measured:
    """What the report needs of a system once its model is gone."""
    name: str
    tier: str
    weights_bytes: int


def make_rows(name: str, systems: list[Measured], results: dict[tuple[int, str], Samples],
              machine: Machine, new_tokens: int) -> list[Row]:
    config = CONFIGS[name]
    rows = []
    for T in sorted({T for T, _ in results}):
        def stats(system: str) -> tuple[list[float], list[float]]:
            s = results[(T, system)]
            return s.t1, [(new_tokens - 1) / (b - a) for a, b in zip(s.t1, s.t64)]

        def speedup(system: str, ref: str) -> tuple[float, float]:
            (t, d), (rt, rd) = stats(system), stats(ref)
            return statistics.median(d) / statistics.median(rd), statistics.median(rt) / statistics.median(t)

        for s in systems:
            ttft, decode = stats(s.name)
            rows.append(Row(
                name, T, s.name, ttft, decode, speedup(s.name, "hf-fp32"),
                speedup(s.name, "hf-bf16") if s.name == "ours-bf16" and (T, "hf-bf16") in results else None,
                100 * statistics.median(decode) / decode_bound(machine, config, s.tier),
                100 * prefill_bound(machine, config, s.tier, T) / statistics.median(ttft),
                statistics.median(results[(T, s.name)].peak) / 1e6,
                s.weights_bytes / 1e6))
    return rows


# -- reporting ----------------------------------------------------------------------------
def ratio_cell(row: Row) -> tuple[str, str]:
    dec, ttft = f"{row.x_hf[0]:.2f}", f"{row.x_hf[1]:.2f}"
    if row.x_hf_bf16:
        dec += f" (bf16 {row.x_hf_bf16[0]:.2f})"
        ttft += f" (bf16 {row.x_hf_bf16[1]:.2f})"
    return dec, ttft


def print_header(device: torch.device) -> None:
    peak = "peakGPU_MB" if device.type == "cuda" else "peakRSS_MB"
    print(f"{'model':11} {'prompt':>6} {'system':17} {'ttft_s':>7} {'decode_tok/s':>12} "
          f"{'xHF_decode':>17} {'xHF_ttft':>17} {'%decode_bound':>13} {'%prefill_bound':>14} "
          f"{peak:>10} {'weights_MB':>10}")


def print_row(row: Row) -> None:
    dec, ttft = ratio_cell(row)
    print(f"{row.model:11} {row.prompt:6} {row.system:17} {statistics.median(row.ttft):7.3f} "
          f"{statistics.median(row.decode):12.1f} {dec:>17} {ttft:>17} {row.pct_decode:13.1f} "
          f"{row.pct_prefill:14.1f} {row.peak_mb:10.1f} {row.weights_mb:10.0f}")


def environment(device: torch.device) -> list[str]:
    """CPU model and flags of interest (or the GPU), library versions, threads."""
    info = lscpu()
    flags = sorted(f for f in info.get("Flags", "").split() if CPU_FLAGS.match(f))
    lines = [f"- CPU: {cpu_name(info)}, "
             f"{os.cpu_count()} logical cores; flags: {' '.join(flags) or 'none of interest'}"]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    lines += [f"- torch {torch.__version__}, transformers {transformers.__version__}, "
              f"Python {platform.python_version()}, torch.get_num_threads() = {torch.get_num_threads()}"]
    if device.type == "cpu":
        forced = [f"{k}={os.environ[k]}" for k in FORCING if k in os.environ]
        lines.append(f"- Decode kernels: {gpt2.fast.kernels.library().isa} path"
                     f"{' (forced: ' + ', '.join(forced) + ')' if forced else ''}; the fast tiers' residual "
                     f"stream in {str(gpt2.tiers.stream_dtype()).removeprefix('torch.')}")
    return lines


def ceilings(m: Machine) -> str:
    return (f"read bandwidth {m.sum_bandwidth / 1e9:.1f} GB/s (`sum`), {m.gemv_bandwidth / 1e9:.1f} GB/s "
            f"(fp32 GEMV); GEMM [512,768]@[768,3072] {m.gemm[torch.float32] / 1e9:.0f} GFLOP/s fp32, "
            f"{m.gemm[torch.bfloat16] / 1e9:.0f} GFLOP/s bf16")


def load_text(load: tuple[float, ...]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def compile_text(seconds: dict[str, float]) -> str:
    if not seconds:
        return "no kernels compiled (not a CPU run)"
    return "compile_kernels " + ", ".join(f"{tier} {s:.1f} s" for tier, s in seconds.items())


def write_report(path: Path, rows: list[Row], machine: Machine,
                 compile_seconds: dict[str, dict[str, float]], device: torch.device,
                 args: argparse.Namespace, load: tuple[tuple[float, ...], tuple[float, ...]],
                 started: datetime.datetime, elapsed: float) -> None:
    mem = "peak GPU MB" if device.type == "cuda" else "peak RSS MB"
    measured = list(dict.fromkeys(r.system for r in rows))
    out = [
        "# Generation benchmark",
        "",
        f"Command: `{shlex.join(['python', *sys.argv])}`  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC, took {elapsed:.0f} s; device {device}, {args.rounds} "
        f"rounds, {args.new_tokens} new tokens, batch 1, greedy, same random weights for every "
        f"system. Systems: {', '.join(measured)}.",
        "",
        *environment(device),
        f"- Load average (1 / 5 / 15 min): {load_text(load[0])} at start, {load_text(load[1])} at end",
        f"- Measured ceilings (best of 5, at the start and again at the end; the better kept): "
        f"{ceilings(machine)}",
        *(f"- Kernels for {name}, built before timing: {compile_text(sec)} (the kernel library's "
          "on-disk cache may already hold them; a cold start is in the compile section below)"
          for name, sec in compile_seconds.items()),
        "",
        "TTFT and decode are median [min–max] over rounds. Decode tok/s = "
        f"{args.new_tokens - 1} / (t({args.new_tokens} new) − t(1 new)). × HF = speed-up over "
        "hf-fp32 (ours-bf16 also over hf-bf16), > 1 is faster. % bound: see benchmarks/README.md.",
        "",
        f"| model | prompt | system | TTFT s | decode tok/s | × HF decode | × HF TTFT | "
        f"% decode bound | % prefill bound | {mem} | weights MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        dec, ttft = ratio_cell(r)
        out.append(f"| {r.model} | {r.prompt} | {r.system} | {spread(r.ttft, '.4f')} | "
                   f"{spread(r.decode, '.1f')} | {dec} | {ttft} | {r.pct_decode:.1f} | "
                   f"{r.pct_prefill:.1f} | {r.peak_mb:.1f} | {r.weights_mb:.0f} |")
    for section in sections(path.read_text() if path.exists() else ""):
        out += ["", section]  # fidelity.py's and compile_probe.py's: not ours to drop
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="124M only, prompts 16 and 512, 2 rounds (under 3 min on 2 cores)")
    p.add_argument("--configs", default=None, help="comma-separated: gpt2,gpt2-medium (default), "
                   "or 'tiny' to smoke-test this script")
    p.add_argument("--prompts", default=None, help="comma-separated prompt lengths (default 16,512,960)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=None, help="default 5, 2 with --quick")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hf-tiers", default=",".join(HF_TIERS),
                   help="transformers' tiers to time (fp32 is the reference; bf16 is emulated, and "
                        "minutes slow, on a CPU without bf16 products: `--hf-tiers fp32` there)")
    p.add_argument("--out", type=Path, default=None,
                   help="report path (default benchmarks/RESULTS.md, RESULTS-quick.md with --quick)")
    args = p.parse_args()
    args.configs = (args.configs or ("gpt2" if args.quick else "gpt2,gpt2-medium")).split(",")
    args.prompts = [int(t) for t in (args.prompts or ("16,512" if args.quick else "16,512,960")).split(",")]
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.hf_tiers = tuple(args.hf_tiers.split(","))
    if "fp32" not in args.hf_tiers or not set(args.hf_tiers) <= set(HF_TIERS):
        p.error(f"--hf-tiers: fp32 and any of {', '.join(HF_TIERS)}")
    args.out = args.out or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    load_start = os.getloadavg()
    print("\n".join(environment(device)))
    machine = measure_machine(device)
    print(ceilings(machine))
    runs, compile_seconds = [], {}
    for name in args.configs:
        systems, results, compile_seconds[name] = run_config(name, args.prompts, args.rounds,
                                                             args.new_tokens, device, args.hf_tiers)
        print(f"{name}: {compile_text(compile_seconds[name])}")
        measured = [Measured(s.name, s.tier, resident_bytes(s.model)) for s in systems]
        del systems  # free this size's models before the next
        print_header(device)
        for row in make_rows(name, measured, results, machine, args.new_tokens):
            print_row(row)
        runs.append((name, measured, results))
    machine = best_of(machine, measure_machine(device))  # a neighbour may have slowed one of them
    print(f"ceilings again at the end, the better of both kept for the report: {ceilings(machine)}")
    rows = [row for name, systems, results in runs
            for row in make_rows(name, systems, results, machine, args.new_tokens)]
    elapsed = time.perf_counter() - clock
    print(f"finished in {elapsed:.0f} s")
    write_report(args.out, rows, machine, compile_seconds, device, args,
                 (load_start, os.getloadavg()), started, elapsed)


if __name__ == "__main__":
    main()
