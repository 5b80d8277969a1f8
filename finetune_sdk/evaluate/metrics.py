"""Pure scoring functions: labels, exact match, ROUGE-L, confusion matrices. No model, no I/O."""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

from ..errors import ConfigError

NO_LABEL = "(none)"


#: Separators between two letters or digits of a label; they match any run of separators in a reply.
_INNER_SEPARATORS = r"(?<=[^\W_])[\s_-]+(?=[^\W_])"


def label_patterns(labels: Sequence[str]) -> dict[str, re.Pattern[str]]:
    """One pattern per label: the label as a whole token (no letter or digit either side), case ignored, and
    spaces, hyphens and underscores inside it matching any such run, so "family-conflict" finds "Family Conflict"
    while "-1" and "1", or "C" and "C#", stay apart. Labels that only differ in those ways raise ConfigError."""
    patterns: dict[str, re.Pattern[str]] = {}
    seen: dict[str, str] = {}
    for label in labels:
        parts = re.split(_INNER_SEPARATORS, label.strip().lower())
        key = " ".join(parts)
        if key in seen and seen[key] != label:
            raise ConfigError(f"labels {seen[key]!r} and {label!r} differ only in case, spaces, hyphens or "
                              "underscores, so a reply cannot tell them apart; merge them into one label")
        seen[key] = label
        inner = r"[\s_-]+".join(re.escape(part) for part in parts)
        patterns[label] = re.compile(rf"(?<![^\W_]){inner}(?![^\W_])", re.IGNORECASE)
    return patterns


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The label named first in ``text`` (case, hyphens and spaces inside a label ignored; the longest label where
    several start at the same place), or None."""
    return first_label(text, label_patterns(labels))


def first_label(text: str, patterns: Mapping[str, re.Pattern[str]]) -> str | None:
    """:func:`extract_label` with the patterns of :func:`label_patterns` built once for many replies."""
    found = [(m.start(), -len(label), label) for label, pattern in patterns.items() for m in [pattern.search(text)] if m]
    return min(found)[2] if found else None


def label_accuracy(predictions: Sequence[str], truths: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions whose extracted label equals the truth."""
    if not truths:
        return 0.0
    patterns = label_patterns(labels)
    hits = sum(first_label(p, patterns) == t for p, t in zip(predictions, truths))
    return hits / len(truths)


def confusion_matrix(truths: Sequence[str], predicted: Sequence[str | None],
                     labels: Sequence[str]) -> list[list[int]]:
    """Counts with rows = true label, columns = predicted label plus a last ``(none)`` column."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for truth, guess in zip(truths, predicted):
        if truth in index:
            matrix[index[truth]][index.get(guess, len(labels)) if guess is not None else len(labels)] += 1
    return matrix


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after lower-casing and collapsing whitespace."""
    return " ".join(prediction.lower().split()) == " ".join(reference.lower().split())


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased words: the longest common subsequence against both lengths."""
    a, b = _words(prediction), _words(reference)
    if not a or not b:  # no words on one side: only the same text (say, both empty) matches
        return float(not a and not b and prediction.strip() == reference.strip())
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def cosine(u: Sequence[float], v: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    dot = sum(x * y for x, y in zip(u, v))
    norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
    return dot / norm if norm else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
