import json

import pytest

from finetune_sdk import DataError, EmptyDatasetError, MissingColumnError, PromptTemplate, UnsupportedFileError
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


def test_rows_keep_an_empty_optional_column_and_may_lack_it():
    titled = PromptTemplate.chat(user="{questionTitle}\n\n{questionText}", assistant="{topic}", optional=["questionTitle"])
    rows = [{"questionText": "a", "topic": "x", "questionTitle": None}, {"questionText": "b", "topic": "x"}]
    kept, report = clean_rows(rows, titled)
    assert kept == rows and report.dropped == 0
    with pytest.raises(MissingColumnError, match="'questionText' not found"):
        clean_rows([{"questionTitle": "t", "topic": "x"}], titled)


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


def test_csv_cells_are_read_as_written(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("q,a\nspam?,1\nzip?,02134\npi?,3.14159265358979\nid?,9007199254740993\n"
                    "n1,None\nn2,NA\nn3,null\nempty,\n")
    rows = load_rows(path)
    assert [r["a"] for r in rows] == ["1", "02134", "3.14159265358979", "9007199254740993",
                                      "None", "NA", "null", None]
    kept, report = clean_rows(rows, PromptTemplate.chat(user="{q}", assistant="{a}"))
    assert len(kept) == 7 and report.dropped_empty == {"a": 1}


def test_dataframe_and_parquet_values_keep_their_precision(tmp_path):
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"label": [1, None, 3], "pi": [3.14159265358979, 2.5, None], "tags": [np.array(["x"])] * 3})
    assert load_rows(frame) == [{"label": 1, "pi": 3.14159265358979, "tags": ["x"]},
                                {"label": None, "pi": 2.5, "tags": ["x"]},
                                {"label": 3, "pi": None, "tags": ["x"]}]
    frame.to_parquet(tmp_path / "d.parquet")
    assert [r["pi"] for r in load_rows(tmp_path / "d.parquet")] == [3.14159265358979, 2.5, None]


def test_a_bad_jsonl_line_is_reported_by_its_line_number(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": "a"}\n\n{"q": "b"}\n{bad\n')
    with pytest.raises(UnsupportedFileError, match="line 4 column 2: Expecting property name"):
        load_rows(path)


def test_a_json_file_holding_one_object_over_several_lines_is_one_row(tmp_path):
    path = tmp_path / "squad-like.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"q": "a"}]}, indent=2))
    assert load_rows(path) == [{"version": "1.1", "data": [{"q": "a"}]}]
    with pytest.raises(MissingColumnError, match="column 'q' not found; the dataset has: data, version"):
        clean_rows(load_rows(path), PromptTemplate.plain(prompt="{q}", completion=" {q}"))


def test_files_with_a_utf8_bom_are_read(tmp_path):
    bom = "\ufeff".encode()
    (tmp_path / "d.jsonl").write_bytes(bom + b'{"q": "x"}\n')
    (tmp_path / "d.json").write_bytes(bom + b'[{"q": "x"}]')
    (tmp_path / "d.csv").write_bytes(bom + b"q\nx\n")
    for name in ("d.jsonl", "d.json", "d.csv"):
        assert load_rows(tmp_path / name) == [{"q": "x"}], name


def test_a_hub_id_with_a_dot_is_loaded_from_the_hub(monkeypatch):
    asked = []
    monkeypatch.setattr("finetune_sdk.data._load_hub", lambda name, split: asked.append(name) or ROWS)
    assert load_rows("teknium/OpenHermes-2.5") == ROWS and asked == ["teknium/OpenHermes-2.5"]
    with pytest.raises(DataError, match="is not a file"):
        load_rows("data/missing.csv")


GOOD_CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_malformed_conversations_are_dropped_and_counted():
    rows = [{"messages": GOOD_CHAT}] * 3
    rows[1] = {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}
    rows.append({"messages": [{"role": "user", "content": None}]})
    with pytest.warns(UserWarning, match="dropped 2 rows with a malformed conversation .*row 1: message 1 has role 'tool'"):
        kept, report = clean_rows(rows, PromptTemplate.messages())
    assert kept == [{"messages": GOOD_CHAT}] * 2 and report.bad_conversations == [1, 3] and report.dropped == 2
    with pytest.raises(DataError, match="row 1: message 1 has role 'tool'"):
        clean_rows(rows, PromptTemplate.messages(), strict=True)


def test_conversations_from_a_parquet_dataframe_are_accepted(tmp_path):
    import pandas as pd

    pd.DataFrame({"messages": [GOOD_CHAT] * 2}).to_parquet(tmp_path / "m.parquet")
    frame = pd.read_parquet(tmp_path / "m.parquet")
    assert clean_rows(frame.to_dict(orient="records"), PromptTemplate.messages())[0] == [{"messages": GOOD_CHAT}] * 2
    assert clean_rows(load_rows(frame), PromptTemplate.messages())[0] == [{"messages": GOOD_CHAT}] * 2
