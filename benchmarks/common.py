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


def machine_line() -> str:
    """CPU model, cores, torch and its threads, and the load average now (call it once the
    runs are done: the load they ran under)."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")),
               platform.processor())
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Machine: {cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
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
