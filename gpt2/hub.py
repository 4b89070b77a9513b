"""The Hugging Face Hub: where a preset's files come from, and how long we wait for them.

Weights of a released checkpoint do not change, so a cached copy is used without asking the
Hub. Otherwise the Hub is asked first whether it answers at all (an HTTP request bounded to a
few seconds: a host that accepts connections but never replies counts as unreachable), and a
download that then receives nothing for `STALL_SECONDS` is reported as stuck instead of
holding its caller for minutes of huggingface_hub's retries.
"""
from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HUB_ORG = "openai-community"
PROBE_SECONDS = 3.0
STALL_SECONDS = 20.0  # no byte received for this long: the download is stuck


class WeightsError(Exception):
    """A checkpoint could not be found, read, or matched to the model."""


def weights_dir() -> Path:
    """Where converted checkpoints live: $GPT2_WEIGHTS_DIR, else ./weights."""
    return Path(os.environ.get("GPT2_WEIGHTS_DIR", "weights"))


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
    return _watched(repo_id, stall_seconds, unreachable)


def _watched(repo_id: str, stall_seconds: float, unreachable: WeightsError) -> Path:
    """Download on a helper thread while this one watches its progress bars: huggingface_hub
    has no overall deadline, and its retries of a silent server add up to minutes."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from tqdm.auto import tqdm

    last_progress = [time.monotonic()]

    class Bar(tqdm):  # huggingface_hub's progress bars, reporting each chunk received
        def update(self, n: float | None = 1) -> bool | None:
            last_progress[0] = time.monotonic()
            return super().update(n)

    outcome: list = []

    def fetch() -> None:
        try:
            args = dict(endpoint=constants.ENDPOINT, etag_timeout=stall_seconds, tqdm_class=Bar)
            hf_hub_download(repo_id, "config.json", **args)
            folder = Path(hf_hub_download(repo_id, "model.safetensors", **args)).parent
            outcome.append(folder)
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
    if isinstance(result, OSError):  # HTTP errors, disk full, permission denied
        raise WeightsError(f"{repo_id}: download failed ({type(result).__name__}: {result})") from None
    if isinstance(result, Exception):
        raise result
    return result


def obtainable(name: str) -> bool:
    """Whether preset `name` can be loaded now: converted under `weights_dir()`, in the Hub
    cache, or the Hub answering (a quick probe, no download)."""
    from huggingface_hub import constants

    if (weights_dir() / f"{name}.safetensors").is_file() or cached_snapshot(f"{HUB_ORG}/{name}"):
        return True
    return not constants.HF_HUB_OFFLINE and reachable(constants.ENDPOINT)


def cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = [try_to_load_from_cache(repo_id, f) for f in ("config.json", "model.safetensors")]
    return Path(cached[1]).parent if all(isinstance(path, str) for path in cached) else None


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether `url` answers an HTTP request (any status) within about `timeout` seconds."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):  # refused, unresolvable, silent (timeout), malformed
        return False
    return True
