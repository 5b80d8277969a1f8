"""Run any Predictor over rows of a template's columns and score the replies.

The predictor is only ever called through ``predict_batch``, so the same evaluation runs against a
model in this process, a local server, a SageMaker endpoint, or a MockTransport in a user's tests.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, MissingColumnError
from ..template import PromptTemplate
from .metrics import confusion_matrix, cosine, exact_match, first_label, label_patterns, percentile, rouge_l

#: Each metric evaluate() can score, and the keys it adds to a report's ``metrics``.
METRIC_KEYS = {"label_accuracy": ("label_accuracy", "no_label_rate"), "exact_match": ("exact_match",),
               "rouge_l": ("rouge_l",), "embedding_similarity": ("embedding_similarity",),
               "answer_length": ("answer_words", "answer_tokens"), "stop_rate": ("stop_rate",),
               "latency": ("latency_p50_s", "latency_p95_s"), "tokens_per_s": ("tokens_per_s",)}
ALL_METRICS = tuple(METRIC_KEYS)
DEFAULT_METRICS = ("label_accuracy", "exact_match", "rouge_l", "answer_length", "stop_rate", "latency", "tokens_per_s")
#: A completion column with at most this many distinct values (and fewer than half the rows) is a label.
MAX_AUTO_LABELS = 50

Embedder = Callable[[list[str]], Sequence[Sequence[float]]]


@dataclass
class EvalRecord:
    """One row's reply and how it scored."""

    reference: str
    prediction: str
    finish_reason: str | None
    completion_tokens: int | None
    latency_s: float
    true_label: str | None = None
    predicted_label: str | None = None


@dataclass
class EvalReport:
    """Metrics of one model on one set of rows, with every reply kept for inspection."""

    name: str
    metrics: dict[str, float | None]
    records: list[EvalRecord]
    labels: list[str] | None = None
    confusion: list[list[int]] | None = None
    request_seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "metrics": self.metrics, "labels": self.labels,
                "confusion": self.confusion, "request_seconds": self.request_seconds, "notes": self.notes, "records": [asdict(r) for r in self.records]}


def known_labels(rows: Sequence[Mapping[str, Any]], column: str, extra: Sequence[str] = ()) -> list[str]:
    """The sorted distinct values of ``column`` in the rows that have it, plus ``extra``."""
    return sorted({str(r[column]) for r in rows if column in r} | set(extra))


def auto_label_column(template: PromptTemplate, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The template's one completion column when its values look like labels (few, repeated), else None."""
    columns = template.completion_columns
    if len(columns) != 1 or not rows:
        return None
    values = {str(r.get(columns[0])) for r in rows}
    return columns[0] if len(values) <= MAX_AUTO_LABELS and len(values) * 2 <= len(rows) else None


def evaluate(predictor: Any, rows: Sequence[Mapping[str, Any]], template: PromptTemplate, *,
             name: str = "model", metrics: Sequence[str] | None = None, label_column: str | None = None,
             labels: Sequence[str] | None = None, batch_size: int = 8, embed: Embedder | None = None,
             **generation: Any) -> EvalReport:
    """Generate a reply for every row (``batch_size`` inputs per request) and score it against the row's completion.

    ``label_column`` turns on label accuracy and the confusion matrix: the label named first in the
    reply is compared with the row's value. ``embed`` (texts -> vectors) enables embedding_similarity.
    Generation parameters (``max_new_tokens``, ...) go to every request unchanged.
    """
    _check_predictor(predictor)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}; use 1 or more inputs per request")
    wanted, patterns = _checked(rows, metrics, label_column, labels, embed)
    for i, row in enumerate(rows):
        missing = [c for c in template.columns if c not in row]
        if missing:
            raise MissingColumnError(f"row {i} has no column {missing[0]!r}, which the template needs; "
                                     f"the row has: {sorted(row)}")
    inputs = [_prompt_input(template, r) for r in rows]
    references = [_reference(template, r) for r in rows]
    records: list[EvalRecord] = []
    seconds: list[float] = []
    for start in range(0, len(inputs), batch_size):
        began = time.perf_counter()
        replies = predictor.predict_batch(inputs[start:start + batch_size], **generation)
        latency = time.perf_counter() - began
        seconds.append(latency)
        records += [EvalRecord(ref, p.text, p.finish_reason, p.completion_tokens, latency)
                    for ref, p in zip(references[start:start + batch_size], replies)]
    report = EvalReport(name, {}, records, request_seconds=seconds)
    if patterns is not None:
        report.labels = list(patterns)
        for record, row in zip(records, rows):
            record.true_label = str(row[label_column])
            record.predicted_label = first_label(record.prediction, patterns)
    _score(report, wanted, embed)
    return report


def expected_metrics(rows: Sequence[Mapping[str, Any]], *, metrics: Sequence[str] | None = None,
                     label_column: str | None = None, labels: Sequence[str] | None = None,
                     embed: Embedder | None = None) -> list[str]:
    """The keys of the ``metrics`` that evaluate() reports with these arguments, found without running a model;
    raises the ConfigError evaluate() would, so a gate or a wrong label column fails before anything loads."""
    wanted, _ = _checked(rows, metrics, label_column, labels, embed)
    return [key for metric in wanted for key in METRIC_KEYS[metric]]


def _checked(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None, label_column: str | None,
             labels: Sequence[str] | None, embed: Embedder | None) -> tuple[list[str], dict[str, Any] | None]:
    """(the metrics to score, the label patterns in label order or None), or the ConfigError for bad arguments."""
    wanted = _check_metrics(metrics, label_column, embed)
    if not rows:
        raise ConfigError("no rows to evaluate; pass a dataset with at least one row")
    if label_column is None:
        return wanted, None
    if any(label_column not in r for r in rows):
        raise ConfigError(f"label_column={label_column!r} is missing from some rows; the rows have: {sorted(rows[0])}")
    return wanted, label_patterns(known_labels(rows, label_column, labels or ()))


def _check_predictor(predictor: Any) -> None:
    batch = getattr(predictor, "predict_batch", None)
    if batch is None:
        raise ConfigError(f"evaluate() needs a Predictor (anything with predict_batch), got {type(predictor).__name__}")
    if inspect.iscoroutinefunction(batch):
        raise ConfigError("evaluate() calls the predictor synchronously; pass a Predictor (e.g. Predictor.from_url) "
                          "rather than an AsyncPredictor")


def _check_metrics(metrics: Sequence[str] | None, label_column: str | None, embed: Embedder | None) -> list[str]:
    if metrics is None:
        return [m for m in DEFAULT_METRICS if m != "label_accuracy" or label_column is not None]
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ConfigError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    if "label_accuracy" in metrics and label_column is None:
        raise ConfigError("label_accuracy needs label_column=, the column holding each row's true label")
    if "embedding_similarity" in metrics and embed is None:
        raise ConfigError("embedding_similarity needs embed=, a function from a list of texts to vectors")
    return list(metrics)


def _prompt_input(template: PromptTemplate, row: Mapping[str, Any]) -> Any:
    if template.kind == "messages":
        return template.conversation(row, with_completion=False)
    return {c: row[c] for c in template.prompt_columns if c in row}  # an optional one may be left out


def _reference(template: PromptTemplate, row: Mapping[str, Any]) -> str:
    if template.kind == "messages":
        last = template.conversation(row)[-1]
        return last["content"] if last["role"] == "assistant" else ""
    return template.completion_text(row)


def _score(report: EvalReport, wanted: Sequence[str], embed: Embedder | None) -> None:
    records, m = report.records, report.metrics
    n = len(records)
    if "label_accuracy" in wanted:
        m["label_accuracy"] = sum(r.predicted_label == r.true_label for r in records) / n
        m["no_label_rate"] = sum(r.predicted_label is None for r in records) / n
        report.confusion = confusion_matrix([r.true_label or "" for r in records],
                                            [r.predicted_label for r in records], report.labels or [])
    if "exact_match" in wanted:
        m["exact_match"] = sum(exact_match(r.prediction, r.reference) for r in records) / n
    if "rouge_l" in wanted:
        m["rouge_l"] = sum(rouge_l(r.prediction, r.reference) for r in records) / n
    if "embedding_similarity" in wanted and embed is not None:
        vectors = embed([r.prediction for r in records] + [r.reference for r in records])
        m["embedding_similarity"] = sum(cosine(vectors[i], vectors[n + i]) for i in range(n)) / n
    if "answer_length" in wanted:
        m["answer_words"] = sum(len(r.prediction.split()) for r in records) / n
        m["answer_tokens"] = _mean_known([r.completion_tokens for r in records])
    if "stop_rate" in wanted:
        reasons = [r.finish_reason for r in records]
        m["stop_rate"] = None if None in reasons else sum(x == "stop" for x in reasons) / n
        if None in reasons:
            report.notes.append("the endpoint did not report finish_reason, so stop_rate is unknown")
    if "latency" in wanted:
        m["latency_p50_s"] = percentile(report.request_seconds, 50)
        m["latency_p95_s"] = percentile(report.request_seconds, 95)
    if "tokens_per_s" in wanted:
        tokens = [r.completion_tokens for r in records]
        m["tokens_per_s"] = None if None in tokens else sum(tokens) / max(sum(report.request_seconds), 1e-9)


def _mean_known(values: Sequence[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


__all__ = ["ALL_METRICS", "DEFAULT_METRICS", "METRIC_KEYS", "EvalRecord", "EvalReport", "auto_label_column", "evaluate",
           "expected_metrics"]
