"""``finetune-sdk eval``: score an artifact, or the server serving it, and optionally gate it against its base."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..artifact import Artifact
from ..data import clean_rows, load_rows, read_jsonl
from ..errors import ConfigError, FineTuneError
from ..spec import work_dir_for
from .chart import require_matplotlib
from .report import check_gate, compare, report_table
from .run import auto_label_column, evaluate, expected_metrics, known_labels


def run_eval(args: argparse.Namespace) -> int:
    """Print the report (and write it with --out); exit code 1 when the gate (``args.gate``, parsed) fails."""
    from ..predict import Predictor

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder to write the report into")
    artifact = Artifact.load(args.artifact)
    template = artifact.template
    data = work_dir_for(artifact.path) / "data"
    if args.data:
        rows = load_rows(args.data)
    elif (data / "eval.jsonl").is_file():
        rows = read_jsonl(data / "eval.jsonl")
    else:
        raise ConfigError(f"{artifact.path} has no recorded eval split ({data / 'eval.jsonl'}); pass --data FILE")
    rows, _ = clean_rows(rows, template)
    known = rows + (read_jsonl(data / "train.jsonl") if (data / "train.jsonl").is_file() else [])
    label_column = args.label_column or auto_label_column(template, known)
    labels = known_labels(known, label_column) if label_column else None
    expected = expected_metrics(rows, label_column=label_column, labels=labels)  # a wrong column fails here
    check_gate(args.gate if args.base else None, expected)  # and a gate no report can meet, before any model loads
    if args.out and args.base:
        require_matplotlib()  # the chart is drawn last: a missing matplotlib fails now, not after both models ran
    options = {"label_column": label_column, "labels": labels, "batch_size": args.batch_size,
               "max_new_tokens": args.max_new_tokens}
    tuned_predictor = Predictor.from_url(args.url, api_key=args.api_key) if args.url else Predictor.local(artifact)
    with tuned_predictor:
        tuned = evaluate(tuned_predictor, rows, template, name="tuned", **options)
    if not args.base:
        print(report_table(tuned), end="")
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "report.json").write_text(json.dumps(tuned.to_dict(), indent=2, default=str) + "\n")
        return 0
    base_ref = artifact.base_model_ref()  # the folder it was trained from, at its recorded revision
    with Predictor.base_model(base_ref.path, template, revision=base_ref.revision) as base_predictor:
        base = evaluate(base_predictor, rows, template, name="base", **options)
    comparison = compare(base, tuned, gate=args.gate)
    print(comparison.table(), end="")
    gate_code = 0 if comparison.passed else 1
    if args.out:
        try:
            paths = comparison.save(args.out)
        except (FineTuneError, OSError) as exc:  # the verdict is known: a failed gate still exits 1
            print(f"error: the report could not be written to {args.out}: {exc}", file=sys.stderr)
            return gate_code or 2
        print(f"wrote {paths['markdown']}, {paths['json']}, {paths['png']}")
    return gate_code
