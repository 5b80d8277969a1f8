"""evaluate() runs unchanged over an in-process model and a real local HTTP server, and both score alike."""

import shutil

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


def test_the_base_model_loads_as_the_tuner_loads_it(tiny_model_dir, tmp_path, counsel_rows):
    """A base with pickled weights only, allowed with allow_pickle=True: evaluate("base") loads it the same way."""
    import torch
    from transformers import AutoModelForCausalLM

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), pickled / "pytorch_model.bin")
    tuner = FineTuner(str(pickled), counsel_rows[:20], COUNSEL, output_dir=tmp_path / "run", allow_pickle=True)
    report = tuner.evaluate("base", max_new_tokens=2)
    assert report.name == "base" and report.n == len(tuner.eval_rows)


def test_eval_command_gates_and_writes_the_report(tuner, tmp_path, capsys):
    from finetune_sdk.cli import main

    artifact = str(tuner.artifact.path)
    common = ["eval", artifact, "--base", "--max-new-tokens", "3", "--batch-size", "16"]
    assert main([*common, "--gate", "stop_rate=-1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "base (13)" in out and "tuned (13)" in out and "gate PASSED" in out
    assert {p.name for p in tmp_path.iterdir()} == {"comparison.md", "comparison.json", "comparison.png"}
    assert main([*common, "--gate", "label_accuracy=0.5"]) == 1  # a random tiny model cannot gain 50 points
    assert "gate FAILED" in capsys.readouterr().out
    assert main(["eval", artifact, "--max-new-tokens", "3", "--label-column", "topic"]) == 0
    assert "tuned on 13 rows" in capsys.readouterr().out


def test_a_report_that_cannot_be_written_does_not_hide_the_gate(tuner, tmp_path, monkeypatch, capsys):
    from finetune_sdk.cli import main
    from finetune_sdk.evaluate import Comparison

    def full_disk(self, folder):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Comparison, "save", full_disk)
    common = ["eval", str(tuner.artifact.path), "--base", "--max-new-tokens", "2", "--out", str(tmp_path)]
    assert main([*common, "--gate", "label_accuracy=0.5"]) == 1  # the gate failed: that is the answer CI needs
    assert main([*common, "--gate", "stop_rate=-1"]) == 2        # the gate passed, but the report is missing
    assert capsys.readouterr().err.count("No space left on device") == 2
