"""Base vs tuned, side by side: a terminal table, Markdown, JSON, a PNG, and a pass/fail gate."""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from .metrics import NO_LABEL
from .run import EvalReport

#: metric key -> (label, how to format a value, True when the value is a fraction shown in percent)
METRICS: dict[str, tuple[str, str, bool]] = {
    "label_accuracy": ("label accuracy", "{:.1%}", True),
    "no_label_rate": ("replies naming no label", "{:.1%}", True),
    "exact_match": ("exact match", "{:.1%}", True),
    "rouge_l": ("ROUGE-L F1", "{:.3f}", False),
    "embedding_similarity": ("embedding similarity", "{:.3f}", False),
    "stop_rate": ("stop-token rate (ended its turn)", "{:.1%}", True),
    "answer_words": ("answer length (words)", "{:.1f}", False),
    "answer_tokens": ("answer length (tokens)", "{:.1f}", False),
    "latency_p50_s": ("latency p50 (s per request)", "{:.2f}", False),
    "latency_p95_s": ("latency p95 (s per request)", "{:.2f}", False),
    "tokens_per_s": ("generated tokens/s", "{:.1f}", False),
}


@dataclass
class GateCheck:
    """One rule of the gate: tuned - base must be at least ``min_gain``."""

    metric: str
    min_gain: float
    base: float | None
    tuned: float | None

    @property
    def gain(self) -> float | None:
        return None if self.base is None or self.tuned is None else self.tuned - self.base

    @property
    def passed(self) -> bool:
        return self.gain is not None and self.gain >= self.min_gain - 1e-12

    def describe(self) -> str:
        fraction = METRICS.get(self.metric, ("", "", False))[2]
        need = f"{self.min_gain * 100:+.1f} pts" if fraction else f"{self.min_gain:+.3g}"
        got = "unknown" if self.gain is None else (f"{self.gain * 100:+.1f} pts" if fraction else f"{self.gain:+.3g}")
        return f"{self.metric}: tuned - base >= {need}: {'PASS' if self.passed else 'FAIL'} (got {got})"


@dataclass
class Comparison:
    """Two EvalReports on the same rows and the gate's verdict."""

    base: EvalReport
    tuned: EvalReport
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every gate rule holds (and trivially when no gate was set)."""
        return all(c.passed for c in self.checks)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, base, tuned, change) for every metric both reports have."""
        out = []
        for key, (label, fmt, fraction) in METRICS.items():
            if key not in self.base.metrics and key not in self.tuned.metrics:
                continue
            b, t = self.base.metrics.get(key), self.tuned.metrics.get(key)
            out.append((label, _fmt(fmt, b), _fmt(fmt, t), _change(b, t, fraction)))
        return out

    def table(self) -> str:
        """The report as fixed-width text for a terminal."""
        header = ("metric", f"{self.base.name} ({self.base.n})", f"{self.tuned.name} ({self.tuned.n})", "change")
        rows = [header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[0].ljust(widths[0]) if i == 0 else r[i].rjust(widths[i]) for i in range(4)).rstrip()
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines += ["", *self._gate_lines()]
        for report in (self.base, self.tuned):
            if report.confusion is not None:
                lines += ["", f"confusion matrix, {report.name}", *_confusion_text(report)]
        return "\n".join(lines).strip("\n") + "\n"

    def markdown(self) -> str:
        """The report as Markdown (tables for the metrics and the confusion matrices)."""
        lines = [f"| metric | {self.base.name} ({self.base.n}) | {self.tuned.name} ({self.tuned.n}) | change |",
                 "|---|---:|---:|---:|", *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows()], ""]
        lines += [f"**Gate:** {'passed' if self.passed else 'FAILED'}" if self.checks else "**Gate:** none set", ""]
        lines += [f"- {c.describe()}" for c in self.checks]
        for report in (self.base, self.tuned):
            if report.confusion is not None and report.labels is not None:
                columns = [*report.labels, NO_LABEL]
                lines += ["", f"**Confusion matrix, {report.name}** (rows: true label, columns: label named)", "",
                          "| true \\ named | " + " | ".join(columns) + " |", "|---" + "|---:" * len(columns) + "|"]
                lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |"
                          for label, row in zip(report.labels, report.confusion)]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "base": self.base.to_dict(), "tuned": self.tuned.to_dict(),
                "gate": [{"metric": c.metric, "min_gain": c.min_gain, "base": c.base, "tuned": c.tuned,
                          "gain": c.gain, "passed": c.passed} for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def save(self, folder: str | Path, stem: str = "comparison") -> dict[str, Path]:
        """Write ``{stem}.md``, ``{stem}.json`` and ``{stem}.png`` into ``folder``; return their paths.

        All three are written under temporary names and renamed only once the last is done, so a failure (no
        matplotlib, a full disk) leaves no half-written report and keeps any older files as they were.
        """
        from .chart import render_chart, require_matplotlib

        require_matplotlib()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"markdown": folder / f"{stem}.md", "json": folder / f"{stem}.json", "png": folder / f"{stem}.png"}
        staged = {key: path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp") for key, path in paths.items()}
        try:
            staged["markdown"].write_text(self.markdown(), encoding="utf-8")
            staged["json"].write_text(self.to_json() + "\n", encoding="utf-8")
            render_chart(self, staged["png"])
            for key, path in paths.items():
                os.replace(staged[key], path)
        finally:
            for leftover in staged.values():
                leftover.unlink(missing_ok=True)
        return paths

    def _gate_lines(self) -> list[str]:
        if not self.checks:
            return ["gate: none set"]
        return [f"gate {'PASSED' if self.passed else 'FAILED'}", *[f"  {c.describe()}" for c in self.checks]]


def report_table(report: EvalReport) -> str:
    """One report's metrics (and confusion matrix) as terminal text."""
    rows = [(label, _fmt(fmt, report.metrics[key])) for key, (label, fmt, _) in METRICS.items() if key in report.metrics]
    width = max((len(label) for label, _ in rows), default=0)
    lines = [f"{report.name} on {report.n} rows", *[f"{label.ljust(width)}  {value:>9}" for label, value in rows],
             *report.notes]
    if report.confusion is not None:
        lines += ["", f"confusion matrix, {report.name}", *_confusion_text(report)]
    return "\n".join(lines) + "\n"


def compare(base: EvalReport, tuned: EvalReport, gate: Mapping[str, float] | None = None) -> Comparison:
    """Put two reports side by side; ``gate={"label_accuracy": 0.20}`` requires tuned >= base + 20 points.

    Every gate rule reads "tuned minus base is at least this much"; a negative value allows a bounded
    loss (``{"rouge_l": -0.02}``).
    """
    if base.n != tuned.n:
        raise ConfigError(f"the reports cover different rows ({base.n} vs {tuned.n}); evaluate both on the same data")
    check_gate(gate, set(base.metrics) & set(tuned.metrics))
    checks = [GateCheck(metric, float(min_gain), base.metrics[metric], tuned.metrics[metric])
              for metric, min_gain in (gate or {}).items()]
    return Comparison(base, tuned, checks)


def check_gate(gate: Mapping[str, float] | None, available: Iterable[str]) -> None:
    """Raise ConfigError for a gate rule on a metric the reports do not have (or, given expected_metrics(),
    will not have), so it can be checked before any model runs."""
    available = set(available)
    for metric in gate or {}:
        if metric not in available:
            hint = (" (label metrics need a label column: label_column= in Python, --label-column on the command "
                    "line)" if metric in ("label_accuracy", "no_label_rate") else "")
            raise ConfigError(f"gate metric {metric!r} is not in both reports{hint}; they have {sorted(available)}")


def parse_gate(items: list[str]) -> dict[str, float]:
    """``["label_accuracy=0.2"]`` -> ``{"label_accuracy": 0.2}`` (for the command line)."""
    gate = {}
    for item in items:
        metric, sep, value = item.partition("=")
        try:
            gate[metric.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"gate {item!r}: write METRIC=MIN_GAIN, e.g. label_accuracy=0.2")
        if metric.strip() not in METRICS:
            raise ConfigError(f"gate {item!r}: unknown metric {metric.strip()!r}; use one of {', '.join(METRICS)}")
    return gate


def _fmt(fmt: str, value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _change(base: float | None, tuned: float | None, fraction: bool) -> str:
    if base is None or tuned is None or math.isnan(base) or math.isnan(tuned):
        return ""
    return f"{(tuned - base) * 100:+.1f} pts" if fraction else f"{tuned - base:+.2f}"


def _confusion_text(report: EvalReport) -> list[str]:
    labels = report.labels or []
    width = max(len(label) for label in labels) if labels else 0
    header = " " * (width + 5) + " ".join(f"{i + 1:>3}" for i in range(len(labels))) + "  none"
    lines = ["rows: true label; columns: label named (numbered as the rows; . = 0)", header]
    for i, (label, row) in enumerate(zip(labels, report.confusion or [])):
        cells = " ".join(f"{v:>3}" if v else "  ." for v in row[:-1]) + f"  {row[-1] or '.':>4}"
        lines.append(f"{i + 1:>3}. {label.ljust(width)} {cells}")
    return lines
