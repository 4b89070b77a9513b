"""How long the page makes a user wait in Chromium, on a 124M-sized model: the time from a
run's last token to its views being ready, for a 30-token and a 900-token run, and the time a
chart tab takes to show on its first visit and on a later one (issue 29, items 5 and 6).

Starts `app.py` on a random 124M checkpoint (fp32, saved here) and drives Debian's Chromium at
1400 px and at 390 px (touch). Per width:

- "last token -> views ready": from the moment the text box shows its last token (the page
  polls the box every frame) to the frame after the views are marked ready (the page's
  `views-stale` class goes, which happens once every view's new value is in) — what a user
  waits for before a tab shows this run. A 30-token run (10-token prompt + 20 new tokens) and a
  900-token one (870 + 30: the views' work grows with the text, not with how much of it was
  generated), each `--rounds` times.
- first and later visit: from the tab's click to the frame after its figure is on screen, for
  Heatmap, Heads, Next token and Logit lens, after a 30-token run (first visit: the page's
  first look at that tab; later: after going back to Tokens).

Also the server's share: `Page.show_run` (everything the views get after a run) timed
in-process on the same checkpoint, cold (role scores and candidates computed) and warm.

With `--pause-others`, every other python and chromium process on the machine (not this
script's own, nor the app's and browser's it starts) is stopped (SIGSTOP) during each timed
step, at most PAUSE_S seconds at a time, and continued after: the machine is shared.

    python benchmarks/page_timing.py [--pause-others]      # -> benchmarks/PAGE_TIMING.md
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
import gpt2  # noqa: E402
from tests.conftest import free_port, wait_until_up  # noqa: E402
from tests.test_app_server import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from common import cpu  # noqa: E402 - this script's folder

RUNS = {"30-token run": (10, 20), "900-token run": (870, 30)}  # (prompt tokens, new tokens)
TABS = (("Heatmap", "#attention-heatmap"), ("Heads", "#all-heads"), ("Next token", "#candidates"),
        ("Logit lens", "#lens-grid"))
PAUSE_S = 20  # the longest other processes are stopped at once
STORY = ("Once upon a time, there was a girl named Mira. Mira had a red kite. One day, Mira took the "
         "kite to the park. At the park, Mira met a dog. The dog looked at the kite. ")
DESKTOP = dict(viewport={"width": 1400, "height": 900})
PHONE = dict(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)

# Before Generate: note the time of every change of the text box, of the frame after the views
# are marked ready, and of the end of the last figure draw (Plotly.react, counted here whatever
# the page does: the baseline's draws come after the views are marked ready).
WATCH = """() => {
    const box = document.querySelector('#output textarea');
    const t = window.__timing = {last: null, ready: null, drawn: null, pending: 0, lastDraw: null};
    const P = window.Plotly;
    if (P && !P.__timed) {
        P.__timed = true;
        const react = P.react;
        P.react = function(...args) {
            const w = window.__timing;
            w.pending++;
            const r = react.apply(this, args);
            Promise.resolve(r).catch(() => {}).then(() => { w.pending--; w.lastDraw = performance.now(); });
            return r;
        };
    }
    let seen = box.value;
    document.body.classList.add('views-stale');  // Generate's own click adds it too
    (function poll() {
        const now = performance.now();
        if (box.value !== seen) { seen = box.value; t.last = now; }
        if (!document.body.classList.contains('views-stale') && t.last !== null) {
            if (t.ready === null) {
                t.ready = -1;
                requestAnimationFrame(() => setTimeout(() => { t.ready = performance.now(); }, 0));
            }
            if (t.ready > 0 && t.pending === 0 && now - Math.max(t.lastDraw ?? 0, t.ready) > 300) {
                t.drawn = Math.max(t.lastDraw ?? 0, t.ready);
                return;
            }
        }
        requestAnimationFrame(poll);
    })();
}"""
# Click a tab and wait for the frame after its figure is on screen.
VISIT = """async ([tab, figure]) => {
    const button = [...document.querySelectorAll('#views [role=tab]')].find(b => b.textContent.trim() === tab);
    const start = performance.now();
    button.click();
    const shown = () => {
        const el = document.querySelector(figure + ' .js-plotly-plot');
        return el && el._fullLayout && el.querySelector('.main-svg') && el.getBoundingClientRect().width > 0;
    };
    while (!shown()) await new Promise(r => requestAnimationFrame(r));
    await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
    return performance.now() - start;
}"""


class Pauser:
    """SIGSTOP / SIGCONT for every python and chromium process that is not ours."""

    def __init__(self, enabled: bool):
        self.enabled, self.stopped = enabled, []

    def ours(self) -> set[int]:
        """This process, its ancestors and all its descendants."""
        children: dict[int, list[int]] = {}
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry.name))
                    parents[int(entry.name)] = ppid
        mine, todo = set(), [os.getpid()]
        while todo:
            pid = todo.pop()
            mine.add(pid)
            todo += children.get(pid, [])
        pid = os.getpid()
        while pid in parents and pid > 1:
            pid = parents[pid]
            mine.add(pid)
        return mine

    @contextlib.contextmanager
    def quiet(self):
        if not self.enabled:
            yield
            return
        mine = self.ours()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in mine:
                continue
            with contextlib.suppress(OSError):
                name = (entry / "comm").read_text().strip()
                if re.match(r"(python|chrom|headless_shell)", name):
                    os.kill(int(entry.name), signal.SIGSTOP)
                    self.stopped.append(int(entry.name))
        started = time.monotonic()
        try:
            yield
        finally:
            for pid in self.stopped:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            self.stopped = []
            if time.monotonic() - started > PAUSE_S + 5:
                print(f"warning: others were paused {time.monotonic() - started:.0f} s", file=sys.stderr)


def prompt_of(n: int) -> str:
    ids = gpt2.encode(STORY * (n // 20 + 2))[:n]
    text = gpt2.decode(ids)
    assert len(gpt2.encode(text)) == n
    return text


def generate(page, prompt: str, new: int) -> None:
    page.fill("#prompt textarea", prompt)
    page.fill("#max-new-tokens input[type=number]", str(new))
    page.press("#max-new-tokens input[type=number]", "Enter")
    page.fill("#seed textarea, #seed input", "1")
    page.locator("#generate").click()


def last_token_to_ready(page, prompt: str, new: int, pauser: Pauser) -> tuple[float, float]:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Tokens").click()
    with pauser.quiet():
        page.evaluate(WATCH)
        generate(page, prompt, new)
        page.wait_for_function("window.__timing.ready > 0 && window.__timing.drawn !== null",
                               timeout=PAUSE_S * 1000 * 3)
        expect(page.locator("#stats")).to_contain_text("tokens/s")
    t = page.evaluate("window.__timing")
    return t["ready"] - t["last"], max(t["drawn"], t["ready"]) - t["last"]


def record(out: dict, name: str, times: tuple[float, float]) -> None:
    out[name].append(times[0])
    out[f"{name} drawn"].append(times[1])


def measure(url: str, context: dict, rounds: int, pauser: Pauser, baseline: bool = False) -> dict:
    from playwright.sync_api import expect, sync_playwright

    out: dict = {name: [] for name in RUNS} | {f"{name} drawn": [] for name in RUNS}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(**context)
            page.goto(url)
            expect(page.locator("#model-status")).to_contain_text("ready", timeout=300_000)
            if not baseline:
                page.wait_for_function("document.body.dataset.viewsMounted && document.body.dataset.plotlyLoaded",
                                       timeout=60_000)
            prompts = {name: prompt_of(n) for name, (n, _) in RUNS.items()}
            name = "30-token run"
            record(out, name, last_token_to_ready(page, prompts[name], RUNS[name][1], pauser))
            with pauser.quiet():
                out["first"] = {tab: page.evaluate(VISIT, [tab, figure]) for tab, figure in TABS}
                out["later"] = {}
                for tab, figure in TABS:
                    page.get_by_role("tab", name="Tokens").click()
                    page.wait_for_timeout(200)
                    out["later"][tab] = page.evaluate(VISIT, [tab, figure])
            for name, (_, new) in RUNS.items():
                while len(out[name]) < rounds:
                    record(out, name, last_token_to_ready(page, prompts[name], new, pauser))
            out["stats"] = page.locator("#stats").inner_text()
        finally:
            browser.close()
    return out


def server_share(checkpoint: Path, pauser: Pauser) -> dict[str, tuple[float, float]]:
    """Page.show_run in-process: (cold, warm) seconds per run length."""
    from playground.inspection import RunStore
    from playground.models import ModelTable, offered_sources, with_tiers
    from playground.service import Service
    from playground.ui import Page

    sources, tiers = with_tiers(offered_sources(str(checkpoint), []))
    runs = RunStore()
    service = Service(ModelTable(sources, tiers, on_evict=runs.drop_model), runs)
    name = service.models.names[0]
    page = Page(service, first=name, live_interval=None)
    out = {}
    for run_name, (n, new) in RUNS.items():
        *_, last = page.generate(prompt_of(n), name, 0.8, 40, 0.95, new, 1)
        with pauser.quiet():
            start = time.perf_counter()
            page.show_run(last[1], 64, False)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            page.show_run(last[1], 64, False)
            out[run_name] = (cold, time.perf_counter() - start)
    return out


def machine() -> list[str]:
    model, flags = cpu()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"- CPU: {model}, {os.cpu_count()} logical cores; flags: {flags}",
            f"- torch {torch.__version__}, Python {platform.python_version()}, Chromium "
            f"{subprocess.run([CHROMIUM, '--version'], capture_output=True, text=True).stdout.strip()}",
            f"- load average at the end: {load}"]


def ms(values: list[float]) -> str:
    return (f"{statistics.median(values) / 1000:.2f} s [{min(values) / 1000:.2f}–{max(values) / 1000:.2f}]"
            if len(values) > 1 else f"{values[0] / 1000:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "PAGE_TIMING.md")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause-others", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also measure the app of this checkout (e.g. a git worktree of an earlier commit)")
    args = parser.parse_args()
    pauser = Pauser(args.pause_others)
    started = time.monotonic()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        checkpoint = gpt2.save_model(gpt2.GPT(gpt2.PRESETS["gpt2"]), Path(tmp) / "random-124m.safetensors")
        for root, key in ((ROOT, ""), (args.baseline, " (baseline)")):
            if root is None:
                continue
            port, log = free_port(), Path(tmp) / "app.log"
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
            with log.open("w") as out:
                command = [sys.executable, "app.py", "--model", str(checkpoint), "--port", str(port)]
                app = subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                url = f"http://127.0.0.1:{port}/"
                wait_until_up(url, app, log, timeout=300)
                for label, context in (("1400 px", DESKTOP), ("390 px, touch", PHONE)):
                    results[label + key] = measure(url, context, args.rounds, pauser, baseline=bool(key))
            finally:
                app.terminate()
                app.wait(timeout=30)
        server = server_share(checkpoint, pauser)

    report = [
        "# The page's waits in Chromium: last token to views ready, first visit of a chart tab",
        "",
        f"Command: `python benchmarks/page_timing.py{' --pause-others' if args.pause_others else ''}` "
        f"(this run: {time.monotonic() - started:.0f} s). Debian's Chromium, headless; random 124M "
        "checkpoint, fp32, served by `app.py`; runs of seed 1.",
        "",
        *machine(),
        "- " + ("every other python and chromium process on this shared machine was paused during each timed "
                "step" if args.pause_others else
                "the machine is shared and other processes ran meanwhile: the numbers are noisy"),
        "",
        "## Last token to views ready",
        "",
        "From the frame the text box shows the run's last token to the frame after every view holds the new "
        "run (the page's 'Previous run' notes go). Median [min–max] over "
        f"{args.rounds} runs each; a 900-token run is an 870-token prompt and 30 new tokens.",
        "",
        "| width | " + " | ".join(f"{name}: views ready | every figure drawn" for name in RUNS) + " |",
        "|---|" + "---|---|" * len(RUNS),
        *(f"| {label} | " + " | ".join(f"{ms(r[name])} | {ms(r[name + ' drawn'])}" for name in RUNS) + " |"
          for label, r in results.items()),
        "",
        "\"Views ready\": the frame after the 'Previous run' notes go (every view holds the new run; the tab "
        "in view, Tokens, has no figure); \"every figure drawn\": until the last figure draw of the run's "
        "views ends (Plotly.react, timed in the page), which the baseline does after the notes go and the "
        "page now does for tabs out of sight when the browser is idle.",
        "",
        "Of which the server computes everything the views show after a run (`Page.show_run`, in-process, "
        "same checkpoint): "
        + "; ".join(f"{name}: {cold:.2f} s the first time (role scores and candidates computed), "
                    f"{warm:.2f} s again" for name, (cold, warm) in server.items()) + ".",
        "",
        "## Chart tabs: first visit and later",
        "",
        "After a 30-token run, from the tab's click to the frame after its figure is on screen. Every tab is "
        "opened once with the page and Plotly loaded while the browser is idle, so a run's figures are "
        "drawn into their tabs when they arrive (issue 29 measured 2.8–6.3 s for a first visit of Heatmap, "
        "1.2–5.2 s for Logit lens, 60–180 ms later).",
        "",
        "| width | " + " | ".join(f"{tab} first / later" for tab, _ in TABS) + " |",
        "|---|" + "---|" * len(TABS),
        *(f"| {label} | " + " | ".join(f"{r['first'][tab]:.0f} / {r['later'][tab]:.0f} ms" for tab, _ in TABS)
          + " |" for label, r in results.items()),
        "",
        f"Last run's line: {results['390 px, touch']['stats']}",
    ]
    if args.baseline is not None:
        commit = subprocess.run(["git", "-C", str(args.baseline), "log", "-1", "--format=%h %s"],
                                capture_output=True, text=True).stdout.strip()[:90]
        report[report.index("## Last token to views ready"):report.index("## Last token to views ready")] = [
            f"Rows marked \"(baseline)\" ran the app of `{commit}…` (before these changes: tabs mounted on "
            "their first visit, Plotly loaded by the first figure, every figure drawn twice), the same "
            "script and browser, one after the other.", ""]
    args.out.write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
