"""Quality of the generated samples: distinct-1/2 and the repetition rate. Layer 3 (pure)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# -- sample quality --------------------------------------------------------------------------------

# CJK ideographs, kana and hangul are words of one character; latin text splits on spaces.
_CJK = "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
# (Patterns are kept as strings and compiled on first use through re's cache: compiling them
# all at import would cost the CLI's start-up ~30 ms.)
_TOKEN = rf"[{_CJK}]|[^\s{_CJK}\W]+|[\n\t]|[^\s\w{_CJK}]"

#: The n of repetition_rate's n-grams.
REPETITION_N = 3
#: A completion shorter than this (in tokens) says nothing about diversity: one token is always
#: "100 % distinct". Such samples are counted (``short``) and left out of the means.
MIN_TOKENS = REPETITION_N + 1


def sample_tokens(text: str) -> list[str]:
    """The tokens sample quality counts: each CJK character (and CJK punctuation), each latin
    word (a run of letters/digits), each other punctuation mark, and each line break or tab.
    Spaces only separate. Line breaks and tabs count because an untrained model's favourite
    degenerate output is a run of them, and dropping them would call that output diverse."""
    return re.findall(_TOKEN, text)


def _distinct(tokens: list[str], n: int) -> float | None:
    grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def sample_quality(samples: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """distinct-1, distinct-2 and repetition rate of generated texts, per sample and their mean.

    ``samples``: samples.json's dict (its "samples" list), or a list of {"completion" | "text"}
    dicts or of strings. Only the generated part (``completion``) is measured when present.
    distinct-n = unique n-grams / n-grams; repetition_rate = share of the 3-grams that repeat an
    earlier 3-gram of the same sample (= 1 − distinct-3). A sample of fewer than MIN_TOKENS
    tokens (a model that stopped at once) keeps its figures but is left out of the means, and
    counted in ``short``; ``measured`` is how many the means are of."""
    items = samples.get("samples", []) if isinstance(samples, Mapping) else samples
    per = []
    for item in items:
        if isinstance(item, str):
            text, prompt, mode = item, None, None
        elif isinstance(item, Mapping):
            text = item.get("completion")
            text = item.get("text") or "" if text is None else text
            prompt, mode = item.get("prompt"), item.get("mode")
        else:
            continue
        tokens = sample_tokens(str(text))
        d3 = _distinct(tokens, REPETITION_N)
        per.append({"prompt": prompt, "mode": mode, "tokens": len(tokens), "distinct_1": _distinct(tokens, 1),
                    "distinct_2": _distinct(tokens, 2), "repetition_rate": None if d3 is None else 1.0 - d3})

    measured = [p for p in per if p["tokens"] >= MIN_TOKENS]

    def mean(key: str) -> float | None:
        vals = [p[key] for p in measured if p[key] is not None]
        return math.fsum(vals) / len(vals) if vals else None

    return {"distinct_1": mean("distinct_1"), "distinct_2": mean("distinct_2"),
            "repetition_rate": mean("repetition_rate"), "measured": len(measured),
            "short": len(per) - len(measured), "samples": per}
