"""Scoring helpers for label-style completions ("... this sounds like {topic}.")."""

from __future__ import annotations

import re
from typing import Sequence


def _norm(text: str) -> str:
    return re.sub(r"[\s_-]+", " ", text.lower()).strip()


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The label named first in ``text`` (case, hyphens and spaces ignored), or None."""
    norm = _norm(text)
    found = [(m.start(), -len(label), label) for label in labels
             for m in [re.search(rf"\b{re.escape(_norm(label))}\b", norm)] if m]
    return min(found)[2] if found else None


def label_accuracy(predictions: Sequence[str], truths: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions whose extracted label equals the truth."""
    if not truths:
        return 0.0
    hits = sum(extract_label(p, labels) == t for p, t in zip(predictions, truths))
    return hits / len(truths)
