"""The Hugging Face Hub: where a preset's or a repo's files come from, and how long we wait for them.

A repo is named `org/name`, or `org/name@revision` (a branch, a tag, a commit or `refs/pr/N`).
Weights of a released checkpoint do not change, so a cached copy is used without asking the
Hub. Otherwise the Hub is asked first whether it answers at all (an HTTP request bounded to a
few seconds: a host that accepts connections but never replies counts as unreachable), and a
download that then receives nothing for `STALL_SECONDS` is reported as stuck instead of
holding its caller for minutes of huggingface_hub's retries.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HUB_ORG = "openai-community"
PROBE_SECONDS = 3.0
STALL_SECONDS = 20.0  # no byte received for this long: the download is stuck


class WeightsError(Exception):
    """A checkpoint could not be found, read, or matched to the model."""


def weights_dir() -> Path:
    """Where converted checkpoints live: $GPT2_WEIGHTS_DIR, else ./weights."""
    return Path(os.environ.get("GPT2_WEIGHTS_DIR", "weights"))


# A repo id as the Hub spells one (huggingface_hub's validate_repo_id: letters, digits, "-",
# "_", "." up to 96 characters each side, no "--" or ".."), with an optional revision.
REPO_PATTERN = re.compile(r"(?P<repo_id>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})"
                          r"(?:@(?P<revision>[A-Za-z0-9_.][A-Za-z0-9_./-]{0,127}))?")
WEIGHTS_FILE = "model.safetensors"
# A repo's tokenizer: what `gpt2.hf_tokenizer` reads (byte-level BPE and its special tokens), and
# the files of other kinds it refuses by name. Each is small; the ones the repo has are fetched.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
                   "tokenizer_config.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.txt")
OWN_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                       "sentencepiece.bpe.model", "vocab.txt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class Repo:
    """A Hub model repo, at `revision` (None: its main branch)."""
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo(text: str) -> Repo | None:
    """`org/name` or `org/name@revision` as a Repo; None for anything else (a preset's bare
    name, a path with more parts, ".." anywhere). Callers try a local path of that name first."""
    match = REPO_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None or ".." in text or "--" in match["repo_id"] or match["repo_id"].endswith((".", ".git")):
        return None
    revision = match["revision"]
    if revision is not None and (revision.endswith(("/", ".", ".lock")) or "//" in revision):
        return None
    return Repo(match["repo_id"], revision)


def conversion_hint(pickle_name: str, repo_id: str | None = None) -> str:
    """Why a pickle checkpoint is not read, and how to turn it into safetensors."""
    via_pr = (f" The Hub's converter (https://huggingface.co/spaces/safetensors/convert) opens a pull "
              f"request adding model.safetensors to the repo; then load `{repo_id}@refs/pr/N` (N: that "
              f"pull request's number).") if repo_id else ""
    return (f"pickle checkpoints are never loaded here (loading one can run any code); convert "
            f"{pickle_name} to safetensors first.{via_pr} Or, on a machine where you trust the file, with "
            "transformers: `python -c \"from transformers import GPT2LMHeadModel; GPT2LMHeadModel."
            f"from_pretrained('{repo_id or 'FOLDER'}').save_pretrained('converted')\"` (it writes "
            "converted/model.safetensors), then load the folder `converted`.")


def pickle_refusal(repo: Repo, pickles: list[str]) -> WeightsError:
    """A repo whose weights are only a pickle: never read here, and how to convert it."""
    return WeightsError(f"{repo}: its weights are only {pickles[0]}, a pickle checkpoint: "
                        + conversion_hint(pickles[0], repo.repo_id))


def missing_weights(repo: Repo, files: set[str]) -> WeightsError:
    """Why a repo without model.safetensors cannot be loaded."""
    if f"{WEIGHTS_FILE}.index.json" in files or any(re.fullmatch(r"model-\d+-of-\d+\.safetensors", f) for f in files):
        return WeightsError(f"{repo}: its weights are split over several safetensors files (sharded); only "
                            "a single model.safetensors is read here")
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES) and "/" not in f)
    if pickles:
        return pickle_refusal(repo, pickles)
    return WeightsError(f"{repo}: the repo has no {WEIGHTS_FILE} (and no config.json beside it?): not a "
                        "GPT-2 checkpoint this can load")


# vet(config.json's fields, the weights file's tensors {key: (dtype, shape)} or None when only
# the config is fetched, whether the repo has its own tokenizer): raises WeightsError before a
# weight is downloaded (gpt2.weights supplies it: config fields, shapes, dtypes, a size cap).
Vet = Callable[[dict, "dict[str, tuple[str, tuple[int, ...]]] | None", bool], None]


def fetch_repo(repo: Repo, vet: Vet | None = None, weights: bool = True,
               stall_seconds: float = STALL_SECONDS) -> Path:
    """The snapshot folder of `repo` in the Hub cache, holding config.json, model.safetensors
    (unless `weights` is False) and the repo's tokenizer files. A cached copy is used without
    asking the Hub (still `vet`ted). Otherwise the Hub is probed (a few seconds), the repo's
    file list, config.json and the safetensors header (a range request: no weights) are
    fetched and `vet`ted, and only then are the tokenizer files and the weights downloaded,
    under the same stall watch as a preset's. Only safetensors is ever fetched: a repo with
    only pickles is refused with how to convert it."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = cached_snapshot(repo.repo_id, repo.revision, weights=weights)
    if cached is not None:
        if vet is not None:
            own = any((cached / name).is_file() for name in OWN_TOKENIZER_FILES)
            vet(_read_json(cached / "config.json", repo), None, own)
        return cached
    config = try_to_load_from_cache(repo.repo_id, "config.json", revision=repo.revision)
    if isinstance(config, str):  # config cached, weights not: a pickle beside it says why
        pickles = sorted(p.name for p in Path(config).parent.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise pickle_refusal(repo, pickles)
    unreachable = WeightsError(
        f"{repo}: cannot download it and it is not in the Hugging Face cache (offline, or the Hub is "
        f"unreachable). Go online and run `python -m gpt2 download {repo}` once. Set HF_HUB_OFFLINE=1 "
        "to skip the network when everything is cached.")
    if constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT):
        raise unreachable

    def fetch(args: dict, alive: Callable[[], None]) -> Path:
        from huggingface_hub import HfApi, get_safetensors_metadata, hf_hub_download

        info = HfApi(endpoint=constants.ENDPOINT).model_info(repo.repo_id, revision=repo.revision,
                                                             timeout=stall_seconds)
        files = {sibling.rfilename for sibling in info.siblings or ()}
        alive()
        if "config.json" not in files or WEIGHTS_FILE not in files:
            raise missing_weights(repo, files)
        folder = Path(hf_hub_download(repo.repo_id, "config.json", revision=repo.revision, **args)).parent
        alive()
        tensors = None
        if weights:
            header = get_safetensors_metadata(repo.repo_id, revision=repo.revision, timeout=stall_seconds)
            tensors = {key: (t.dtype, tuple(t.shape))
                       for key, t in header.files_metadata[WEIGHTS_FILE].tensors.items()}
            alive()
        if vet is not None:
            vet(_read_json(folder / "config.json", repo), tensors, bool(files & set(OWN_TOKENIZER_FILES)))
        for name in TOKENIZER_FILES:
            if name in files:
                hf_hub_download(repo.repo_id, name, revision=repo.revision, **args)
                alive()
        if weights:
            hf_hub_download(repo.repo_id, WEIGHTS_FILE, revision=repo.revision, **args)
        return folder

    return _watched(str(repo), stall_seconds, unreachable, fetch)


def _read_json(path: Path, repo: Repo) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise WeightsError(f"{repo}: config.json is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{repo}: config.json is not a JSON object")
    return data


def download(name: str, stall_seconds: float = STALL_SECONDS) -> Path:
    """`config.json` + `model.safetensors` of preset `name` in the Hub cache; return the folder."""
    from huggingface_hub import constants

    repo_id = f"{HUB_ORG}/{name}"
    cached = cached_snapshot(repo_id)
    if cached is not None:
        return cached
    unreachable = WeightsError(
        f"{repo_id}: cannot download the weights and they are not in the Hugging Face cache "
        f"(offline, or the Hub is unreachable). Go online and run `python -m gpt2 download "
        f"{name}` once, or put a converted file at {weights_dir() / (name + '.safetensors')}. "
        "Set HF_HUB_OFFLINE=1 to skip the network when everything is cached.")
    if constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT):
        raise unreachable
    def fetch(args: dict, alive: Callable[[], None]) -> Path:
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo_id, "config.json", **args)
        return Path(hf_hub_download(repo_id, "model.safetensors", **args)).parent

    return _watched(repo_id, stall_seconds, unreachable, fetch)


def _watched(repo_id: str, stall_seconds: float, unreachable: WeightsError,
             steps: Callable[[dict, Callable[[], None]], Path]) -> Path:
    """Download on a helper thread while this one watches its progress bars: huggingface_hub
    has no overall deadline, and its retries of a silent server add up to minutes. `steps(args,
    alive)` does the work: `args` are hf_hub_download's keywords (progress bars that report each
    chunk), `alive()` says that a step that reports no progress (a file list, a header) ended."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError
    from tqdm.auto import tqdm

    last_progress = [time.monotonic()]

    class Bar(tqdm):  # huggingface_hub's progress bars, reporting each chunk received
        def update(self, n: float | None = 1) -> bool | None:
            last_progress[0] = time.monotonic()
            return super().update(n)

    outcome: list = []

    def alive() -> None:
        last_progress[0] = time.monotonic()

    def fetch() -> None:
        try:
            args = dict(endpoint=constants.ENDPOINT, etag_timeout=stall_seconds, tqdm_class=Bar)
            outcome.append(steps(args, alive))
        except Exception as error:  # noqa: BLE001 - handed to the waiting thread
            outcome.append(error)

    # A daemon: a stuck download must not keep the process alive; huggingface_hub's own
    # timeouts end it eventually.
    worker = threading.Thread(target=fetch, name=f"download {repo_id}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.5)
        if worker.is_alive() and time.monotonic() - last_progress[0] > stall_seconds:
            raise WeightsError(f"{repo_id}: the download is stuck: the Hugging Face Hub sent nothing "
                               f"for {stall_seconds:g} s. Try again later.")
    result = outcome[0]
    if isinstance(result, LocalEntryNotFoundError):
        raise unreachable from None
    if isinstance(result, WeightsError):
        raise result
    if _not_found(result):
        raise WeightsError(f"{repo_id}: no such model repo or revision on the Hub (or it is private or "
                           f"gated): {type(result).__name__}") from None
    if isinstance(result, Exception):  # HTTP errors and timeouts, disk full, permission denied
        raise WeightsError(f"{repo_id}: download failed ({type(result).__name__}: {result})") from None
    return result


def obtainable(name: str) -> bool:
    """Whether preset `name` can be loaded now: converted under `weights_dir()`, in the Hub
    cache, or the Hub answering (a quick probe, no download)."""
    from huggingface_hub import constants

    if (weights_dir() / f"{name}.safetensors").is_file() or cached_snapshot(f"{HUB_ORG}/{name}"):
        return True
    return not constants.HF_HUB_OFFLINE and reachable(constants.ENDPOINT)


def _not_found(error: object) -> bool:
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError, \
        RevisionNotFoundError

    return isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, GatedRepoError))


def obtainable_repo(repo: Repo) -> bool:
    """Whether `repo` can be loaded now: in the Hub cache, or the Hub answering (a quick probe)."""
    from huggingface_hub import constants

    if cached_snapshot(repo.repo_id, repo.revision):
        return True
    return not constants.HF_HUB_OFFLINE and reachable(constants.ENDPOINT)


def cached_snapshot(repo_id: str, revision: str | None = None, weights: bool = True) -> Path | None:
    """The cached snapshot folder holding config.json (and model.safetensors with `weights`)."""
    from huggingface_hub import try_to_load_from_cache

    names = ("config.json", WEIGHTS_FILE) if weights else ("config.json",)
    cached = [try_to_load_from_cache(repo_id, f, revision=revision) for f in names]
    return Path(cached[-1]).parent if all(isinstance(path, str) for path in cached) else None


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether `url` answers an HTTP request (any status) within about `timeout` seconds."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):  # refused, unresolvable, silent (timeout), malformed
        return False
    return True
