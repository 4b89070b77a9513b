"""What holds the memory a soak adds (issue 14): the app in this process, measured from inside.

    python benchmarks/soak_probe.py compare [--rounds 8] [--per-round 250]   # -> LOAD.md, "soak-probe"
    python benchmarks/soak_probe.py compare --configs 3 --rounds 10          # the app as it is only
    python benchmarks/soak_probe.py run [--sessions N] ...                   # one configuration, rows printed

`run` starts the app as `gpt2-playground --model gpt2` does (`playground.app.launch`, on the
stand-in 124M Hub cache and the broken checkpoint of load.py), in this process, and drives it
from a client process with load.py's soak users (8 by default, each round's anew) in rounds of
`--per-round` requests. After each round: malloc_trim(0) and the RSS (what the server holds as
it runs, cyclic garbage included), then gc.collect() and malloc_trim(0), then the server's
RSS again, what glibc's malloc has handed out and not got back (mallinfo2: in use, heap and mmap),
Gradio's sessions, the run store's runs and the number of objects the garbage collector tracks.

`compare` runs four configurations, each in a fresh process, so that oneDNN reads its cache
sizes anew: oneDNN's per-shape primitive caches at torch's default (1,024 entries) or the app's
cap (app.ONEDNN_CACHE_ENTRIES), times Gradio's sessions at the old cap (1,000) or a small one.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import machine_line, put_section

LOAD = HERE / "LOAD.md"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the client process ---------------------------------------------------------------------------
def client(args: argparse.Namespace) -> None:
    """One round per line on stdin (the line: the round's number, which seeds its users)."""
    import load

    with urllib.request.urlopen(args.url + "config", timeout=30) as response:
        config = json.load(response)
    app = load.App(args.url, None)  # type: ignore[arg-type]
    for line in sys.stdin:
        tally = load.Tally()
        soak_args = argparse.Namespace(requests=args.per_round, page_views=["show_run"])
        users = [threading.Thread(target=load.soak_user, args=(1000 * int(line) + i, app, config, soak_args, tally))
                 for i in range(args.users)]
        for t in users:
            t.start()
        for t in users:
            t.join()
        print(json.dumps({"done": tally.done, "kinds": tally.kinds, "errors": tally.errors[:3],
                          "mismatches": len(tally.mismatches)}), flush=True)


# -- one configuration: the app in this process -----------------------------------------------------
def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="soak-probe-"))
    os.environ.update(HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    from playground import app, inspection

    app.bound_onednn_caches()  # as launch does, before anything here could run a oneDNN product
    import load

    load.stand_in_hub(tmp / "hf")
    broken = load.broken_checkpoint(tmp / "broken")

    if args.sessions:
        app.SESSION_CAPACITY = args.sessions
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.launch(["--model", "gpt2", "--port", str(port), "--extra-model", str(broken)])
    url = f"http://127.0.0.1:{port}/"
    from gradio_client import Client

    warm = Client(url, verbose=False)  # as load.py's start_app: the model loaded, the kernels built
    warm.predict(model="gpt2", api_name="/load_model")
    for _ in range(3):
        warm.predict(prompt="Warm up", model="gpt2", temperature=0.0, max_new_tokens=64, api_name="/generate")
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    store = next(o for o in gc.get_objects() if isinstance(o, inspection.RunStore))

    def measure(round_: int, done: int, seconds: float) -> dict:
        time.sleep(3)  # the round's last answers out
        libc.malloc_trim(0)
        before_gc = rss_mb()  # what the server holds as it runs: cyclic garbage included
        unreachable = gc.collect()
        libc.malloc_trim(0)
        info = libc.mallinfo2()
        row = {"round": round_, "done": done, "seconds": round(seconds), "rss_mb": round(rss_mb(), 1),
               "rss_before_gc_mb": round(before_gc, 1), "unreachable": unreachable,
               "malloc_mb": round((info.uordblks + info.hblkhd) / 2**20, 1),
               "sessions": len(demo.state_holder.session_data), "runs": len(store),
               "gc_objects": len(gc.get_objects()),
               "onednn": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), "capacity": app.SESSION_CAPACITY}
        print(json.dumps(row), flush=True)
        return row

    driver = subprocess.Popen([sys.executable, __file__, "client", url, "--per-round", str(args.per_round),
                               "--users", str(args.users)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    measure(0, 0, 0)
    done = 0
    for r in range(1, args.rounds + 1):
        started = time.perf_counter()
        driver.stdin.write(f"{r}\n")
        driver.stdin.flush()
        out = json.loads(driver.stdout.readline())
        done += out["done"]
        if out["errors"] or out["mismatches"]:
            print(json.dumps({"round": r, "errors": out["errors"], "mismatches": out["mismatches"]}), flush=True)
        measure(r, done, time.perf_counter() - started)
    driver.stdin.close()
    driver.wait(timeout=60)
    os._exit(0)  # the app's threads would keep the process alive


# -- four configurations, one process each --------------------------------------------------------
CONFIGS = [  # label, environment, session cap
    ("oneDNN caches 1,024 (torch's default), 1,000 sessions: as before", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024",
                                                                          "LRU_CACHE_CAPACITY": "1024"}, 1000),
    ("oneDNN caches 1,024, 20 sessions", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"}, 20),
    ("oneDNN caches 128 (the app's), 1,000 sessions", {}, 1000),
    ("oneDNN caches 128, 256 sessions: the app now", {}, 0),
]
EVERY_CONFIG = ",".join(str(i) for i in range(len(CONFIGS)))  # compare's --configs default


def compare(args: argparse.Namespace) -> None:
    results = []
    for label, env, sessions in [CONFIGS[int(i)] for i in args.configs.split(",")]:
        command = [sys.executable, __file__, "run", "--rounds", str(args.rounds), "--per-round", str(args.per_round),
                   "--users", str(args.users), "--sessions", str(sessions)]
        environ = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
        proc = subprocess.run(command, env=environ | env, capture_output=True, text=True, timeout=3600,
                              check=False)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        print(label, *rows, sep="\n", flush=True)
        if proc.returncode != 0 or len([r for r in rows if "rss_mb" in r]) != args.rounds + 1:
            raise RuntimeError(f"{label}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        results.append((label, rows))
    errors = [(label, r) for label, rows in results for r in rows if "errors" in r]
    header = "| configuration | " + " | ".join(f"round {r}" for r in range(args.rounds + 1)) + " | after round 2 |"
    table = [header, "|---" * (args.rounds + 3) + "|"]
    for label, rows in results:
        rows = [r for r in rows if "rss_mb" in r]
        table.append(f"| {label}: RSS, MB | " + " | ".join(f"{r['rss_mb']:.0f}" for r in rows)
                     + f" | **{rows[-1]['rss_mb'] - rows[2]['rss_mb']:+.0f}** |")
        table.append("| RSS before that round's gc.collect(), MB | " + " | ".join(f"{r['rss_before_gc_mb']:.0f}" for r in rows)
                     + f" | {rows[-1]['rss_before_gc_mb'] - rows[2]['rss_before_gc_mb']:+.0f} |")
        table.append("| malloc in use, MB | " + " | ".join(f"{r['malloc_mb']:.0f}" for r in rows)
                     + f" | {rows[-1]['malloc_mb'] - rows[2]['malloc_mb']:+.0f} |")
        table.append("| sessions / objects tracked by gc (thousands) | "
                     + " | ".join(f"{r['sessions']} / {r['gc_objects'] / 1000:.0f}" for r in rows) + " | |")
    done = [r["done"] for r in results[-1][1] if "rss_mb" in r]
    configs = "" if args.configs == EVERY_CONFIG else f" --configs {args.configs}"
    lines = ["## What held the soak's growth (issue 14)", "",
             (f"Command: `python benchmarks/soak_probe.py compare{configs} --rounds {args.rounds} "
              f"--per-round {args.per_round}`. "
             f"The app as `--model gpt2` runs it (random 124M weights from a local Hub cache, int8), in the probe's "
             f"own process, driven by load.py's soak users ({args.users} at once, the same mix and seeds in every "
             f"configuration) in rounds of {args.per_round} requests; after each round malloc_trim(0) and the "
             f"RSS as the server holds it, then gc.collect(), malloc_trim(0) and the RSS again, the bytes glibc's "
             f"malloc has handed out (mallinfo2), Gradio's sessions and the objects the garbage collector tracks. "
             f"Requests done after each round: "
             f"{', '.join(str(d) for d in done)}. Each configuration in a fresh process. {machine_line()}."), "",
             *table, "",
             "- errors: " + ("none" if not errors else "; ".join(f"{label}: {r}" for label, r in errors))]
    put_section("soak-probe", lines, LOAD)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name, fn in (("compare", compare), ("run", run)):
        p = sub.add_parser(name)
        p.add_argument("--rounds", type=int, default=8)
        p.add_argument("--per-round", type=int, default=250)
        p.add_argument("--users", type=int, default=8)
        if name == "compare":
            p.add_argument("--configs", default=EVERY_CONFIG,
                           help="which configurations, by index: " + "; ".join(f"{i}: {c[0]}" for i, c in enumerate(CONFIGS)))
        if name == "run":
            p.add_argument("--sessions", type=int, default=0, help="Gradio's session cap (0: the app's)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("client")
    p.add_argument("url")
    p.add_argument("--per-round", type=int, default=250)
    p.add_argument("--users", type=int, default=8)
    p.set_defaults(fn=client)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
