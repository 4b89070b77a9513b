"""Soak/load test: N concurrent gradio_client users against a locally started app.

Starts `python app.py --model MODEL --port P` on 127.0.0.1, runs N client threads for a
bounded time (each loops over mixed prompts and settings: a /generate call, and every
third time an /attention call on its result), checks every answer against the same
request's earlier answer (greedy or a fixed seed makes that checkable), then reports
requests served, p50/p95 latency, errors (must be 0) and the server's peak RSS (VmHWM).

    python benchmarks/load.py --users 8 --seconds 60 [--model PATH|random-tiny] [--out benchmarks/LOAD.md]

`--model random-tiny` (the default when `gpt2/data/builtin-model.safetensors` is absent) writes
a random 2-layer GPT-2 (32 wide, 128-token context) to a temporary folder: it measures the
app's serving path (queue, validation, capture, JSON), not the model's speed.
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUILTIN = ROOT / "gpt2" / "data" / "builtin-model.safetensors"
PROMPTS = ["Once upon a time", "The meaning of life is", "Mira took the kite to the river.",
           "def fibonacci(n):", "In 1969, the first", "Hello, my name is"]


@dataclass
class Tally:
    """What all users saw, under one lock."""
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    answers: dict[tuple, object] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, key: tuple, answer: object, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if self.answers.setdefault(key, answer) != answer:
                self.mismatches.append(str(key))

    def fail(self, error: Exception) -> None:
        with self.lock:
            self.errors.append(f"{type(error).__name__}: {error}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_tiny(directory: Path) -> Path:
    import gpt2

    config = gpt2.GPTConfig(vocab_size=50257, context_length=128, n_embd=32, n_layer=2, n_head=4)
    return gpt2.save_model(gpt2.GPT(config).eval(), directory / "random-tiny.safetensors")


def start_app(model: str, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:  # a file, not a pipe: an unread pipe would stall the server
        return subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "gradio_api/info", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"app not ready after {timeout}s")


def proc_status_mb(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request_args(rng: random.Random, model: str) -> dict:
    return dict(prompt=rng.choice(PROMPTS), model=model, temperature=rng.choice([0.0, 0.8]),
                top_k=rng.choice([0, 40]), top_p=rng.choice([1.0, 0.9]),
                max_new_tokens=rng.choice([8, 16, 32]), seed=rng.randrange(3))


def user(i: int, url: str, model: str, deadline: float, tally: Tally) -> None:
    """One client session looping until the deadline; every failure is counted."""
    from gradio_client import Client

    client, rng = Client(url, verbose=False), random.Random(i)
    for n in itertools.count():
        if time.monotonic() >= deadline:
            return
        req = request_args(rng, model)
        try:
            started = time.perf_counter()
            text = client.predict(**req, api_name="/generate")
            tally.record(tuple(sorted(req.items())), text, time.perf_counter() - started)
            if n % 3 == 2:
                started = time.perf_counter()
                full = req["prompt"] + text
                maps = client.predict(text=full, model=model, layer=1, head="mean", api_name="/attention")
                tally.record(("attention", full), maps["weights"], time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
            tally.fail(error)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def report(args: argparse.Namespace, model: str, tally: Tally, peak_mb: float, end_mb: float,
           loads: tuple[str, str]) -> str:
    lat = sorted(tally.latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan"))
    return "\n".join([
        f"command: python benchmarks/load.py --users {args.users} --seconds {args.seconds:g} "
        f"--model {args.model}",
        f"model: {Path(model).name}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores; load average before {loads[0]}, after {loads[1]}",
        f"requests served: {len(lat)} in {args.seconds:g} s by {args.users} concurrent users "
        f"({len(lat) / args.seconds:.1f}/s; /generate, and /attention every third round)",
        f"latency p50: {pct(0.50):.3f} s, p95: {pct(0.95):.3f} s, "
        f"mean: {statistics.fmean(lat) if lat else float('nan'):.3f} s",
        f"errors: {len(tally.errors)}" + (f" (first: {tally.errors[0]})" if tally.errors else ""),
        f"answers differing from the same request's earlier answer: {len(tally.mismatches)}",
        f"server RSS: peak (VmHWM) {peak_mb:.0f} MB, at the end {end_mb:.0f} MB",
    ])


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--model", default=str(BUILTIN) if BUILTIN.is_file() else "random-tiny",
                        help="checkpoint for the app, or random-tiny (default: the built-in model "
                             "if present)")
    parser.add_argument("--out", default=None, help="also write the report here (markdown)")
    parser.add_argument("--note", default="", help="a line about the conditions, added to the report")
    args = parser.parse_args()

    from playground.models import local_name

    with tempfile.TemporaryDirectory() as tmp:
        model = str(random_tiny(Path(tmp))) if args.model == "random-tiny" else args.model
        port, log, tally = free_port(), Path(tmp) / "app.log", Tally()
        url = f"http://127.0.0.1:{port}/"
        proc = start_app(model, port, log)
        try:
            wait_ready(url, proc, log)
            loads = [load_average()]
            deadline = time.monotonic() + args.seconds
            threads = [threading.Thread(target=user, args=(i, url, local_name(model), deadline, tally))
                       for i in range(args.users)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            loads.append(load_average())
            peak, end = proc_status_mb(proc.pid, "VmHWM"), proc_status_mb(proc.pid, "VmRSS")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        text = report(args, model, tally, peak, end, (loads[0], loads[1]))
    if args.note:
        text += f"\nnote: {args.note}"
    print(text)
    if args.out:
        Path(args.out).write_text(f"# Load test\n\n```\n{text}\n```\n")
    sys.exit(1 if tally.errors or tally.mismatches else 0)


if __name__ == "__main__":
    main()
