"""What the benchmark scripts share: their reports' machine line, and a median timer."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
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
