"""evaluate() and compare() through a Predictor on the public MockTransport: known replies, known scores."""

import json
import sys

import pytest

from finetune_sdk import AsyncPredictor, ConfigError, FineTuner, MockTransport, Predictor, PromptTemplate
from finetune_sdk.errors import MissingColumnError
from finetune_sdk.evaluate import compare, evaluate, parse_gate, report_table

TEMPLATE = PromptTemplate.chat(user="{q}", assistant="this sounds like {topic}.")
ROWS = [{"q": "can't sleep", "topic": "sleep"}, {"q": "so sad", "topic": "depression"},
        {"q": "always worried", "topic": "anxiety"}, {"q": "mum and I fight", "topic": "family"}]


def scripted(replies: dict[str, str], finish_reason: str | None = "stop") -> Predictor:
    """A Predictor whose endpoint answers each question with the scripted reply."""
    def handler(request):
        return [{"generated_text": replies[x["q"]],
                 "details": {"finish_reason": finish_reason, "completion_tokens": len(replies[x["q"]].split())}}
                for x in request["inputs"]]
    return Predictor(MockTransport(handler))


BASE = scripted({"can't sleep": "I am an AI.", "so sad": "this sounds like anxiety.",
                 "always worried": "this sounds like anxiety.", "mum and I fight": "Talk to someone."})
TUNED = scripted({"can't sleep": "this sounds like sleep.", "so sad": "this sounds like depression.",
                  "always worried": "this sounds like anxiety.", "mum and I fight": "this sounds like sleep."})


def test_evaluate_scores_labels_text_and_requests():
    transport = TUNED.transport
    transport.requests.clear()
    report = evaluate(TUNED, ROWS, TEMPLATE, name="tuned", label_column="topic", batch_size=3, max_new_tokens=16)
    assert [len(r["inputs"]) for r in transport.requests] == [3, 1]           # batched, one request per batch
    assert transport.requests[0]["inputs"][0] == {"q": "can't sleep"}         # only the prompt columns are sent
    assert transport.requests[0]["parameters"] == {"max_new_tokens": 16}
    m = report.metrics
    assert m["label_accuracy"] == 0.75 and m["exact_match"] == 0.75 and m["stop_rate"] == 1.0
    assert m["no_label_rate"] == 0.0 and m["answer_words"] == 4.0 and m["answer_tokens"] == 4.0
    assert report.labels == ["anxiety", "depression", "family", "sleep"]
    assert report.confusion[2] == [0, 0, 0, 1, 0]                              # family -> sleep
    assert len(report.request_seconds) == 2 and m["latency_p50_s"] >= 0 and m["tokens_per_s"] > 0


def test_rows_without_an_optional_column_are_evaluated_and_sent_without_it():
    titled = PromptTemplate.chat(user="{title}\n{q}", assistant="this sounds like {topic}.", optional=["title"])
    rows = [dict(ROWS[0], title="Awake"), ROWS[1]]
    TUNED.transport.requests.clear()
    report = evaluate(TUNED, rows, titled, label_column="topic")
    assert TUNED.transport.requests[0]["inputs"] == [{"title": "Awake", "q": "can't sleep"}, {"q": "so sad"}]
    assert report.metrics["label_accuracy"] == 1.0


def test_compare_gate_table_markdown_json_and_png(tmp_path):
    base = evaluate(BASE, ROWS, TEMPLATE, name="base", label_column="topic")
    tuned = evaluate(TUNED, ROWS, TEMPLATE, name="tuned", label_column="topic")
    assert base.metrics["label_accuracy"] == 0.25 and base.metrics["no_label_rate"] == 0.5
    passing = compare(base, tuned, gate={"label_accuracy": 0.20})
    assert passing.passed and passing.checks[0].gain == pytest.approx(0.5)
    failing = compare(base, tuned, gate={"label_accuracy": 0.6})
    assert not failing.passed
    table = failing.table()
    assert "label accuracy" in table and "25.0%" in table and "75.0%" in table and "+50.0 pts" in table
    assert "gate FAILED" in table and "confusion matrix, tuned" in table
    assert "| label accuracy | 25.0% | 75.0% | +50.0 pts |" in passing.markdown()
    paths = passing.save(tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["passed"] is True and data["tuned"]["metrics"]["label_accuracy"] == 0.75
    assert data["tuned"]["records"][3]["predicted_label"] == "sleep"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 20_000


def test_missing_finish_reason_makes_stop_rate_unknown_not_zero():
    report = evaluate(scripted({r["q"]: "x" for r in ROWS}, finish_reason=None), ROWS, TEMPLATE)
    assert report.metrics["stop_rate"] is None and "finish_reason" in report.notes[0]
    assert "label_accuracy" not in report.metrics                              # no label column given


def test_embedding_similarity_uses_the_given_embedder():
    def embed(texts):
        return [[1.0, 0.0] if "sleep" in t else [0.0, 1.0] for t in texts]
    report = evaluate(TUNED, ROWS, TEMPLATE, metrics=["embedding_similarity"], embed=embed)
    # replies vs references: sleep/sleep 1, depression/depression 1, anxiety/anxiety 1, sleep/family 0
    assert report.metrics == {"embedding_similarity": 0.75}


def test_bad_arguments_are_typed_errors():
    with pytest.raises(ConfigError, match="unknown metrics"):
        evaluate(TUNED, ROWS, TEMPLATE, metrics=["bleu"])
    with pytest.raises(ConfigError, match="label_column"):
        evaluate(TUNED, ROWS, TEMPLATE, metrics=["label_accuracy"])
    with pytest.raises(ConfigError, match="embed="):
        evaluate(TUNED, ROWS, TEMPLATE, metrics=["embedding_similarity"])
    with pytest.raises(ConfigError, match="no rows"):
        evaluate(TUNED, [], TEMPLATE)
    TUNED.transport.requests.clear()
    with pytest.raises(ConfigError, match="'Sleep' and 'sleep'"):
        evaluate(TUNED, ROWS, TEMPLATE, label_column="topic", labels=["Sleep"])
    assert TUNED.transport.requests == []                                       # refused before any request
    with pytest.raises(ConfigError, match="missing from some rows"):
        evaluate(TUNED, ROWS, TEMPLATE, label_column="label")
    base = evaluate(BASE, ROWS, TEMPLATE)
    with pytest.raises(ConfigError, match="different rows"):
        compare(base, evaluate(BASE, ROWS[:2], TEMPLATE))
    with pytest.raises(ConfigError, match="not in both reports"):
        compare(base, base, gate={"label_accuracy": 0.2})
    assert parse_gate(["label_accuracy=0.2", "rouge_l=-0.05"]) == {"label_accuracy": 0.2, "rouge_l": -0.05}
    with pytest.raises(ConfigError, match="METRIC=MIN_GAIN"):
        parse_gate(["label_accuracy"])


def test_saving_the_chart_leaves_the_users_matplotlib_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # as a notebook or GUI sets its own
    try:
        report = evaluate(TUNED, ROWS, TEMPLATE, label_column="topic")
        paths = compare(report, report).save(tmp_path)
        assert matplotlib.get_backend() == "pdf"
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


def test_a_failed_save_leaves_no_half_written_report(tmp_path, monkeypatch):
    import finetune_sdk.evaluate.chart as chart
    from finetune_sdk.errors import MissingDependencyError

    report = evaluate(TUNED, ROWS, TEMPLATE, label_column="topic")
    old = {name: f"last run's {name}" for name in ("comparison.md", "comparison.json", "comparison.png")}
    for name, text in old.items():
        (tmp_path / name).write_text(text)

    def half_drawn(comparison, path):  # a full disk while the PNG is written
        open(path, "w").write("half a PNG")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(chart, "render_chart", half_drawn)
    with pytest.raises(OSError, match="No space"):
        compare(report, report).save(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # matplotlib not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'finetune-sdk\[eval\]'"):
        compare(report, report).save(tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == old


def test_wrong_predictors_and_rows_are_typed_errors_and_no_metrics_is_fine():
    with pytest.raises(ConfigError, match="pass a Predictor .* rather than an AsyncPredictor"):
        evaluate(AsyncPredictor(TUNED.transport), ROWS, TEMPLATE)
    with pytest.raises(ConfigError, match="needs a Predictor .*got object"):
        evaluate(object(), ROWS, TEMPLATE)
    with pytest.raises(MissingColumnError, match="row 1 has no column 'q', which the template needs"):
        evaluate(TUNED, [ROWS[0], {"question": "so sad", "topic": "depression"}], TEMPLATE)
    assert report_table(evaluate(TUNED, ROWS, TEMPLATE, metrics=[])) == "model on 4 rows\n"


def test_the_tuner_adds_given_labels_to_its_training_labels(tiny_model_dir, tmp_path):
    rows = [{"q": f"question {i}", "topic": "sleep" if i % 2 else "anxiety"} for i in range(20)]
    tuner = FineTuner(str(tiny_model_dir), rows, TEMPLATE, output_dir=tmp_path / "run")
    report = tuner.evaluate(scripted({r["q"]: "this sounds like grief." for r in rows}), labels=["grief"])
    assert report.labels == ["anxiety", "grief", "sleep"] and report.metrics["no_label_rate"] == 0.0
