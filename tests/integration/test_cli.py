"""The finetune-sdk command, run in process on a tiny model."""

import json

from finetune_sdk.cli import main


def test_preview_train_predict_and_errors(tiny_model_dir, tmp_path, counsel_rows, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in counsel_rows[:24]))
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--user", "{questionText}",
              "--assistant", "Topic: {topic}"]
    assert main(["preview", *common, "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "⟦Topic: " in out and "lint: OK (22 rows checked)" in out

    artifact = tmp_path / "artifact"
    assert main(["train", *common, "--output", str(artifact), "--epochs", "1", "--batch-size", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["artifact"] == str(artifact.resolve())

    assert main(["predict", str(artifact), "I can't sleep", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # the reply (a random tiny model may say nothing visible)

    assert main(["preview", "--model", str(tiny_model_dir), "--data", str(data), "--user", "{question}",
                 "--assistant", "{topic}"]) == 2
    assert "error: column 'question' not found; the dataset has:" in capsys.readouterr().err


def test_preview_with_an_optional_title_that_some_rows_lack(tiny_model_dir, tmp_path, counsel_rows, capsys):
    rows = [dict(r, questionTitle="") if i % 2 else r for i, r in enumerate(counsel_rows[:24])]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["preview", "--model", str(tiny_model_dir), "--data", str(data), "--user", "{questionTitle}\n\n{questionText}",
              "--assistant", "Topic: {topic}", "--eval-fraction", "0", "-n", "2"]
    assert main([*common, "--optional", "questionTitle"]) == 0
    out = capsys.readouterr().out
    assert f"{rows[0]['questionTitle']}\n\n{rows[0]['questionText']}" in out and "lint: OK (24 rows checked)" in out
    assert f"user\n{rows[1]['questionText']}" in out  # no title, no blank lines before the question
    assert main(common) == 0 and "lint: OK (12 rows checked)" in capsys.readouterr().out  # untitled rows dropped


def test_bad_arguments_exit_2_with_one_line_before_any_model_loads(tmp_path, capsys):
    cases = [(["train", "--lora-r", "0"], "error: invalid LoraSettings: r: Input should be greater than or equal to 1"),
             (["train", "--epochs", "0"], "error: invalid TrainingSettings: epochs: Input should be greater than 0"),
             (["train", "--batch-size", "0"], "error: invalid TrainingSettings: batch_size: Input should be greater"),
             (["predict", str(tmp_path), "{bad json"], "error: the input starts with '{' but is not a JSON object"),
             (["eval", str(tmp_path), "--base", "--gate", "label_accuracy"], "error: gate 'label_accuracy': write "
                                                                            "METRIC=MIN_GAIN"),
             (["eval", str(tmp_path), "--base", "--gate", "label_acuracy=0.2"], "error: gate 'label_acuracy=0.2': "
                                                                                "unknown metric 'label_acuracy'")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, (argv, err)
