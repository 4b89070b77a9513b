"""What the benchmark scripts share: their reports' machine line, a median timer, and the
marked sections other scripts write into RESULTS.md."""
from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


# The CPU features that pick a decode kernel path, and the settings that force another.
CPU_FLAGS = re.compile(r"^(avx2|avx512(f|bw|vl|_bf16|_vnni|_fp16)|amx\w*|avx_vnni|fma|asimddp|bf16)$")
FORCING = ("GPT2_CPU_ISA", "GPT2_AMX", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def lscpu() -> dict[str, str]:
    """lscpu's `key: value` lines, stripped."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def cpu_name(info: dict[str, str]) -> str:
    """The CPU's model name, with its family and model numbers where lscpu gives them: a cloud
    machine's name is often just "Intel(R) Xeon(R) Processor", Sapphire or Emerald Rapids alike."""
    name = info.get("Model name", platform.processor())
    if "CPU family" in info and "Model" in info:
        name += f" (family {info['CPU family']}, model {info['Model']})"
    return name


def cpu() -> tuple[str, str]:
    """The CPU's name (`cpu_name`) and its flags of interest (CPU_FLAGS)."""
    info = lscpu()
    flags = " ".join(sorted(f for f in info.get("Flags", "").split() if CPU_FLAGS.match(f)))
    return cpu_name(info), flags or "none of interest"


def machine_line() -> str:
    """CPU model, its flags of interest and any instruction set forced, cores, torch and its
    threads, and the load average now (call it once the runs are done: the load they ran under)."""
    model, flags = cpu()
    forced = ", ".join(f"{k}={os.environ[k]}" for k in FORCING if k in os.environ)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Machine: {model}, {os.cpu_count()} logical cores (flags: {flags}"
            f"{'; forced: ' + forced if forced else ''}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average at end {load}")


def median_ms(fn: Callable[[], object], reps: int, warmup: int) -> float:
    """Median wall time of `reps` calls after `warmup` untimed ones, in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def spread(values: list[float], fmt: str) -> str:
    """A report's cell for repeated measurements: "median [min–max]" in `fmt`."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_SECTION = re.compile(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", re.S)


def put_section(name: str, lines: list[str], path: Path = RESULTS) -> None:
    """Write `lines` into `path` between `<!-- name:begin -->` and `<!-- name:end -->`,
    replacing the previous run's: fidelity.py and compile_probe.py report into RESULTS.md,
    which generation.py rewrites keeping their sections (`sections`)."""
    section = "\n".join([f"<!-- {name}:begin -->", *lines, f"<!-- {name}:end -->"])
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"<!-- {name}:begin -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.strip() + "\n")  # idempotent: no blank line added per run


def sections(text: str) -> list[str]:
    """Every marked section in a report, in order."""
    return [m.group(0) for m in _SECTION.finditer(text)]
