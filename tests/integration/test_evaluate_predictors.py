"""evaluate() runs unchanged over an in-process model and a real local HTTP server, and both score alike."""

import pytest

from finetune_sdk import FineTuner, TrainingSettings
from finetune_sdk.backends.local import LocalBackend
from tests.conftest import COUNSEL


@pytest.fixture(scope="module")
def tuner(tiny_model_dir, tmp_path_factory, counsel_rows) -> FineTuner:
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:60], COUNSEL, output_dir=tmp_path_factory.mktemp("ev") / "a",
                      eval_fraction=0.2, stratify="topic", backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=3, batch_size=8, learning_rate=5e-3, progress=False))
    tuner.train()
    return tuner


def test_in_process_and_local_server_give_the_same_report(tuner):
    in_process = tuner.evaluate(tuner.deploy("inprocess", device="cpu"), max_new_tokens=6, batch_size=4)
    with tuner.deploy("local", device="cpu") as server:
        over_http = tuner.evaluate(server, max_new_tokens=6, batch_size=4, name="server")
    assert in_process.n == over_http.n == len(tuner.eval_rows) == 13
    assert [r.prediction for r in in_process.records] == [r.prediction for r in over_http.records]
    for report in (in_process, over_http):
        # both transports carry finish_reason and token counts, so stop rate and tokens/s are known
        assert all(r.finish_reason in ("stop", "length") for r in report.records)
        assert report.metrics["stop_rate"] is not None and report.metrics["tokens_per_s"] > 0
        assert report.labels is not None and len(report.confusion) == len(report.labels)  # topic found automatically
        assert sum(map(sum, report.confusion)) == 13
        assert len(report.request_seconds) == 4  # 13 rows in requests of 4
    assert in_process.metrics["label_accuracy"] == over_http.metrics["label_accuracy"]


def test_compare_base_and_tuned_from_the_tuner(tuner, tmp_path):
    result = tuner.compare("base", None, gate={"stop_rate": -1.0}, max_new_tokens=4)
    assert (result.base.name, result.tuned.name) == ("base", "tuned")
    assert result.passed and result.base.n == result.tuned.n == 13
    paths = result.save(tmp_path)
    assert paths["png"].stat().st_size > 20_000 and "confusion matrix" in result.table()
