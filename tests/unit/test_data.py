import json

import pytest

from finetune_sdk import DataError, EmptyDatasetError, MissingColumnError
from finetune_sdk.data import clean_rows, fingerprint, load_rows, split_rows
from tests.conftest import COUNSEL

ROWS = [{"questionText": f"question {i}", "topic": ["stress", "anxiety"][i % 2]} for i in range(20)]


def test_every_source_kind_gives_the_same_rows(tmp_path):
    import datasets
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    sources = [ROWS, frame, datasets.Dataset.from_list(ROWS)] + [tmp_path / f"d.{k}" for k in ("csv", "parquet", "jsonl", "json")]
    for source in sources:
        assert load_rows(source) == ROWS, source


def test_bundled_sample_by_name(counsel_rows):
    assert load_rows("counsel-sample") == counsel_rows


def test_empty_and_nan_rows_are_dropped_and_counted():
    import math

    rows = ROWS + [{"questionText": "  ", "topic": "stress"}, {"questionText": "q", "topic": None},
                   {"questionText": "q", "topic": math.nan}]
    kept, report = clean_rows(rows, COUNSEL)
    assert kept == ROWS
    assert report.dropped == 3 and report.dropped_empty == {"questionText": 1, "topic": 2}
    with pytest.raises(DataError, match="row 20 has empty or missing"):
        clean_rows(rows, COUNSEL, strict=True)


def test_columns_are_checked_against_the_template():
    with pytest.raises(MissingColumnError, match="'topic' not found; the dataset has: question, questionText"):
        clean_rows([{"questionText": "a", "question": "b"}], COUNSEL)
    with pytest.raises(EmptyDatasetError):
        clean_rows([], COUNSEL)


def test_split_is_seeded_and_stratified():
    train, evals = split_rows(ROWS, 0.2, seed=1, stratify="topic")
    assert len(evals) == 4 and sorted(r["topic"] for r in evals) == ["anxiety", "anxiety", "stress", "stress"]
    assert split_rows(ROWS, 0.2, seed=1, stratify="topic") == (train, evals)
    assert split_rows(ROWS, 0.2, seed=2, stratify="topic") != (train, evals)
    assert {r["questionText"] for r in train}.isdisjoint(r["questionText"] for r in evals)


def test_fingerprint_changes_with_content():
    assert fingerprint(ROWS) == fingerprint([dict(r) for r in ROWS])
    assert fingerprint(ROWS) != fingerprint(ROWS[:-1])
