"""Datasets in, clean rows out: load from many sources, check them against a template, split them.

Everything here runs before any model is loaded, so a bad column or an empty file costs seconds,
not a GPU-hour.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import DataError, EmptyDatasetError, MissingColumnError, TemplateError, UnsupportedFileError
from ..template import PromptTemplate

SAMPLE_DATASET = "counsel-sample"
_FILE_KINDS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def sample_dataset_path() -> Path:
    """The bundled synthetic counselling Q&A sample (CC0; see data/COUNSEL_SAMPLE.md)."""
    return Path(__file__).with_name("counsel_sample.jsonl")


@dataclass
class CleanReport:
    """What cleaning did: rows read, rows dropped for empty fields (per column) or malformed conversations
    (their row numbers), rows kept."""

    rows_in: int = 0
    dropped_empty: dict[str, int] = field(default_factory=dict)
    bad_conversations: list[int] = field(default_factory=list)  # rows dropped: a message is not {role, content} text
    rows_out: int = 0
    duplicates: int = 0  # training rows that repeat an earlier training row (same template columns)
    eval_in_train: int = 0  # eval rows whose template columns equal a training row's: they inflate eval scores
    kept_rows: list[int] = field(default_factory=list, repr=False)  # each kept row's number in the dataset

    @property
    def dropped(self) -> int:
        return self.rows_in - self.rows_out


def load_rows(source: Any, *, split: str = "train") -> list[dict[str, Any]]:
    """Rows from a hub id, a csv/json/jsonl/parquet file, a DataFrame, a list of dicts or a Dataset."""
    if isinstance(source, (list, tuple)):
        if not all(isinstance(r, Mapping) for r in source):
            raise DataError("a list dataset must hold dicts, one per row (e.g. [{'question': ..., 'answer': ...}])")
        return [dict(r) for r in source]
    if _is_dataframe(source):
        return _frame_rows(source)
    if _is_hf_dataset(source):
        return [dict(r) for r in source]
    if isinstance(source, Path) or isinstance(source, str):
        name = str(source)
        if name == SAMPLE_DATASET:
            return _read_file(sample_dataset_path())
        path = Path(name).expanduser()
        if path.exists():
            return _read_file(path)
        if "/" in name and not name.startswith((".", "/", "~")) and Path(name).suffix.lower() not in _FILE_KINDS:
            return _load_hub(name, split)
        raise DataError(f"dataset {name!r} is not a file, the bundled {SAMPLE_DATASET!r}, or a Hub id like 'org/name'")
    raise DataError(f"cannot read a dataset from {type(source).__name__}; pass a file path, a Hub id, a pandas "
                    "DataFrame, a list of dicts or a datasets.Dataset")


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "to_dict")


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets") and hasattr(obj, "column_names")


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        raise UnsupportedFileError(f"{path} is a directory; pass one .csv, .json, .jsonl or .parquet file")
    kind = _FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise UnsupportedFileError(f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; "
                                   "use .csv, .json, .jsonl or .parquet")
    if kind != "parquet":
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsupportedFileError(f"{path.name} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8, "
                                       "e.g. iconv -f latin1 -t utf-8") from exc
    try:
        return _parse_file(path, kind)
    except ImportError as exc:
        raise DataError(f"reading {kind} files needs {exc.name}: pip install 'finetune-sdk[train]'") from exc
    except Exception as exc:  # json/pandas/pyarrow errors have many types; all mean "cannot parse"
        raise UnsupportedFileError(f"could not parse {path.name} as {kind}: {exc}") from exc


def _parse_file(path: Path, kind: str) -> list[dict[str, Any]]:
    """Rows of a local file, read here rather than through ``datasets`` (which may reach out to the network).

    Values come back as written: CSV cells are strings (an empty cell is None), JSON and Parquet keep their types.
    """
    if kind == "json":
        return _parse_json(path.read_text(encoding="utf-8-sig"))
    if kind == "parquet":
        import pyarrow.parquet

        return pyarrow.parquet.read_table(path).to_pylist()
    import pandas

    return _frame_rows(pandas.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"))


def _parse_json(text: str) -> list[dict[str, Any]]:
    """A JSON array of objects, one object (one row, possibly over several lines), or JSON Lines; a bad line
    is reported by its line number in the file."""
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    elif isinstance(whole := _json_or_none(text), dict):
        rows = [whole]
    else:
        rows = []
        for number, line in enumerate(text.split("\n"), 1):
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number} column {exc.colno}: {exc.msg}") from exc
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError("expected JSON objects, one per row (a JSON array of objects, or JSON Lines)")
    return rows


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # JSON Lines (several values), or broken: read line by line
        return None


def _frame_rows(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as plain Python values: a missing cell is None, an array cell a list, and a float
    column of whole numbers with gaps (how pandas holds an int column with missing values) gives ints."""
    import pandas

    frame = frame.astype({name: "Int64" for name, column in frame.items() if _is_widened_int(column)})
    return [{k: _plain(v, pandas.NA, pandas.NaT) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _is_widened_int(column: Any) -> bool:
    values = column.dropna()
    return column.dtype.kind == "f" and len(values) < len(column) and bool(
        ((values % 1 == 0) & (values.abs() <= 2 ** 53)).all())


def _plain(value: Any, na: Any, nat: Any) -> Any:
    """A cell as a plain Python value; pandas' missing markers (``na``, ``nat``) and NaN become None."""
    if value is na or value is nat or isinstance(value, float) and math.isnan(value):
        return None
    return value.tolist() if hasattr(value, "tolist") else value  # numpy arrays and scalars


def _load_hub(name: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(name, split=split)]
    except ImportError as exc:
        raise DataError("Hub datasets need the 'datasets' package: pip install 'finetune-sdk[train]'") from exc
    except Exception as exc:
        raise DataError(f"could not load dataset {name!r} (split {split!r}) from the Hugging Face Hub: {exc}") from exc


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return isinstance(value, (list, tuple)) and not value


def clean_rows(rows: Sequence[Mapping[str, Any]], template: PromptTemplate, *,
               strict: bool = False) -> tuple[list[dict[str, Any]], CleanReport]:
    """Check columns against the template and drop rows with empty/NaN fields or malformed conversations
    (or raise when ``strict``)."""
    if not rows:
        raise EmptyDatasetError("the dataset has no rows")
    present = set().union(*(r.keys() for r in rows[:1000]))
    missing = [c for c in template.columns if c not in present]
    if missing:
        raise MissingColumnError(f"column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not "
                                 f"found; the dataset has: {', '.join(sorted(map(str, present)))}")
    report = CleanReport(rows_in=len(rows))
    kept, first_problem = [], ""
    for i, row in enumerate(rows):
        empty = [c for c in template.columns if _is_empty(row.get(c))]
        if empty:
            if strict:
                raise DataError(f"row {i} has empty or missing {empty}; fix it or pass strict=False to drop such rows")
            for c in empty:
                report.dropped_empty[c] = report.dropped_empty.get(c, 0) + 1
            continue
        row = dict(row)
        if template.kind == "messages":
            try:
                row[template.messages_column] = template.conversation(row)  # type: ignore[index]
            except TemplateError as exc:
                if strict:
                    raise DataError(f"row {i}: {exc}; fix it or pass strict=False to drop such rows") from exc
                first_problem = first_problem or f"row {i}: {exc}"
                report.bad_conversations.append(i)
                continue
        kept.append(row)
        report.kept_rows.append(i)
    report.rows_out = len(kept)
    if not kept:
        raise EmptyDatasetError(f"all {len(rows)} rows have an empty field among {template.columns}"
                                + (f" or a malformed conversation ({first_problem})" if first_problem else ""))
    if report.bad_conversations:
        warnings.warn(f"dropped {len(report.bad_conversations)} rows with a malformed conversation (the first, "
                      f"{first_problem}); fix them or pass strict=True to stop at the first", stacklevel=3)
    return kept, report


def split_rows(rows: Sequence[dict[str, Any]], eval_fraction: float, seed: int,
               stratify: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded train/eval split; with ``stratify`` every value of that column keeps its share."""
    train, evals = split_indices(rows, eval_fraction, seed, stratify)
    return [rows[i] for i in train], [rows[i] for i in evals]


def split_indices(rows: Sequence[Mapping[str, Any]], eval_fraction: float, seed: int,
                  stratify: str | None = None) -> tuple[list[int], list[int]]:
    """The positions of the train and the eval rows of :func:`split_rows`'s split, each in dataset order."""
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction={eval_fraction}; use a number in [0, 1)")
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get(stratify) if stratify else None, []).append(i)
    eval_idx: set[int] = set()
    for key in sorted(groups, key=str):
        idx = groups[key]
        rng.shuffle(idx)
        eval_idx.update(idx[:round(len(idx) * eval_fraction)])
    train = [i for i in range(len(rows)) if i not in eval_idx]
    if not train:
        raise EmptyDatasetError("no rows left for training after the eval split; lower eval_fraction")
    return train, sorted(eval_idx)


def count_overlap(train: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]], template: PromptTemplate,
                  report: CleanReport) -> None:
    """Count duplicate training rows and eval rows leaking from training into ``report``; warn about either."""
    columns = template.prompt_columns + template.completion_columns  # optional ones too: they tell rows apart

    def key(row: Mapping[str, Any]) -> str:
        return json.dumps([row.get(c) for c in columns], default=str, ensure_ascii=False)

    seen: set[str] = set()
    for row in train:
        k = key(row)
        report.duplicates += k in seen
        seen.add(k)
    report.eval_in_train = sum(key(row) in seen for row in evals)
    if report.duplicates or report.eval_in_train:
        warnings.warn(f"{report.duplicates} training rows repeat another training row and {report.eval_in_train} "
                      "eval rows also appear in the training rows (eval loss will look better than it is); "
                      "deduplicate the dataset, e.g. with pandas drop_duplicates()", stacklevel=3)


def fingerprint(rows: Iterable[Mapping[str, Any]]) -> str:
    """A stable sha256 of the rows' JSON, recorded in the artifact."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
