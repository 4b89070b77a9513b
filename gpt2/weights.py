"""Checkpoints in, checkpoints out: the Hugging Face Hub's GPT-2 files and our own format.

Only safetensors is read (no pickle anywhere). Hub checkpoints store Conv1D weights as
[in, out]; our Linear layers want [out, in], so those four matrices are transposed.
Every failure raises `WeightsError` naming the file and, where it applies, the key/shape.
"""
from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .config import PRESETS, GPTConfig
from .fast.kernels import compile_kernels
from .hub import HUB_ORG, Repo, WeightsError, download, fetch_repo, parse_repo, conversion_hint, weights_dir
from .model import GPT
from .fast.int8 import Int8Head
from .tiers import quantize_block, set_stream_dtype, stream_dtype
from .hf_tokenizer import has_tokenizer_files, read_tokenizer_dir
from .tokenizer import EOT_ID, Tokenizer, gpt2_tokenizer

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not parameters
CONFIG_KEY = "gpt2_config"  # safetensors metadata key of our own format
BUILTIN = "builtin"  # the small model shipped with the package (docs/BUILTIN_MODEL.md)
BUILTIN_FILE = Path(__file__).resolve().parent / "data" / "builtin-model.safetensors"



def preset_name(source: str) -> str | None:
    name = source.removeprefix(f"{HUB_ORG}/")
    return name if name in PRESETS else None


# -- reading ------------------------------------------------------------------------------
# A checkpoint is checked against its own table of contents (the safetensors header: keys,
# shapes, dtypes; safetensors refuses a header that does not cover the file exactly) before
# a tensor is read or a model built, so a config claiming more than the file holds costs
# nothing, and a failed load leaves no tensors behind.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class Header:
    """What a safetensors file says it holds, read without its tensor data."""
    path: Path
    shapes: dict[str, tuple[int, ...]]  # stored key -> shape
    dtypes: dict[str, str]  # stored key -> safetensors dtype name ("F32", "BF16", ...)
    metadata: dict[str, str]


def read_header(path: Path) -> Header:
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        with safe_open(path, framework="pt") as f:
            slices = {key: f.get_slice(key) for key in f.keys()}
            return Header(path, {k: tuple(s.get_shape()) for k, s in slices.items()},
                          {k: s.get_dtype() for k, s in slices.items()}, f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file, it may be truncated or "
                           f"corrupt ({e}). Delete it and download or convert it again.") from None


def our_key(stored: str, hub_layout: bool, tied: bool = True) -> str | None:
    """Our state-dict key for a stored key, or None for what we do not load: the Hub's
    `lm_head.weight` where the head is `tied` to wte, and its causal-mask buffers (built on
    the fly)."""
    if not hub_layout:
        return stored
    key = stored.removeprefix("transformer.")
    return None if (tied and key == "lm_head.weight") or key.endswith(HF_BUFFERS) else key


def expected_shapes(config: GPTConfig, layers: range | None = None) -> dict[str, tuple[int, ...]]:
    """`GPT(config).state_dict()`'s shapes, by arithmetic: no module is built (a config
    may claim a model far larger than memory). `layers` limits the blocks listed."""
    V, C, T, inner = config.vocab_size, config.n_embd, config.context_length, config.mlp_width
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    block = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (3 * C, C),
             "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
             "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (inner, C),
             "mlp.c_fc.bias": (inner,), "mlp.c_proj.weight": (C, inner), "mlp.c_proj.bias": (C,)}
    for i in range(config.n_layer) if layers is None else layers:
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def check_header(header: Header, config: GPTConfig, hub_layout: bool, own_tokenizer: bool = False) -> dict[str, str]:
    """Raise WeightsError unless the file holds exactly `config`'s tensors, as floats; return
    {our key: stored key} for the tensors to read. Without a tokenizer of its own
    (`own_tokenizer`), the model must take GPT-2's ids."""
    path = header.path
    if not own_tokenizer and config.vocab_size <= EOT_ID:
        raise WeightsError(f"{path}: vocab_size={config.vocab_size} is smaller than GPT-2's "
                           f"tokenizer, whose ids reach {EOT_ID}")
    stored = {ours: key for key in header.shapes
              if (ours := our_key(key, hub_layout, config.tie_word_embeddings)) is not None}
    shapes = {ours: tuple(header.shapes[key][::-1]) if hub_layout and ours.endswith(CONV1D_WEIGHTS)
              else header.shapes[key] for ours, key in stored.items()}
    # The file's block count bounds what is listed next, however many blocks the config claims.
    file_layers = {int(k.split(".")[1]) for k in shapes if k.split(".")[0] == "h" and k.split(".")[1].isdigit()}
    first_missing = min(set(range(min(config.n_layer, len(file_layers) + 1))) - file_layers, default=None)
    if first_missing is not None:
        key = min(expected_shapes(config, range(first_missing, first_missing + 1)))
        raise WeightsError(f"{path}: missing key {key!r} (the config says n_layer={config.n_layer}, "
                           f"the file holds {len(file_layers)} blocks)")
    expected = expected_shapes(config)
    missing, extra = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected.keys())
    if missing:
        raise WeightsError(f"{path}: missing key {missing[0]!r}" +
                           (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise WeightsError(f"{path}: unexpected key {extra[0]!r}" +
                           (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for key, want in expected.items():
        if shapes[key] != want:
            raise WeightsError(f"{path}: {key!r} has shape {shapes[key]}, expected {want} for {config}")
        if header.dtypes[stored[key]] not in FLOAT_DTYPES:
            raise WeightsError(f"{path}: {key!r} has dtype {header.dtypes[stored[key]]}, expected floats")
    return stored


def read_tensors(header: Header, stored: dict[str, str], hub_layout: bool,
                 rows: slice | None = None) -> dict[str, Tensor]:
    """The checked tensors of `stored` ({our key: stored key}) in fp32, Conv1D weights
    transposed to [out, in]; with `rows`, only those rows of each (for 2-D tensors not
    transposed). Weights holding NaN or infinity are refused. The file is mapped only during
    the call, so a caller reading a checkpoint a part at a time holds one part's pages. On
    any failure the dict is emptied before the error leaves: a traceback keeps this frame
    alive (in a server, until the garbage collector runs), and with it whatever the frame
    still holds."""
    state: dict[str, Tensor] = {}
    try:
        with safe_open(header.path, framework="pt") as f:
            for ours, key in stored.items():
                stored_tensor = f.get_tensor(key) if rows is None else f.get_slice(key)[rows]
                if hub_layout and ours.endswith(CONV1D_WEIGHTS):
                    stored_tensor = stored_tensor.t()
                # A copy of our own: the tensor safetensors returns is backed by the file's
                # mapping, which one kept tensor would keep whole, in our RSS, after the call.
                state[ours] = stored_tensor.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                del stored_tensor
                if not bool(torch.isfinite(state[ours]).all()):
                    raise WeightsError(f"{header.path}: {ours!r} holds NaN or infinite values; "
                                       "the checkpoint is damaged")
    except (SafetensorError, OSError, RuntimeError) as e:
        state.clear()
        raise WeightsError(f"{header.path}: could not read its tensors ({e})") from None
    except BaseException:
        state.clear()
        raise
    return state


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint whose tensors are read when asked for, a part at a time."""
    config: GPTConfig
    header: Header
    stored: dict[str, str]  # our key -> stored key
    hub_layout: bool

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """{our key without `prefix`: fp32 tensor} for the keys under `prefix`."""
        part = {k: v for k, v in self.stored.items() if k.startswith(prefix)}
        return {k.removeprefix(prefix): t for k, t in read_tensors(self.header, part, self.hub_layout).items()}

    def embedding(self, dtype: torch.dtype, key: str = "wte.weight", chunk: int = 2048) -> Tensor:
        """The token embedding (or, with `key="lm_head.weight"`, an untied LM head) [vocab, C]
        in `dtype`, read `chunk` rows at a time: a bf16 tier never holds its fp32 copy (154 MB
        at 124M)."""
        part = {key: self.stored[key]}
        weight = torch.empty(self.config.vocab_size, self.config.n_embd, dtype=dtype)
        for start in range(0, weight.size(0), chunk):
            rows = read_tensors(self.header, part, self.hub_layout, slice(start, start + chunk))
            weight[start:start + chunk] = rows.pop(key)
            release_freed_memory()
        return weight


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; no-op elsewhere). A
    load frees each block's fp32 tensors once converted, and glibc would keep them: at 124M
    int8 the blocks took 290 MB of RSS instead of 85."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _config(make: Callable[[], GPTConfig], source: Path, what: str) -> GPTConfig:
    try:
        return make()
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # JSON nested too deep
        raise WeightsError(f"{source}: {what} ({type(e).__name__}: {e})") from None


def read_hf_dir(directory: Path) -> Checkpoint:
    """A Hub-layout folder (`config.json` + `model.safetensors`), checked."""
    config_file, weights_file = directory / "config.json", directory / "model.safetensors"
    if not weights_file.is_file():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        hint = f" Found {pickles[0]}: {conversion_hint(pickles[0])}" if pickles else ""
        raise WeightsError(f"{weights_file}: file not found.{hint}")
    if not config_file.is_file():
        raise WeightsError(f"{config_file}: file not found (a Hub checkpoint folder needs "
                           "config.json beside model.safetensors)")
    config = _config(lambda: GPTConfig.from_hf(json.loads(config_file.read_text())), config_file,
                     "not a GPT-2 config")
    header = read_header(weights_file)
    stored = check_header(header, config, hub_layout=True, own_tokenizer=has_tokenizer_files(directory))
    return Checkpoint(config, header, stored, hub_layout=True)


def read_file(path: Path) -> Checkpoint:
    """Our own format: one safetensors file, config in its metadata."""
    header = read_header(path)
    if CONFIG_KEY not in header.metadata:
        if (path.parent / "config.json").is_file() and path.name == "model.safetensors":
            return read_hf_dir(path.parent)
        raise WeightsError(f"{path}: no '{CONFIG_KEY}' metadata, so not a checkpoint saved by "
                           "gpt2.save_model; for a Hub checkpoint pass its folder (config.json + "
                           "model.safetensors)")
    config = _config(lambda: GPTConfig(**json.loads(header.metadata[CONFIG_KEY])), path,
                     f"bad '{CONFIG_KEY}' metadata")
    return Checkpoint(config, header, check_header(header, config, hub_layout=False), hub_layout=False)


# -- public API ---------------------------------------------------------------------------
def save_model(model: GPT, path: str | Path) -> Path:
    """Write our format: safetensors, config in metadata, tied head stored once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={CONFIG_KEY: json.dumps(model.config.to_dict())})
    return path


def read_checkpoint(source: str | Path, max_params: int | None = None) -> Checkpoint:
    """Resolve `source` (preset, "builtin", Hub-layout folder, our .safetensors, or a Hub repo
    `org/name[@revision]`) to its checked checkpoint (no tensor read yet). `max_params`: a
    Hub repo with more parameters is refused before its weights are downloaded."""
    if str(source) == BUILTIN:
        return read_file(BUILTIN_FILE)
    name = preset_name(str(source))
    if name is not None:
        converted = weights_dir() / f"{name}.safetensors"
        return read_file(converted) if converted.is_file() else read_hf_dir(download(name))
    path = Path(source)
    if path.is_dir():
        return read_hf_dir(path)
    if path.is_file():
        return read_file(path)
    repo = hub_repo(source)
    if repo is not None:
        return read_hf_dir(download_repo(repo, max_params=max_params))
    raise unknown_source(source)


def hub_repo(source: str | Path) -> Repo | None:
    """`source` as a Hub repo (`org/name` or `org/name@revision`) when it is no local file or
    folder and no preset; else None."""
    text = str(source)
    if isinstance(source, Path) or text == BUILTIN or preset_name(text) is not None or Path(text).exists():
        return None
    if text.endswith((".safetensors", ".json", ".bin", ".pt", ".pth")):  # a file that is not there
        return None
    return parse_repo(text)


def download_repo(repo: Repo | str, max_params: int | None = None, weights: bool = True) -> Path:
    """The Hub cache's snapshot folder of `repo` (downloaded when not cached), checked before
    any weight is fetched: config.json's fields (a GPT-2 this computes), the safetensors
    header against it (every key, shape and dtype), and, with `max_params`, its size."""
    if isinstance(repo, str):
        parsed = parse_repo(repo)
        if parsed is None:
            raise WeightsError(f"{repo}: not a Hub repo id (org/name or org/name@revision)")
        repo = parsed

    def vet(hf: dict, tensors: dict[str, tuple[str, tuple[int, ...]]] | None, own_tokenizer: bool) -> None:
        config = _config(lambda: GPTConfig.from_hf(hf), Path(f"{repo}/config.json"), "not a GPT-2 config")
        if max_params is not None and config.num_params > max_params:
            raise WeightsError(f"{repo}: {config.num_params:,} parameters, more than the {max_params:,} "
                               "allowed here (max_params)")
        if tensors is not None:  # the weights' table of contents, read before the weights
            header = Header(Path(f"{repo}/model.safetensors"), {k: shape for k, (_, shape) in tensors.items()},
                            {k: dtype for k, (dtype, _) in tensors.items()}, {})
            check_header(header, config, hub_layout=True, own_tokenizer=own_tokenizer)

    return fetch_repo(repo, vet, weights=weights)


def unknown_source(source: str | Path) -> WeightsError:
    return WeightsError(f"{source}: not a preset ({', '.join(PRESETS)}), not {BUILTIN!r}, not a Hub repo id "
                        "(org/name or org/name@revision), and no such file or folder")


def load_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer of `source` (what `load_model` takes): a Hub-layout folder's own byte-level
    BPE (tokenizer.json, or vocab.json + merges.txt), else GPT-2's (the presets, "builtin",
    our own files, a folder without tokenizer files). WeightsError for a tokenizer of another
    kind (SentencePiece, WordPiece), naming its file."""
    path = Path(source)
    if str(source) == BUILTIN or preset_name(str(source)) is not None:
        return gpt2_tokenizer()
    if path.is_file() and path.name == "model.safetensors" and (path.parent / "config.json").is_file():
        path = path.parent  # a Hub folder's weights, as `read_file` takes them
    if path.is_dir():
        return read_tokenizer_dir(path) or gpt2_tokenizer()
    if path.is_file():
        return gpt2_tokenizer()
    repo = hub_repo(source)
    if repo is not None:  # the repo's files (its weights not needed): cached, else fetched
        return read_tokenizer_dir(download_repo(repo, weights=False)) or gpt2_tokenizer()
    raise unknown_source(source)


def load_model(source: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, quantize: str | None = None,
               compile: bool = True, max_params: int | None = None) -> GPT:
    """A ready-to-run model in eval mode from a preset name, "builtin", a Hub folder, our file,
    or a Hub repo id `org/name[@revision]` (its config.json + model.safetensors through
    huggingface_hub's cache; `max_params` refuses a larger repo before its weights download).

    `dtype=torch.bfloat16` halves the bytes read per decoded token; `quantize="int8"` quarters
    the blocks' (weight-only int8; `dtype` is then ignored). Both keep the logits fp32, and
    compute in bf16 where the CPU has bf16 dot products, else in fp32. See `gpt2.tiers`.
    `compile` (CPU only) builds the decode kernels of `gpt2.fast.kernels` in a background
    thread; the model is usable at once and speeds up when `model.compile_status` is ready.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be None, torch.float32 or torch.bfloat16, got {dtype!r}")
    tier = "int8" if quantize == "int8" else "bf16" if dtype == torch.bfloat16 else "fp32"
    model = _build(read_checkpoint(source, max_params), tier)
    if tier != "fp32":
        set_stream_dtype(model, stream_dtype(device))
    model = model.to(device)
    model.eval()
    if compile and model.device.type == "cpu":
        compile_kernels(model)
    return model


def convert(name: str) -> Path:
    """Download a preset and save it in our format under `weights_dir()`."""
    return save_model(_build(read_hf_dir(download(name))), weights_dir() / f"{name}.safetensors")


def _build(checkpoint: Checkpoint, tier: str = "fp32") -> GPT:
    """The model at `tier` ("fp32", "bf16", "int8"), read and converted a part at a time: the
    process never holds the whole fp32 model beside the tier's (124M int8, loading and
    generating: a peak of 1,329 MB over torch's import became 283 MB; benchmarks/MEMORY.md)."""
    dtype = torch.float32 if tier == "fp32" else torch.bfloat16
    model = GPT(checkpoint.config, device="meta")  # no init work: every tensor comes from the file
    try:
        for prefix, module in [("ln_f.", model.ln_f), ("wpe.", model.wpe),
                               *((f"h.{i}.", block) for i, block in enumerate(model.h))]:
            module.load_state_dict(checkpoint.tensors(prefix), assign=True)
            if tier == "int8" and prefix.startswith("h."):
                quantize_block(module)
            elif prefix != "ln_f.":  # ln_f stays fp32 until the int8 head has read it
                module.to(dtype)
            release_freed_memory()
        model.wte.load_state_dict({"weight": checkpoint.embedding(dtype)}, assign=True)
        if model.lm_head is not None:
            model.lm_head.load_state_dict({"weight": checkpoint.embedding(dtype, "lm_head.weight")}, assign=True)
        head = Int8Head(model.head_weight, model.ln_f) if tier == "int8" else None
        model.to(dtype)
        model.int8_head = head
    except BaseException:
        model = None  # what was read so far goes now, not when the traceback does
        raise
    release_freed_memory()
    return model
