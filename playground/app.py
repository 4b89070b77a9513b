"""Start the GPT-2 playground: `gpt2-playground [--model NAME_OR_PATH] [--port N] [--host H]`
(or `python app.py ...` from a checkout, as Spaces runs it).

On Hugging Face Spaces (SPACE_ID is set) it binds 0.0.0.0:7860 as Spaces expects; locally
it listens on 127.0.0.1 only. Analytics are off, nothing is shared publicly, and no
server paths are exposed to the browser.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)
QUEUE_MAX_SIZE = 32  # waiting requests beyond this are turned away (the page's load events aside: fairness.py)
# Gradio keeps a session per page visit, per gradio_client and per bare REST call: a copy of the
# page's config holding the last value of every output, at most SESSION_CAPACITY of them (which
# go first: playground/sessions.py; a page that lost its session must reload). Measured with
# tracemalloc: 0.17 MB for a REST call, 0.34 MB for a page after a short 124M run, 1.87 MB
# after a 1,024-token one (the token view's map, the heads grid, the logit-lens grid). The old
# cap of 1,000 could hold ~1.9 GB, and a soak of 4,000 requests (~600 pages) never reached it.
SESSION_BUDGET = 512 * 2**20  # bytes, for all sessions showing 1,024-token runs of 124M
SESSION_CAPACITY = 256  # 256 x 1.87 MB = 479 MB [tests/test_app_sessions.py]
TRIM_EVERY_S = 10.0  # how often freed memory goes back to the OS (see return_freed_memory)
# oneDNN (the CPU products of gpt2.fast.gemm, and torch's bf16 linears) keeps a primitive per
# product shape in two caches, 1,024 entries each by default: ~0.6 MB a shape whatever its size
# (measured from 32x96 to 1600x4800), so each prefill of a new length kept ~2.5 MB at 124M,
# +500 MB by ~200 lengths (the soak's /attention texts have that many). A forward pass repeats
# its few shapes in every layer, so a small cache still serves it; a miss costs ~0.5 ms (a
# 768x2304 product over 20-119 rows on 1 thread: 1.3 ms cached, 2.0 ms not).
ONEDNN_CACHE_ENTRIES = 128  # ~80 MB at most
OPTIONAL_IMPORTS = ("matplotlib", "bokeh")  # which Gradio looks for on every call (see below)


def build_parser() -> argparse.ArgumentParser:
    """The options, with defaults from the environment (and Spaces' address on Spaces)."""
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser = argparse.ArgumentParser(prog="gpt2-playground", description="GPT-2 playground (Gradio)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("GPT2_MODEL", "gpt2"),
                        help="the model the page opens on: a preset (gpt2, gpt2-medium, gpt2-large, "
                             "gpt2-xl; at int8), builtin, a local checkpoint (a Hub-layout folder or "
                             "a .safetensors file), or a Hub repo id, org/name or org/name@revision "
                             "(at int8, offered under that name) (env: GPT2_MODEL)")
    parser.add_argument("--extra-model", action="append", dest="extra_models", metavar="PATH_OR_REPO",
                        default=[p for p in os.environ.get("GPT2_EXTRA_MODELS", "").split(os.pathsep) if p],
                        help="another model to offer in the list: a local checkpoint, or a Hub repo id "
                             "(org/name or org/name@revision, offered under that name at each precision) "
                             f"(repeatable; env: GPT2_EXTRA_MODELS, separated by '{os.pathsep}')")
    parser.add_argument("--allow-hub-models", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("GPT2_ALLOW_HUB_MODELS", "") not in ("", "0"),
                        help="let visitors name any Hub repo (org/name) as the model, not only the "
                             "offered list; needs --max-params. Its config and safetensors header are "
                             "checked before its weights download (env: GPT2_ALLOW_HUB_MODELS=1)")
    parser.add_argument("--max-params", type=int, default=int(os.environ.get("GPT2_MAX_PARAMS") or 0) or None,
                        help="with --allow-hub-models: the largest repo a visitor may load, in parameters "
                             "(e.g. 200000000), refused before its weights download (env: GPT2_MAX_PARAMS)")
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1",
                        help="address to listen on (0.0.0.0 on Spaces, where SPACE_ID is set)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (env: GRADIO_SERVER_PORT)")
    parser.add_argument("--trust-forwarded-for", action=argparse.BooleanOptionalAction, default=on_spaces,
                        help="tell clients apart by the X-Forwarded-For header that a proxy in front "
                             "sets (on by default on Spaces, where SPACE_ID is set); without a proxy "
                             "that sets it, clients could claim any address")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument("--threads", type=int, default=os.environ.get("GPT2_THREADS") or str(cores),
                        help="threads the models compute with, for all users together: every "
                             "generation is a row of one decode loop (env: GPT2_THREADS; unset: as many as "
                             "the cores this process may use, shown here)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def return_freed_memory(every_s: float = TRIM_EVERY_S) -> None:
    """Hand memory the process has freed back to the OS, every `every_s` seconds, in a daemon
    thread. Requests allocate tensors of every size from many threads, and glibc keeps what
    they free in per-thread arenas: over a soak of 1,600 mixed requests (in-process, 8
    threads) RSS rose 165 MB, of which malloc_trim returned 173 MB. No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return

    def loop() -> None:
        while True:
            time.sleep(every_s)
            trim(0)

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()


def bound_onednn_caches(entries: int = ONEDNN_CACHE_ENTRIES) -> None:
    """Cap oneDNN's primitive cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and ideep's (torch's
    oneDNN wrapper, LRU_CACHE_CAPACITY): both read their variable once, at the process's first
    oneDNN product, so this runs before any model does. A value already set is kept
    (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 turns that cache off; LRU_CACHE_CAPACITY=0 crashes
    torch 2.13 at its first product, so ours is at least 1)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(entries))
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(max(1, entries)))


def skip_absent_optional_imports(names: tuple[str, ...] = OPTIONAL_IMPORTS) -> None:
    """Make Gradio's imports of optional packages that are not installed fail at once. Gradio
    tries `import matplotlib` around every call of an event handler (twice for each streamed
    token) and `import bokeh` for each plot of every new session; a failed import is not
    remembered, so each one searched sys.path again (a visible share of the server loop's
    work under 8 streaming users, profiled with py-spy). A `None` entry in `sys.modules` is Python's own way of saying "this
    module is absent" (the import raises ImportError without a search). Installed packages are
    left alone."""
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None


def launch(argv: list[str] | None = None):
    """Everything `main` does short of waiting: the app serving from this process's threads
    (benchmarks/soak_probe.py measures it from inside). Returns the Gradio Blocks."""
    args = parse_args(argv)
    if args.threads < 1:
        build_parser().error(f"--threads must be at least 1, got {args.threads}")
    if args.allow_hub_models and (args.max_params is None or args.max_params < 1):
        build_parser().error("--allow-hub-models needs --max-params N (N >= 1): the largest repo a visitor "
                             "may load, in parameters")
    bound_onednn_caches()
    import gpt2

    gpt2.compute.set_threads(args.threads)
    return_freed_memory()
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not every request gradio makes to itself
    skip_absent_optional_imports()
    import gradio as gr
    from starlette.middleware import Middleware

    from . import fairness, ui
    from .connections import use_header_timeout
    from .guard import FramePolicy, RouteGuard
    from .limits import BodyLimit
    from .sessions import SessionTable

    demo = ui.build(args.model, args.extra_models, args.allow_hub_models, args.max_params)
    sessions = SessionTable()
    # api_open=False: Gradio's own /run/<name> refuses queued events (RouteGuard 404s it anyway).
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=ui.VIEW_CONCURRENCY, api_open=False)
    fairness.install(demo, trust_forwarded_for=args.trust_forwarded_for)  # per client, fair, bounded
    use_header_timeout()  # partial headers are cut off (uvicorn has no setting for it)
    demo.launch(server_name=args.host, server_port=args.port, share=False, show_error=False,
                max_file_size="1mb", footer_links=["api", "gradio"], theme=gr.themes.Soft(),
                css=ui.CSS, ssr_mode=False, enable_monitoring=False,
                state_session_capacity=SESSION_CAPACITY,
                app_kwargs={"middleware": [Middleware(FramePolicy), Middleware(BodyLimit),
                                           Middleware(RouteGuard, blocks=demo, sessions=sessions,
                                                      trust_forwarded_for=args.trust_forwarded_for)]},
                quiet=True, prevent_thread_lock=True)
    if getattr(demo, "server_app", None) is not None:  # absent where launch is stubbed (test_security.py)
        sessions.install(demo)
    # What is alive now lives as long as the app (torch, Gradio, the model): out of the garbage
    # collector's way, so that a full collection does not walk it all (a 0.15-0.19 s pause in
    # some request's first token, measured with scripts like benchmarks/load.py scaling's).
    gc.collect()
    gc.freeze()
    return demo


def main(argv: list[str] | None = None) -> None:
    demo = launch(argv)
    log.info("GPT-2 playground running at %s (Ctrl+C to stop)", demo.local_url)
    demo.block_thread()


if __name__ == "__main__":
    main()
