"""Why this token, for the page and the API: the service side of the library's causal tools
(`gpt2.attribute`, `gpt2.patch_heads` / `patch_residual`, `gpt2.saliency`, steering). Every
computation runs on the compute thread (`Service.compute`), like every other forward pass; a
finished run's attribution reads its capture (no forward pass); steering's baseline and
steered texts are two rows of the model's shared decode loop. Arguments are checked here,
before any model work, with messages that name the argument."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import gpt2

from . import validate
from .inspection import Run
from .service import Service, sampling

# Patching runs one batched forward per patched cell: rows (n_layer * n_head for heads,
# n_layer * T for the residual) of T tokens each. A prompt pair is capped at this many tokens,
# and the work (rows x tokens x parameters) at what heads patching of 64 tokens costs at 124M
# (a few seconds on two cores): larger models take shorter prompts.
MAX_PATCH_TOKENS = 64
PATCH_WORK = 144 * 64 * 124_000_000
LEVELS = ("heads", "residual")
MAX_STRENGTH = 1000.0


@dataclass(frozen=True)
class Steered:
    """One prompt generated twice, same settings and seed: as is and steered."""
    prompt_ids: list[int]
    baseline: list[int]  # generated ids, without the prompt
    steered: list[int]
    seed: int
    layer: int
    strength: float


def token_id(run_or_model, token: object, name: str) -> int | None:
    """A target or contrast as the API and the page give it: None (the default), a token id,
    or a text that is exactly one token of the model's own tokenizer."""
    if token is None or (isinstance(token, str) and token == ""):
        return None
    if isinstance(token, bool):
        raise ValueError(f"{name} must be a token id or a one-token text, got {token!r}")
    if isinstance(token, float) and token.is_integer():
        token = int(token)
    if isinstance(token, int):
        return token  # checked against the vocabulary by the library
    if not isinstance(token, str):
        raise ValueError(f"{name} must be a token id or a one-token text, got {type(token).__name__}")
    stripped = token.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    ids = run_or_model.encode(token)
    if len(ids) != 1:
        raise ValueError(f"{name} {validate.shown(token)} is {len(ids)} tokens for this model's tokenizer; "
                         "give one token (e.g. ' Mary', with its leading space) or its id")
    return ids[0]


def steering_text(name: str, text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name} must be a non-empty text (the steering vector is the mean residual of "
                         "plus minus that of minus)")
    if len(text) > validate.MAX_PROMPT_CHARS:
        raise ValueError(f"{name} is too long: {len(text):,} characters (limit {validate.MAX_PROMPT_CHARS:,})")
    return text


class Workbench:
    def __init__(self, service: Service):
        self.service = service

    def _tokens(self, name: str, target: object, contrast: object) -> tuple[int | None, int | None]:
        tokenizer = self.service.models.tokenizer(name)
        return token_id(tokenizer, target, "target"), token_id(tokenizer, contrast, "contrast")

    # -- attribution ------------------------------------------------------------------------
    def attribution(self, name: str, ids: list[int], position: int, target: object = None,
                    contrast: object = None, run: Run | None = None) -> gpt2.Attribution:
        """Direct logit attribution at `position` (negative counts from the end). With `run`
        (a finished generation), its capture is read: no forward pass."""
        position = validate.integer("position", position, -len(ids), len(ids) - 1) % len(ids)
        target, contrast = self._tokens(name, target, contrast)
        capture = run.capture if run is not None else None
        return self.service.compute(name, lambda model: gpt2.attribute(model, ids, position, target, contrast,
                                                                      capture=capture))

    def saliency(self, name: str, ids: list[int], position: int, target: object = None,
                 contrast: object = None) -> gpt2.Saliency:
        position = validate.integer("position", position, -len(ids), len(ids) - 1) % len(ids)
        target, contrast = self._tokens(name, target, contrast)
        return self.service.compute(name, lambda model: gpt2.saliency(model, ids, position, target, contrast))

    # -- patching ---------------------------------------------------------------------------
    def patch(self, name: str, clean: list[int], corrupted: list[int], target: object = None,
              contrast: object = None, level: object = "heads") -> gpt2.Patching:
        level = validate.choice("level", level, LEVELS)
        if len(clean) != len(corrupted):
            raise ValueError(f"the clean and corrupted prompts must have the same number of tokens: "
                             f"clean has {len(clean)}, corrupted has {len(corrupted)}")
        config = self.service.models.get(name).config
        rows = config.n_layer * (config.n_head if level == "heads" else len(clean))
        per_token = rows / len(clean) * config.num_params  # a patched run's work per prompt token, squared
        limit = min(MAX_PATCH_TOKENS, max(1, int((PATCH_WORK / per_token) ** 0.5)))
        if len(clean) > limit:
            raise ValueError(f"patching takes prompts of at most {limit} tokens on {name} "
                             f"(each of its {rows:,} patched runs is a forward pass); these have {len(clean)}")
        target, contrast = self._tokens(name, target, contrast)
        patch = gpt2.patch_heads if level == "heads" else gpt2.patch_residual
        return self.service.compute(name, lambda model: patch(model, clean, corrupted, target, contrast))

    # -- steering ---------------------------------------------------------------------------
    def steer(self, s: validate.Settings, plus: str, minus: str, layer: object, strength: object) -> Steered:
        """The prompt generated as is and with the plus-minus vector added before block
        `layer`, as two rows of the model's decode loop, same settings and seed."""
        config = self.service.models.get(s.model).config
        layer = validate.integer("layer", layer, 0, config.n_layer - 1)
        strength = validate.number("strength", strength)
        if abs(strength) > MAX_STRENGTH:
            raise ValueError(f"strength must be between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, got {strength:g}")
        tokenizer = self.service.models.tokenizer(s.model)
        plus_ids, minus_ids = (tokenizer.encode(steering_text(name, text))[-config.context_length:]
                               for name, text in (("plus", plus), ("minus", minus)))
        loop, _, ids, seed = self.service._request(s)
        vector = self.service.compute(s.model, lambda model: gpt2.steering_vector(model, plus_ids, minus_ids, layer))
        baseline, steered = gpt2.generate_steered(loop, torch.tensor([ids]), {layer: vector}, s.max_new_tokens,
                                                  strength, **sampling(s, seed, config))
        return Steered(ids, baseline[0, len(ids):].tolist(), steered[0, len(ids):].tolist(), seed, layer, strength)
