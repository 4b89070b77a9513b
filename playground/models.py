"""The models the app offers, loaded on first use and kept within a memory budget.

Many requests may ask for a model that is not loaded yet; a per-name lock makes them
wait for one load instead of each reading gigabytes. Each loaded model has its decode loop
(`gpt2.BatchedGenerator`): every generation with that model is a row of its steps. Least
recently used models are dropped when the next one would not fit; a dropped model's loop
takes no new requests and leaves once the running ones end, so dropping never breaks a request.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

import gpt2

log = logging.getLogger(__name__)

CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
# A preset whose load failed (a Hub that does not answer) is not tried again sooner: each try
# holds the page's single load slot for seconds. A local checkpoint's failure stands until
# its files change.
FAILED_LOAD_S = 30.0


def physical_memory() -> int:
    """RAM this process may use: the machine's, or less under a container's cgroup limit
    (a Space sees the host's RAM in sysconf but is killed at its own limit)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def model_bytes(config: gpt2.GPTConfig) -> int:
    """float32 parameter bytes (the LM head is tied to the embedding)."""
    return 4 * config.num_params


def load_bytes(source: str) -> int:
    """What loading `source` holds at most: a preset's float32 weights (read whole, then
    converted to its tier), a local checkpoint's files; 0 for a Hub repo (unknown before its
    config downloads: the table makes room once it is loaded)."""
    if source in gpt2.PRESETS:
        return model_bytes(gpt2.PRESETS[source])
    return sum(size for size, _ in filter(None, source_files(source)))


def local_name(path: str) -> str:
    """`local:<file or folder name>`: what clients see instead of a server path."""
    return f"local:{Path(path).name.removesuffix('.safetensors')}"


def without_server_paths(message: str, named: dict[str, str]) -> str:
    """`message` with the server's folders replaced by what a client may know: each path in
    `named` by its name, converted presets' folder by `$GPT2_WEIGHTS_DIR`, the Hugging Face
    cache by `<Hugging Face cache>`. Longest first, so a path inside another goes first."""
    from huggingface_hub import constants

    roots = {**named, str(gpt2.hub.weights_dir()): "$GPT2_WEIGHTS_DIR",
             constants.HF_HUB_CACHE: "<Hugging Face cache>"}
    spelled = {}
    for path, shown in roots.items():
        for form in {str(Path(path)), str(Path(path).resolve()), os.path.abspath(path)}:
            spelled[form] = shown
    for path in sorted(spelled, key=len, reverse=True):
        # A relative folder ("weights") only where a path continues from it, not as a word.
        pattern = (re.escape(path) + r"(?![\w.-])" if os.path.isabs(path)
                   else r"(?<![\w./-])" + re.escape(path) + r"(?=[/\\])")
        message = re.sub(pattern, lambda _, shown=spelled[path]: shown, message)
    return message


def resident_bytes(model: gpt2.GPT) -> int:
    """What a loaded model holds: its parameters and buffers (int8 weights, scales) as stored."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


BUILTIN = gpt2.BUILTIN
OFFLINE_NOTICE = ("Running the **built-in tiny model** (trained here, works offline): GPT-2's weights "
                  "are not cached and the Hugging Face Hub cannot be reached. For real GPT-2, go online "
                  "and pick it in the list, or run `python -m gpt2 download gpt2` once.")


def hub_repo(source: str) -> gpt2.hub.Repo | None:
    """`source` as a Hub repo (`org/name` or `org/name@revision`, no such local path), else None."""
    return gpt2.weights.hub_repo(source)


def offered_sources(default: str, extras: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Display name -> what `gpt2.load_model` reads: local checkpoints and Hub repos (`default`
    when it is not a preset, then `extras`) first, then the built-in model, then the presets.
    A Hub repo is offered under its id (`org/name`, `org/name@revision`), a local checkpoint
    as `local:<name>`. The API takes these names, never paths."""
    given = [source for source in dict.fromkeys([default, *extras])
             if source not in gpt2.PRESETS and source != BUILTIN]
    named = [(str(repo) if (repo := hub_repo(source)) else local_name(source), source) for source in given]
    for name, source in named:
        if hub_repo(source) is not None:  # a mistyped local path would read as one: say which it is
            log.info("offering the Hub repo %s (no local file or folder has that name)", name)
    sources = dict(named)
    if len(sources) < len(named):
        raise ValueError("two local checkpoints have the same name: "
                         f"{', '.join(name for name, _ in named)}; rename one")
    return {**sources, BUILTIN: BUILTIN, **{name: name for name in gpt2.PRESETS}}


def start_model(default: str, names: list[str]) -> tuple[str, str | None]:
    """The model the page opens on, and a one-line notice when it is not the one asked for:
    a preset that cannot be had (offline, nothing cached) gives way to the built-in model."""
    if default in gpt2.PRESETS:
        if gpt2.hub.obtainable(default):
            return default, None
        return BUILTIN, OFFLINE_NOTICE
    repo = hub_repo(default)
    if repo is not None and not gpt2.hub.obtainable_repo(repo):
        return BUILTIN, (f"Running the **built-in tiny model** (works offline): `{repo}` is not in the Hugging "
                         f"Face cache and the Hub cannot be reached. Go online, or run `python -m gpt2 "
                         f"download {repo}` once.")
    return (BUILTIN, None) if default == BUILTIN else (names[0], None)


# The tier a bare preset name runs at, from benchmarks/RESULTS.md (124M, 2-core EPYC): int8
# decodes 4.2x faster than transformers fp32 at prompt 16 (bf16 3.7x, fp32 2.1x), holds a
# third of fp32's memory, and agrees with fp32's top-1 99.4% of the time (bf16 99.7%).
# "gpt2 · fp32" is the exact model.
DEFAULT_TIER = "int8"
TIER_SEPARATOR = " · "


def with_tiers(sources: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Offer each preset and Hub repo at every precision tier: "gpt2" runs at DEFAULT_TIER,
    "gpt2 · int8" at int8, and so on (small local models run at fp32 only). Returns
    (name -> source, name -> tier)."""
    names, tiers = {}, {}
    for base, source in sources.items():
        if source not in gpt2.PRESETS and hub_repo(source) is None:
            names[base], tiers[base] = source, "fp32"
            continue
        for tier in dict.fromkeys((DEFAULT_TIER, *gpt2.TIERS)):
            name = base if tier == DEFAULT_TIER else f"{base}{TIER_SEPARATOR}{tier}"
            names[name], tiers[name] = source, tier
    return names, tiers


def tiered_name(name: str) -> tuple[str, str] | None:
    """A name a visitor may ask for when any Hub repo is allowed: `org/name[@revision]`, at
    DEFAULT_TIER, or followed by " · <tier>"; (repo source, tier), or None."""
    base, _, tier = name.partition(TIER_SEPARATOR)
    tier = tier or DEFAULT_TIER
    repo = gpt2.hub.parse_repo(base)
    if repo is None or str(repo) != base or tier not in gpt2.TIERS or gpt2.weights.preset_name(base):
        return None
    return base, tier


def precision(model: gpt2.GPT) -> str:
    """The tier a loaded model runs at, read from its weights: int8, bf16 or fp32."""
    dtypes = {t.dtype for t in model.state_dict().values()}
    return "int8" if torch.int8 in dtypes else "bf16" if torch.bfloat16 in dtypes else "fp32"


def describe(name: str, model: gpt2.GPT) -> str:
    """The status line of a loaded model (Markdown)."""
    c = model.config
    status = model.compile_status
    speed = f" · {status.summary}" if status is not None and status.done.is_set() else ""
    return (f"**{name}** ready · {precision(model)} · {c.num_params / 1e6:,.1f}M parameters · "
            f"{c.n_layer} layers × {c.n_head} heads · {c.context_length}-token context{speed}")


def source_files(source: str) -> tuple:
    """(size, modification time) of the files a load of `source` reads (a preset: its converted
    file), None for one that is missing: a failed load is remembered while these stay."""
    path = gpt2.hub.weights_dir() / f"{source}.safetensors" if source in gpt2.PRESETS else Path(source)
    files = [path / "config.json", path / "model.safetensors"] if path.is_dir() else [path]
    out = []
    for file in files:
        try:
            stat = file.stat()
            out.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def load_error_message(name: str, error: Exception) -> str:
    """Why a model could not be loaded and how to fix it, as one paragraph (plain text; `code`
    reads as Markdown). The library's message for weights it cannot download says how to fix
    that from a terminal (and how to skip the network when all is cached): only its reason is
    kept, and the page says what to do."""
    reason = str(error)
    if isinstance(error, gpt2.WeightsError) and "cannot download" in reason:
        reason = reason.split(". ", 1)[0]
    reason = reason.strip()
    reason += "" if reason.endswith((".", "!", "?")) else "."
    if name in gpt2.PRESETS:
        fix = ("connect to the internet once so the weights can download (they are cached "
               f"afterwards; `python -m gpt2 download {name}` fetches them ahead), or start the app "
               "with a local checkpoint: `python app.py --model path/to/checkpoint`. The other models "
               "in the list still work.")
    elif tiered_name(name) is not None:
        fix = ("check the repo id and revision, and that the repo holds a GPT-2 (config.json and "
               "model.safetensors); offline, run `python -m gpt2 download org/name` once while online. "
               "The other models in the list still work.")
    else:
        fix = ("replace the checkpoint with a complete one (a Hub-layout folder with config.json "
               "and model.safetensors, or a file saved by `gpt2.save_model`). The other models "
               "in the list still work.")
    return f"Could not load `{name}`. {reason} To fix: {fix}"


class Offered(list):
    """The names a table offers, as a list (the page's menu, error messages); `admit(name)`
    adds a Hub repo's name when the operator allows any repo (`--allow-hub-models`)."""

    def __init__(self, names: list[str], table: "ModelTable"):
        super().__init__(names)
        self._table = table

    def __contains__(self, name: object) -> bool:
        return list.__contains__(self, name) or (isinstance(name, str) and name in self._table.sources)

    def admit(self, name: str) -> bool:
        return self._table.admit(name)


MAX_ADMITTED = 32  # Hub repos a visitor named (--allow-hub-models) the table keeps names of


class ModelTable:
    """Thread-safe lazy table of loaded models. With `allow_hub`, any Hub repo id a visitor
    names is admitted (`admit`) and loaded like an offered one, refused before its weights
    download when its config has more than `max_params` parameters."""

    def __init__(self, sources: dict[str, str], tiers: dict[str, str] | None = None,
                 max_bytes: int | None = None, on_evict: Callable[[str], None] | None = None,
                 allow_hub: bool = False, max_params: int | None = None):
        self.sources = dict(sources)
        self.offered = list(sources)
        self.allow_hub, self.max_params = allow_hub, max_params
        self._admitted: OrderedDict[str, None] = OrderedDict()  # visitors' Hub names, oldest first
        self._tokenizers: dict[str, gpt2.Tokenizer] = {}  # source -> its tokenizer
        self.tiers = dict(tiers or {})  # name -> precision tier; absent = fp32
        self.on_evict = on_evict  # whatever else holds the model (stored runs) lets go too
        self.max_bytes = int(0.6 * physical_memory()) if max_bytes is None else max_bytes
        self._models: OrderedDict[str, gpt2.GPT] = OrderedDict()
        self._loops: dict[str, gpt2.BatchedGenerator] = {}
        self._name_locks = {name: threading.Lock() for name in sources}
        self._lock = threading.Lock()
        self._loading: dict[str, int] = {}  # name -> bytes reserved for its load in progress
        self._room = threading.Condition(self._lock)  # a load ended: reservations may fit now
        self._failed: dict[str, tuple[float, tuple, str]] = {}  # name -> (when, source_files, message)

    @property
    def names(self) -> Offered:
        return Offered(self.offered, self)

    def admit(self, name: str) -> bool:
        """With `allow_hub`: make a Hub repo's name (`org/name[@revision][ · tier]`) loadable;
        whether it now is. The oldest admitted names not loaded are forgotten beyond MAX_ADMITTED."""
        if name in self.sources:
            return True
        parsed = tiered_name(name) if self.allow_hub else None
        if parsed is None:
            return False
        with self._lock:
            self.sources[name], self.tiers[name] = parsed
            self._name_locks.setdefault(name, threading.Lock())
            self._admitted[name] = None
            for old in list(self._admitted)[:-MAX_ADMITTED]:
                if old not in self._models and not self._name_locks[old].locked():
                    del self._admitted[old], self.sources[old], self.tiers[old], self._name_locks[old]
                    self._failed.pop(old, None)
        return True

    def _repo(self, name: str) -> gpt2.hub.Repo | None:
        """The Hub repo `name` loads, None for a preset, the built-in model or a local checkpoint.
        A name a visitor had admitted is a repo whatever the server's files: never a path."""
        if name in self._admitted:
            return gpt2.hub.parse_repo(self.sources[name])
        return hub_repo(self.sources[name])

    def _load_bytes(self, name: str) -> int:
        """`load_bytes` of `name`'s source; for a Hub repo, its float32 weights as its config
        gives them (the config is in the cache once its tokenizer was read), else 0."""
        repo = self._repo(name)
        if repo is None:
            return load_bytes(self.sources[name])
        folder = gpt2.hub.cached_snapshot(repo.repo_id, repo.revision, weights=False)
        try:
            return model_bytes(gpt2.GPTConfig.from_hf(json.loads((folder / "config.json").read_text())))
        except (OSError, TypeError, ValueError, KeyError, RecursionError):
            return 0

    def _cap(self, name: str) -> int | None:
        """The size cap of `name`'s load: `max_params` for a repo a visitor named, none for the
        operator's own list."""
        return self.max_params if name in self._admitted else None

    def tokenizer(self, name: str) -> gpt2.Tokenizer:
        """The model's own tokenizer (GPT-2's for the presets, the built-in model and checkpoints
        without tokenizer files), read when the model first loads."""
        source = self.sources[name]
        if source not in self._tokenizers:
            self._tokenizers[source] = self._read_tokenizer(source, self._repo(name), self._cap(name))
        return self._tokenizers[source]

    @staticmethod
    def _read_tokenizer(source: str, repo: gpt2.hub.Repo | None, max_params: int | None) -> gpt2.Tokenizer:
        if source in gpt2.PRESETS or source == BUILTIN:
            return gpt2.tokenizer.gpt2_tokenizer()
        try:
            folder = gpt2.weights.download_repo(repo, max_params, weights=False) if repo else source
            return gpt2.load_tokenizer(folder)
        except gpt2.WeightsError as error:
            named = {} if repo else {source: local_name(source)}
            raise gpt2.WeightsError(without_server_paths(str(error), named)) from None

    def loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def get(self, name: str) -> gpt2.GPT:
        """The model, loading it if needed. Raises gpt2.WeightsError with a readable reason."""
        return self.loop(name).model

    def loop(self, name: str) -> gpt2.BatchedGenerator:
        """The model's decode loop (`.model` is the model), loading it if needed."""
        if name not in self.sources:
            raise KeyError(f"unknown model {name!r}")
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._loops[name]
        self._raise_if_failed(name)
        with self._name_locks[name]:  # one load per name; others wait for it
            with self._lock:
                if name in self._models:
                    return self._loops[name]
            self._raise_if_failed(name)  # the load this one waited for failed
            source, tier = self.sources[name], self.tiers.get(name, "fp32")
            try:
                self.tokenizer(name)  # first (small files; a repo's config too): every view of its ids reads it
                self._reserve(name, self._load_bytes(name))  # before the load: concurrent loads stay within budget
                model = self._load(name, source, tier, self._repo(name), self._cap(name))
            except gpt2.WeightsError as error:
                self._failed[name] = (time.monotonic(), source_files(source), str(error))
                raise
            finally:
                with self._room:
                    self._loading.pop(name, None)
                    self._room.notify_all()
            self._failed.pop(name, None)
            loop = gpt2.BatchedGenerator(model)
            with self._lock:
                self._models[name], self._loops[name] = model, loop
            self._make_room(0, keep=name)  # a Hub repo's size is known only now
            return loop

    def _reserve(self, name: str, nbytes: int) -> None:
        """Room for a load of `nbytes` (what reading it takes at most) beside the loaded models
        and the other loads in progress: least recently used models go first, then it waits
        for the other loads to end (one alone always goes ahead, as a model larger than the
        budget still loads)."""
        while True:
            self._make_room(nbytes)
            with self._room:
                loading = sum(self._loading.values())
                if not self._loading or self._used() + loading + nbytes <= self.max_bytes:
                    self._loading[name] = nbytes
                    return
                self._room.wait(timeout=1.0)

    def _used(self) -> int:
        return sum(resident_bytes(m) for m in self._models.values())

    def _raise_if_failed(self, name: str) -> None:
        """The error of `name`'s last load, again, while it stands (see FAILED_LOAD_S)."""
        failed = self._failed.get(name)
        if failed is None:
            return
        when, files, message = failed
        source = self.sources[name]
        remote = source in gpt2.PRESETS or self._repo(name) is not None  # may come back: tried again
        fresh = not remote or time.monotonic() - when < FAILED_LOAD_S
        if fresh and source_files(source) == files:
            raise gpt2.WeightsError(message)

    @staticmethod
    def _load(name: str, source: str, tier: str, repo: gpt2.hub.Repo | None = None,
              max_params: int | None = None) -> gpt2.GPT:
        """Read one checkpoint; its errors name the model, never a server path. A download
        waits on this thread; reading and converting the weights is compute, so it runs on the
        compute thread (between decode steps: other users' generations pause, not stall). A Hub
        repo's config and safetensors header are checked (and its size against `max_params`)
        before its weights download."""
        log.info("loading model %s", name)
        try:
            if source in gpt2.PRESETS and not (gpt2.hub.weights_dir() / f"{source}.safetensors").is_file():
                gpt2.hub.download(source)  # the Hub cache then holds it
            read = str(gpt2.weights.download_repo(repo, max_params)) if repo is not None else source
            return gpt2.compute.run(lambda: gpt2.load_model(read, **gpt2.TIERS[tier]))
        except gpt2.WeightsError as error:
            message = without_server_paths(str(error), {} if source in gpt2.PRESETS or repo else {source: name})
        raise gpt2.WeightsError(message)  # outside the except: no traceback chain to the loader

    def _make_room(self, needed: int, keep: str | None = None) -> None:
        """Drop least recently used models (never `keep`) until `needed` more bytes fit."""
        evicted, retired = [], []
        with self._lock:
            for name in list(self._models):
                loading = sum(n for other, n in self._loading.items() if other != keep)
                if self._used() + loading + needed <= self.max_bytes:
                    break
                if name != keep:
                    del self._models[name]
                    evicted.append(name)
                    retired.append(self._loops.pop(name))
        for loop in retired:
            loop.retire()
        for name in evicted:
            if self.on_evict is not None:
                self.on_evict(name)
