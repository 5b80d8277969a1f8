"""estimate(): the run's sizes match what training does; time and money follow from the tables and the probe."""

import pytest

from finetune_sdk import ConfigError, FineTuner, TrainingSettings
from finetune_sdk.backends.local import LocalBackend
from finetune_sdk.cli import main
from finetune_sdk.estimate import SAGEMAKER_PRICES, ServingEstimate, total_steps
from tests.conftest import COUNSEL


def tuner(tiny_model_dir, rows, out, **training):
    return FineTuner(str(tiny_model_dir), rows, COUNSEL, output_dir=out, eval_fraction=0.25, seed=3,
                     backend=LocalBackend(in_process=True),
                     training=TrainingSettings(batch_size=4, progress=False, **{"epochs": 1.5, **training}))


def test_steps_and_tokens_are_exactly_what_training_runs(tiny_model_dir, tmp_path, counsel_rows):
    t = tuner(tiny_model_dir, counsel_rows[:40], tmp_path / "a", grad_accum=2)
    est = t.estimate("ml.g5.xlarge", throughput=1000.0).training
    metrics = t.train().metrics
    assert est.steps == metrics["steps"] == total_steps(30, 4, 2, 1.5, None) == 6
    real_tokens = est.train_seconds * 1000.0  # table mode: seconds = real tokens / throughput
    assert real_tokens == pytest.approx(metrics["real_tokens"])
    first = metrics["first_step"]  # the warm-up step, which benchmarks leave out of steady-state throughput
    assert 0 < first["seconds"] <= metrics["train_seconds"] and 0 < first["real_tokens"] < metrics["real_tokens"]
    assert est.examples == 30 and est.trained_tokens_per_epoch < est.real_tokens_per_epoch <= est.padded_tokens_per_epoch
    assert est.price_per_hour == SAGEMAKER_PRICES["ml.g5.xlarge"]
    assert est.dollars == pytest.approx(est.price_per_hour * est.total_seconds / 3600)


def test_probe_times_real_steps_on_this_machine(tiny_model_dir, tmp_path, counsel_rows):
    est = tuner(tiny_model_dir, counsel_rows[:40], tmp_path / "b").estimate(probe_steps=3).training
    probe = est.details["probe"]
    assert est.method == "probe of 3 steps" and est.where == "this machine (cpu)"
    assert probe["step_seconds_per_token"] > 0 and probe["load_seconds"] > 0 and probe["cache_seconds_per_token"] is None
    assert est.train_seconds > 0 and est.dollars is None  # no price for this machine unless one is given


def test_tables_can_be_overridden_and_gaps_say_what_to_do(tiny_model_dir, tmp_path, counsel_rows):
    t = tuner(tiny_model_dir, counsel_rows[:40], tmp_path / "c")
    with pytest.raises(ConfigError, match="no measured training throughput .* benchmarks"):
        t.estimate("ml.g5.xlarge")
    with pytest.raises(ConfigError, match="no price for 'ml.x9.huge'; pass prices="):
        t.estimate("ml.x9.huge", throughput=10.0)
    table = tmp_path / "throughput.json"
    table.write_text('{"ml.g5.xlarge": {"%s": 2000.0}}' % tiny_model_dir)
    est = t.estimate("ml.g5.xlarge", throughput=str(table), prices={"ml.g5.xlarge": 2.0},
                     serving_instance="ml.g5.xlarge", requests_per_second=4.0, api_price_per_million=(0.15, 0.6))
    assert est.training.details["real_tokens_per_second"] == 2000.0 and est.training.price_per_hour == 2.0
    assert est.serving.prompt_tokens > 20 and est.serving.completion_tokens > 5
    assert "per 1,000 requests" in str(est) and "the endpoint is never cheaper" in str(est)  # $0.14 vs ~$0.01


def test_serving_cost_arithmetic():
    s = ServingEstimate("ml.g5.xlarge", 1.408, 2.0, prompt_tokens=120, completion_tokens=14,
                        api_input_per_million=10, api_output_per_million=30)
    assert s.endpoint_per_1000 == pytest.approx(1.408 / 7200 * 1000)
    assert s.api_per_1000 == pytest.approx((120 * 10 + 14 * 30) / 1000)
    assert s.break_even_requests_per_month == pytest.approx(1.408 * 730 / (s.api_per_1000 / 1000))
    assert s.break_even_requests_per_month < s.capacity_per_month == 2.0 * 3600 * 730
    assert ServingEstimate("ml.g5.xlarge", 1.408, 2.0, 120, 14).api_per_1000 is None


def test_no_break_even_when_the_endpoint_costs_more_per_request_even_at_full_load():
    """The demo's numbers: $0.0328 per 1,000 requests at full load against the API's $0.0255. More instances
    only repeat that cost, so the endpoint is never cheaper."""
    s = ServingEstimate("ml.m5.xlarge", 0.23, 1.95, 114, 14, api_input_per_million=0.15, api_output_per_million=0.6)
    assert s.endpoint_per_1000 > s.api_per_1000
    assert s.break_even_requests_per_month is None
    assert s.lines()[1].endswith("the endpoint is never cheaper: even at full load (5,124,600 requests/month per "
                                 "instance) it costs more per request")


def test_estimate_command(tiny_model_dir, tmp_path, counsel_rows, capsys):
    import json

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in counsel_rows[:24]))
    assert main(["estimate", "--model", str(tiny_model_dir), "--data", str(data), "--user", "{questionText}",
                 "--assistant", "Topic: {topic}", "--where", "ml.g5.xlarge", "--throughput", "500", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "steps: 6 (2 epochs)" in out and "cost: $" in out
