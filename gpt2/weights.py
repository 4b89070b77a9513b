"""Checkpoints in, checkpoints out: the Hugging Face Hub's GPT-2 files and our own format.

Only safetensors is read (no pickle anywhere). Hub checkpoints store Conv1D weights as
[in, out]; our Linear layers want [out, in], so those four matrices are transposed.
Every failure raises `WeightsError` naming the file and, where it applies, the key/shape.
"""
from __future__ import annotations

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
from .hub import HUB_ORG, WeightsError, download, weights_dir
from .model import GPT
from .tiers import quantize_int8, to_bf16
from .tokenizer import EOT_ID

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


def our_key(stored: str, hub_layout: bool) -> str | None:
    """Our state-dict key for a stored key, or None for what we do not load: the Hub's
    `lm_head.weight` (tied to wte) and its causal-mask buffers (built on the fly)."""
    if not hub_layout:
        return stored
    key = stored.removeprefix("transformer.")
    return None if key == "lm_head.weight" or key.endswith(HF_BUFFERS) else key


def expected_shapes(config: GPTConfig, layers: range | None = None) -> dict[str, tuple[int, ...]]:
    """`GPT(config).state_dict()`'s shapes, by arithmetic: no module is built (a config
    may claim a model far larger than memory). `layers` limits the blocks listed."""
    V, C, T = config.vocab_size, config.n_embd, config.context_length
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    block = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (3 * C, C),
             "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
             "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (4 * C, C),
             "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,)}
    for i in range(config.n_layer) if layers is None else layers:
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def check_header(header: Header, config: GPTConfig, hub_layout: bool) -> dict[str, str]:
    """Raise WeightsError unless the file holds exactly `config`'s tensors, as floats; return
    {our key: stored key} for the tensors to read."""
    path = header.path
    if config.vocab_size <= EOT_ID:
        raise WeightsError(f"{path}: vocab_size={config.vocab_size} is smaller than GPT-2's "
                           f"tokenizer, whose ids reach {EOT_ID}")
    stored = {ours: key for key in header.shapes if (ours := our_key(key, hub_layout)) is not None}
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


def read_tensors(header: Header, stored: dict[str, str], hub_layout: bool) -> dict[str, Tensor]:
    """The checked tensors, Conv1D weights transposed to [out, in]. Weights holding NaN or
    infinity are refused. On any failure the dict is emptied before the error leaves: a
    traceback keeps this frame alive (in a server, until the garbage collector runs), and
    with it whatever the frame still holds."""
    state: dict[str, Tensor] = {}
    try:
        with safe_open(header.path, framework="pt") as f:
            for ours, key in stored.items():
                state[ours] = f.get_tensor(key)
                if hub_layout and ours.endswith(CONV1D_WEIGHTS):
                    state[ours] = state[ours].t().contiguous()
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


def _config(make: Callable[[], GPTConfig], source: Path, what: str) -> GPTConfig:
    try:
        return make()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{source}: {what} ({type(e).__name__}: {e})") from None


def read_hf_dir(directory: Path) -> tuple[GPTConfig, dict[str, Tensor]]:
    """A Hub-layout folder (`config.json` + `model.safetensors`) -> (config, our state)."""
    config_file, weights_file = directory / "config.json", directory / "model.safetensors"
    if not weights_file.is_file():
        pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt*")]
        hint = (f" Found {pickles[0]}: pickle checkpoints are never loaded; convert it to "
                "safetensors first." if pickles else "")
        raise WeightsError(f"{weights_file}: file not found.{hint}")
    if not config_file.is_file():
        raise WeightsError(f"{config_file}: file not found (a Hub checkpoint folder needs "
                           "config.json beside model.safetensors)")
    config = _config(lambda: GPTConfig.from_hf(json.loads(config_file.read_text())), config_file,
                     "not a GPT-2 config")
    header = read_header(weights_file)
    return config, read_tensors(header, check_header(header, config, hub_layout=True), hub_layout=True)


def read_file(path: Path) -> tuple[GPTConfig, dict[str, Tensor]]:
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
    return config, read_tensors(header, check_header(header, config, hub_layout=False), hub_layout=False)


# -- public API ---------------------------------------------------------------------------
def save_model(model: GPT, path: str | Path) -> Path:
    """Write our format: safetensors, config in metadata, tied head stored once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={CONFIG_KEY: json.dumps(model.config.to_dict())})
    return path


def read_checkpoint(source: str | Path) -> tuple[GPTConfig, dict[str, Tensor]]:
    """Resolve `source` (preset, "builtin", Hub-layout folder, or our .safetensors) to
    (config, state)."""
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
    raise WeightsError(f"{source}: not a preset ({', '.join(PRESETS)}), not {BUILTIN!r}, and no such "
                       "file or folder")


def load_model(source: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, quantize: str | None = None,
               compile: bool = True) -> GPT:
    """A ready-to-run model in eval mode from a preset name, "builtin", a Hub folder, or our file.

    `dtype=torch.bfloat16` halves the bytes read per decoded token; `quantize="int8"` quarters
    the blocks' (weight-only int8, bf16 activations; `dtype` is then ignored). Both keep the
    logits fp32. See `gpt2.tiers`.
    `compile` (CPU only) builds the decode kernels of `gpt2.fast.kernels` in a background
    thread; the model is usable at once and speeds up when `model.compile_status` is ready.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be None, torch.float32 or torch.bfloat16, got {dtype!r}")
    model = _build(*read_checkpoint(source)).to(device=device, dtype=torch.float32)
    if quantize == "int8":
        model = quantize_int8(model)
    elif dtype == torch.bfloat16:
        model = to_bf16(model)
    model.eval()
    if compile and model.device.type == "cpu":
        compile_kernels(model)
    return model


def convert(name: str) -> Path:
    """Download a preset and save it in our format under `weights_dir()`."""
    return save_model(_build(*read_hf_dir(download(name))), weights_dir() / f"{name}.safetensors")


def _build(config: GPTConfig, state: dict[str, Tensor]) -> GPT:
    with torch.device("meta"):  # no init work: every tensor comes from the file
        model = GPT(config)
    model.load_state_dict(state, assign=True)
    return model
