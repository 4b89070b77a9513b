"""Token ids -> labels a person can read on a plot axis, with the model's own tokenizer.

GPT-2 tokens often start with a space or are only whitespace, and some are half of a
multi-byte character. On an axis " the" and "the" look the same and "\n" is invisible,
so whitespace is drawn as a visible symbol and undecodable bytes as hex.
"""
from __future__ import annotations

import gpt2

VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}
# Plotly reads its labels as a small HTML subset: keep "<b>" a literal token.
HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def visible(raw: bytes) -> str:
    """One token's bytes as a visible string (for text that is escaped where it is shown)."""
    text = raw.decode("utf-8", errors="backslashreplace")  # a character's fragment -> \xf0
    if not text:
        return "∅"
    out = []
    for ch in text:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def label(raw: bytes) -> str:
    """One token's bytes as a visible, plot-safe string."""
    return "".join(HTML.get(ch, ch) for ch in visible(raw))


def labels(ids: list[int], plot_safe: bool = True, tokenizer: gpt2.Tokenizer | None = None) -> list[str]:
    """Labels for a sequence of token ids of `tokenizer` (the model's own; None: GPT-2's);
    `plot_safe=False` leaves & < > as they are, for HTML that escapes them itself (escaping
    twice would show "&lt;")."""
    token_bytes = (tokenizer or gpt2.tokenizer.gpt2_tokenizer()).token_bytes
    show = label if plot_safe else visible
    return [show(token_bytes(i)) for i in ids]


def text(ids: list[int], tokenizer: gpt2.Tokenizer | None = None) -> list[str]:
    """Each token's own text (invalid UTF-8 replaced), for inline display without escaping."""
    token_bytes = (tokenizer or gpt2.tokenizer.gpt2_tokenizer()).token_bytes
    return [token_bytes(i).decode("utf-8", errors="replace") for i in ids]
