"""Does the live token view slow streaming down? The page's own generate handler
(`playground.ui.Page.generate`) run to the end with the live view on (a newest-row payload
at most every 0.25 s, read from the running capture) and off, interleaved, in one process.
Every update is JSON-encoded as Gradio would send it, so the cost of the payloads counts.

Besides the end-to-end ratio (as noisy as the machine), it times the live view's own work
(reading the row, building the payload, encoding it) as a share of the run: updates are
limited in time, not in tokens, so that share is at most 4 updates/s x the cost of one,
whatever the model's speed, and it does not depend on what else the machine runs.

    python benchmarks/live_view.py                    # -> benchmarks/LIVE_VIEW.md
    python benchmarks/live_view.py --rounds 3 --new-tokens 60 --out /tmp/x.md   # quick look
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import gpt2  # noqa: E402
from common import machine_line, spread  # noqa: E402
from playground.inspection import RunStore  # noqa: E402
from playground.models import ModelTable, offered_sources  # noqa: E402
from playground.service import Service  # noqa: E402
from playground.ui import LIVE_INTERVAL_S, Page  # noqa: E402

STORY = "Once upon a time, there was a girl named Mira. Mira had a red kite. "
LONG_PROMPT = gpt2.decode(gpt2.encode(STORY * 60)[:900])  # the live payload near a full context


class TimedPage(Page):
    """The page, keeping the seconds its live view took (row, payload and its JSON)."""
    live_seconds = 0.0

    def _live_view(self, step, layer, head):
        started = time.perf_counter()
        view = super()._live_view(step, layer, head)
        json.dumps(view)
        self.live_seconds += time.perf_counter() - started
        return view


def stream(page: TimedPage, model: str, prompt: str, new_tokens: int) -> tuple[float, int, float, int]:
    """One generation through the page's handler: (seconds, live updates, seconds in the live
    view, bytes sent)."""
    page.live_seconds = 0.0
    started = time.perf_counter()
    updates = sent = 0
    for text, run_id, progress, view in page.generate(prompt, model, 0.8, 40, 0.95, new_tokens, 1):
        live = isinstance(view, dict) and "tokens" in view  # else gr.skip(): nothing sent for the view
        sent += len(json.dumps([text, run_id, progress, view if live else None]))
        updates += live
    return time.perf_counter() - started, updates, page.live_seconds, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine, two OpenMP threads stall "
                             "whenever another process takes a core; both systems run the same)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "LIVE_VIEW.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        random_124m = gpt2.save_model(gpt2.GPT(gpt2.PRESETS["gpt2"]), Path(tmp) / "random-124m.safetensors")
        service = Service(ModelTable(offered_sources(gpt2.BUILTIN, [str(random_124m)])), RunStore())
        pages = {"on": TimedPage(service), "off": TimedPage(service, live_interval=None)}
        cases = {"builtin (4.3M), 17-token prompt": (gpt2.BUILTIN, STORY),
                 "random 124M, 17-token prompt": ("local:random-124m", STORY),
                 "random 124M, 900-token prompt": ("local:random-124m", LONG_PROMPT)}
        for name, prompt in cases.values():  # load, wait for the compiled kernels, warm up both paths
            service.models.get(name).compile_status.wait()
            for page in pages.values():
                stream(page, name, prompt, 20)

        rows = []
        for label, (name, prompt) in cases.items():
            rates = {system: [] for system in pages}
            shares, per_update, sent = [], [], {}
            for round_ in range(args.rounds):
                for system in (pages if round_ % 2 == 0 else reversed(pages)):
                    seconds, updates, live_seconds, sent[system] = stream(pages[system], name, prompt,
                                                                          args.new_tokens)
                    rates[system].append(args.new_tokens / seconds)
                    if system == "on":
                        shares.append(live_seconds / seconds)
                        per_update.append(live_seconds / max(updates, 1))
            ratios = [on / off for on, off in zip(rates["on"], rates["off"])]
            rows.append(f"| {label} | {spread(rates['on'], '.1f')} | {spread(rates['off'], '.1f')} | "
                        f"**{statistics.median(ratios):.3f}** [{min(ratios):.3f}–{max(ratios):.3f}] | "
                        f"{1e3 * statistics.median(per_update):.1f} | "
                        f"**{100 * statistics.median(shares):.2f}%** [{100 * max(shares):.2f}%] | "
                        f"{sent['on'] / 1e3:.0f} / {sent['off'] / 1e3:.0f} |")

    command = f"python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}".strip()
    report = [
        "# Live token view: streaming speed with and without it",
        "",
        f"`{command}` ({args.rounds} interleaved rounds of {args.new_tokens} new tokens each way, "
        f"temperature 0.8, seed 1, {args.threads} torch thread(s); live updates at most every "
        f"{LIVE_INTERVAL_S} s; fp32 with the compiled decode kernels).",
        "",
        machine_line(),
        "",
        "Tokens per second of the page's generate handler run to the end, every update "
        "JSON-encoded: median [min–max] over rounds. \"on / off\" is the median of each round's "
        "ratio (the two runs of a round are back to back). \"ms per update\" is what one live "
        "update costs (reading the newest row, building and JSON-encoding its payload); \"share\" "
        "is the time spent on them over the run's time, median [max] over rounds: the slowdown "
        "the live view can cause, measured without the machine's noise. KB: sent per run with "
        "the live view on / off (last round).",
        "",
        "| case | tokens/s, live view on | off | on / off | ms per update | share | KB on / off |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    args.out.write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
