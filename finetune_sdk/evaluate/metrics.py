"""Pure scoring functions: labels, exact match, ROUGE-L, confusion matrices. No model, no I/O."""

from __future__ import annotations

import math
import re
from typing import Sequence

NO_LABEL = "(none)"


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
    if not a or not b:
        return float(a == b)
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
