"""HTML for the logit-lens table and the side-by-side texts (knock-out, compare): every token
is escaped here, so no text a model writes is ever read as markup."""
from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence

import gpt2

from . import figures, tokens


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The index of the first token that differs (or where the shorter one ends), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _tokens_html(ids: Sequence[int], first: int | None, tokenizer: gpt2.Tokenizer | None = None) -> str:
    parts = []
    for i, text in enumerate(tokens.text(list(ids), tokenizer)):
        escaped = html.escape(text) or "∅"
        if first is not None and i == first:
            parts.append(f'<mark class="first-diff" title="first token that differs (#{i})">{escaped}</mark>')
        else:
            parts.append(f'<span class="{"after-diff" if first is not None and i > first else ""}">{escaped}</span>')
    return "".join(parts)


def side_by_side(prompt: str, titles: tuple[str, str], a: Sequence[int], b: Sequence[int],
                 tokenizers: tuple[gpt2.Tokenizer | None, gpt2.Tokenizer | None] = (None, None)) -> str:
    """Two continuations of one prompt, the first differing token marked in both; each read
    with its model's tokenizer (None: GPT-2's)."""
    first = first_difference(a, b)
    note = ("The two continuations are identical." if first is None else
            f"They part at generated token {first} (marked).")
    columns = "".join(
        f'<div class="sbs-col"><div class="sbs-title">{html.escape(title)}</div>'
        f'<div class="sbs-text"><span class="sbs-prompt">{html.escape(prompt)}</span>{_tokens_html(ids, first, tok)}'
        f"</div></div>" for title, ids, tok in zip(titles, (a, b), tokenizers))
    return f'<div class="sbs" data-first-diff="{"" if first is None else first}">{columns}</div>' \
           f'<div class="sbs-note">{note}</div>'


def lens_table(position: int, token: str, following: str | None, ids: Sequence[Sequence[int]],
               probs: Sequence[Sequence[float]], tokenizer: gpt2.Tokenizer | None = None) -> str:
    """Layers × top-k for one position; the data also rides along as JSON in `data-lens`
    (what the page's "download JSON" reads)."""
    layers = [{"layer": layer, "top": [{"token": t, "id": int(i), "prob": round(float(p), 6)}
                                       for t, i, p in zip(tokens.text(list(row), tokenizer), row, prow)]}
              for layer, (row, prow) in enumerate(zip(ids, probs))]
    data = html.escape(json.dumps({"position": position, "layers": layers}), quote=True)
    k = len(ids[0]) if len(ids) else 0
    head = "".join(f"<th>#{j + 1}</th>" for j in range(k))
    body = "".join(
        f"<tr><th>{'after ' if i < len(layers) - 1 else 'output, '}layer {entry['layer']}</th>"
        + "".join(f'<td style="background:{_shade(t["prob"])}" title="id {t["id"]}">'
                  f'<code>{html.escape(tokens.visible(t["token"].encode()))}</code> {figures.percent(t["prob"])}</td>'
                  for t in entry["top"]) + "</tr>" for i, entry in enumerate(layers))
    after = "" if following is None else f"; <code>{html.escape(following)}</code> followed"
    caption = (f"After position {position} <code>{html.escape(token)}</code>{after}: the top {k} next tokens "
               f"read off the residual stream after each block (through ln_f and the LM head).")
    return (f'<div class="lens" data-lens="{data}"><div class="lens-caption">{caption}</div>'
            f'<div class="lens-scroll"><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody>'
            f"</table></div></div>")


def _shade(prob: float) -> str:
    return f"rgba(99, 102, 241, {0.08 + 0.6 * min(max(prob, 0.0), 1.0):.2f})"


def file_name(*parts: object) -> str:
    """A PNG export name: the parts joined by '-', anything odd replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(str(p) for p in parts)).strip("-")
