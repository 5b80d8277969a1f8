"""Evaluation: run any Predictor over held-out rows, score the replies, compare base vs tuned.

    base = evaluate(base_predictor, rows, template, name="base", label_column="topic")
    tuned = evaluate(tuned_predictor, rows, template, name="tuned", label_column="topic")
    result = compare(base, tuned, gate={"label_accuracy": 0.20})
    print(result.table()); result.save("runs/demo.eval")   # .md, .json, .png
"""

from __future__ import annotations

from .metrics import confusion_matrix, exact_match, extract_label, label_accuracy, rouge_l
from .report import Comparison, GateCheck, check_gate, compare, parse_gate, report_table
from .run import ALL_METRICS, DEFAULT_METRICS, EvalRecord, EvalReport, auto_label_column, evaluate, expected_metrics

__all__ = ["ALL_METRICS", "Comparison", "DEFAULT_METRICS", "EvalRecord", "EvalReport", "GateCheck",
           "auto_label_column", "check_gate", "compare", "confusion_matrix", "evaluate", "exact_match",
           "expected_metrics", "extract_label", "label_accuracy", "parse_gate", "report_table", "rouge_l"]
