"""Checks for everything that arrives from a browser or an API client.

Gradio does not enforce slider ranges or types for API calls (and `gr.api` endpoints get
raw JSON), so every value is checked here, once, with a message a person can act on.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_PROMPT_CHARS = 20_000  # checked before tokenizing, so huge inputs cost nothing
MAX_NEW_TOKENS = 512
MAX_SEED = 2**63 - 1
ECHO_CHARS = 40  # of a bad value quoted back in an error message
MAX_HEADS = 64  # heads one knock-out may name
MAX_LENS_K = 20  # top tokens per layer in the logit lens


def shown(value: object) -> str:
    """`repr(value)`, cut to ECHO_CHARS: an error names what was wrong without echoing
    (and logging) whatever megabyte a client sent."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit for turning it into text
        return f"a number of about {int(value.bit_length() * math.log10(2)):,} digits"
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}… ({len(text):,} characters)"


@dataclass(frozen=True)
class Settings:
    """One generation request, already checked."""
    prompt: str
    model: str
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    seed: int | None
    stop_at_end: bool = False  # end at GPT-2's <|endoftext|> token


def number(name: str, value: object) -> float:
    original = value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(str(value).strip())
        except ValueError:
            raise ValueError(f"{name} must be a number, got {shown(value)}") from None
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float (a 400-digit seed)
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {shown(original)}")
    return value


def integer(name: str, value: object, low: int, high: int) -> int:
    """An integer in [low, high]; accepts 3.0 (sliders send floats) but not 3.5. A whole
    number of any size (JSON's, or digits as text) is compared as it is, not as a float."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,4000}\s*", value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        whole = value
    else:
        as_float = number(name, value)
        if not as_float.is_integer():
            raise ValueError(f"{name} must be a whole number, got {shown(value)}")
        whole = int(as_float)
    if not low <= whole <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {shown(whole)}")
    return whole


def prompt_text(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise ValueError("prompt must be text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is too long: {len(prompt):,} characters (limit {MAX_PROMPT_CHARS:,})")
    if not prompt.strip():
        raise ValueError("prompt is empty: type some text for the model to continue")
    return prompt


def model_name(model: object, offered: list[str]) -> str:
    """Only names the server offers; never a path chosen by the client. Where the operator
    allows any Hub repo (`--allow-hub-models`), `offered.admit` takes a repo id too."""
    if isinstance(model, str) and (model in offered or getattr(offered, "admit", lambda _: False)(model)):
        return model
    hub = " (or a Hub repo id, org/name)" if getattr(getattr(offered, "_table", None), "allow_hub", False) else ""
    raise ValueError(f"model must be one of {', '.join(offered)}{hub}; got {shown(model)}")


def seed_value(seed: object) -> int | None:
    """Blank means 'pick one at random' (the run reports the seed it used)."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        return None
    return integer("seed", seed, 0, MAX_SEED)


def choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of `allowed` (case and surrounding spaces ignored)."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in allowed:
        raise ValueError(f"{name} must be {' or '.join(repr(a) for a in allowed)}, got {shown(value)}")
    return text


def flag(name: str, value: object) -> bool:
    """true or false, nothing else (JSON's booleans; "true" as text is a mistake to report)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def settings(prompt: object, model: object, temperature: object, top_k: object, top_p: object,
             max_new_tokens: object, seed: object, stop_at_end: object = False, *, offered: list[str],
             vocab_size: int = 50257) -> Settings:
    """All generation inputs at once; raises ValueError naming the first bad one."""
    temperature_value = number("temperature", temperature)
    if temperature_value < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature_value}")
    top_p_value = number("top_p", top_p)
    if not 0.0 < top_p_value <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p_value}")
    return Settings(
        prompt=prompt_text(prompt),
        model=model_name(model, offered),
        temperature=temperature_value,
        top_k=integer("top_k", top_k, 0, vocab_size),
        top_p=top_p_value,
        max_new_tokens=integer("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS),
        seed=seed_value(seed),
        stop_at_end=flag("stop_at_end_of_text", stop_at_end),
    )


def heads(value: object, n_layer: int, n_head: int) -> dict[int, list[int]]:
    """Heads to knock out: a list of "layer.head" strings (or one string of them separated by
    commas or spaces, as the page's text field holds) -> {layer: [head, ...]}."""
    if isinstance(value, str):
        items = [part for part in re.split(r"[\s,;]+", value) if part]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f'heads must be a list of "layer.head" strings such as ["1.0", "2.3"], got {shown(value)}')
    if not items:
        raise ValueError('heads is empty: name at least one head as "layer.head", e.g. "1.0"')
    if len(items) > MAX_HEADS:
        raise ValueError(f"heads names {len(items)} heads; at most {MAX_HEADS} at once")
    out: dict[int, set[int]] = {}
    for item in items:
        match = re.fullmatch(r"\s*(\d{1,4})\.(\d{1,4})\s*", item) if isinstance(item, str) else None
        if match is None:
            raise ValueError(f'each head must be "layer.head" (two whole numbers, e.g. "1.0"), got {shown(item)}')
        layer, head = int(match[1]), int(match[2])
        if not 0 <= layer < n_layer:
            raise ValueError(f"head {item.strip()}: layer must be in 0..{n_layer - 1}")
        if not 0 <= head < n_head:
            raise ValueError(f"head {item.strip()}: head must be in 0..{n_head - 1}")
        out.setdefault(layer, set()).add(head)
    return {layer: sorted(hs) for layer, hs in sorted(out.items())}


def heads_text(heads: dict[int, list[int]]) -> str:
    """{1: [0, 2]} -> "1.0, 1.2" (what the page's field and the API take)."""
    return ", ".join(f"{layer}.{h}" for layer, hs in sorted(heads.items()) for h in hs)
