"""`finetune-sdk eval` and FineTuner.compare check what they can before any model loads.

The artifact here has a manifest and no model files: any check that ran only after loading a model would
fail on the missing model instead, with another message.
"""

import json
import sys

import pytest

from finetune_sdk import ConfigError, FineTuner, PromptTemplate
from finetune_sdk.artifact import write_manifest
from finetune_sdk.cli import main

FREE_TEXT = PromptTemplate.chat(user="{q}", assistant="{answer}")
LABELLED = PromptTemplate.chat(user="{q}", assistant="{topic}")


@pytest.fixture()
def artifact(tmp_path):
    """An artifact folder with a manifest but no model: loading it fails."""
    folder = tmp_path / "art"
    folder.mkdir()
    write_manifest(folder, {"template": FREE_TEXT.to_dict(), "base_model": {
        "name": str(tmp_path / "gone"), "source": "local", "path": str(tmp_path / "gone"), "revision": None}})
    return folder


@pytest.fixture()
def data(tmp_path):
    rows = [{"q": f"question {i}", "answer": f"free text answer {i}"} for i in range(6)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--base", "--gate", "label_accuracy=0.2"], "gate metric 'label_accuracy' is not in both reports (label metrics "
                                                 "need a label column"),
    (["--base", "--gate", "embedding_similarity=0.1"], "gate metric 'embedding_similarity' is not in both reports"),
    (["--label-column", "topik"], "label_column='topik' is missing from some rows"),
])
def test_eval_refuses_a_gate_or_label_column_no_report_can_have(artifact, data, argv, message, capsys):
    assert main(["eval", str(artifact), "--data", str(data), *argv]) == 2
    assert message in capsys.readouterr().err


def test_compare_refuses_a_gate_no_report_can_have_before_loading_a_model(tiny_model_dir, tmp_path):
    rows = [{"q": f"question {i}", "topic": "sleep" if i % 2 else "stress"} for i in range(20)]
    tuner = FineTuner(str(tiny_model_dir), rows, LABELLED, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="gate metric 'label_accuracy' is not in both reports"):
        tuner.compare(gate={"label_accuracy": 0.1}, label_column=None)


def test_eval_out_without_matplotlib_fails_before_any_model_loads(artifact, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # matplotlib not installed
    out = tmp_path / "out"
    assert main(["eval", str(artifact), "--data", str(data), "--base", "--gate", "rouge_l=0.1", "--out", str(out)]) == 2
    assert "charts need matplotlib: pip install 'finetune-sdk[eval]'" in capsys.readouterr().err
    assert not out.exists()


def test_eval_refuses_an_out_path_that_is_a_file_before_any_model_loads(artifact, data, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["eval", str(artifact), "--data", str(data), "--out", str(afile)]) == 2
    assert f"--out {afile} is a file; give a folder" in capsys.readouterr().err


def test_an_unexpected_error_exits_2_not_1_which_means_a_failed_gate(artifact, monkeypatch, capsys):
    import finetune_sdk.evaluate.cli as eval_cli

    def crash(args):  # fault injection: a bug, or a torch error the SDK does not translate
        raise RuntimeError("something broke")
    monkeypatch.setattr(eval_cli, "run_eval", crash)
    assert main(["eval", str(artifact)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: unexpected RuntimeError: something broke (the traceback "
                                               "above shows where)\n")
