"""The preview marks trained tokens and its lint fails loudly on the mistakes that ruin fine-tunes."""

import io

import pytest

from finetune_sdk import FineTuner, PromptTemplate, TemplateError
from finetune_sdk.encoding import IGNORE_INDEX, Encoder
from finetune_sdk.preview import lint, preview_rows, render
from tests.conftest import COUNSEL

ROW = {"questionText": "My chest gets tight before every team meeting.", "topic": "anxiety"}


def test_render_marks_exactly_the_trained_span(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, COUNSEL)
    text = render(encoder, encoder.encode_example(ROW), color=False)
    assert text.endswith("<|im_start|>assistant\n⟦Based on what you've described, this sounds like anxiety.<|im_end|>⟧")
    assert text.count("⟦") == 1


def test_preview_prints_examples_and_passes_lint(smol_dir):
    out = io.StringIO()
    result = preview_rows("smollm2-135m-instruct", COUNSEL, [ROW] * 3, n=1, file=out)
    assert result.ok and result.rows_checked == 3
    assert "⟦Based on" in out.getvalue() and "lint: OK (3 rows checked)" in out.getvalue()


def test_lint_finds_untrained_end_of_turn(smol_tokenizer):
    class DropsEndOfTurn(Encoder):  # fault injection: an encoder that forgets to train <|im_end|>
        def _encode(self, row):
            enc, outcome = super()._encode(row)
            enc.labels[-1] = IGNORE_INDEX
            return enc, outcome

    assert any("is not trained: the model will not learn to stop" in p for p in lint(DropsEndOfTurn(smol_tokenizer, COUNSEL), [ROW]))


def test_lint_finds_all_masked_and_truncated_away_rows(smol_dir):
    rows = [ROW, {"questionText": "q", "topic": "word " * 80}]
    with pytest.raises(TemplateError, match=r"completion truncated away.*\(rows 1\)"):
        preview_rows("smollm2-135m-instruct", COUNSEL, rows, n=1, file=io.StringIO(), max_length=48)
    messages = PromptTemplate.messages()
    no_reply = {"messages": [{"role": "user", "content": "hello?"}]}
    with pytest.raises(TemplateError, match=r"nothing trained: every label is -100 \(rows 0\)"):
        preview_rows("smollm2-135m-instruct", messages, [no_reply], n=1, file=io.StringIO())


def test_with_truncation_drop_too_long_rows_are_reported_as_left_out(smol_dir):
    rows = [ROW, {"questionText": "q", "topic": "word " * 80}]
    out = io.StringIO()
    result = preview_rows("smollm2-135m-instruct", COUNSEL, rows, n=1, file=out, max_length=48, truncation="drop")
    assert result.ok and result.dropped == [1]
    assert "1 rows longer than max_length=48 are left out of training (truncation='drop'): rows 1" in out.getvalue()
    with pytest.raises(TemplateError, match=r"every row is longer than max_length.*\(rows 0\)"):
        preview_rows("smollm2-135m-instruct", COUNSEL, rows[1:], n=1, file=io.StringIO(), max_length=48,
                     truncation="drop")


def test_tuner_preview_numbers_rows_as_the_users_dataset_does(smol_dir, tmp_path):
    rows = [{"questionText": f"question {i}", "topic": "anxiety"} for i in range(12)]
    rows[1]["topic"] = ""            # dropped when cleaning: every later row moves up one place
    rows[8]["topic"] = "word " * 80  # its completion cannot fit max_length
    tuner = FineTuner("smollm2-135m-instruct", rows, COUNSEL, max_length=48, eval_fraction=0.25,
                      output_dir=tmp_path / "run")
    assert tuner.eval_rows and rows[8] in tuner.train_rows and tuner.train_rows.index(rows[8]) != 8
    with pytest.raises(TemplateError, match=r"completion truncated away.*\(rows 8\)"):
        tuner.preview(0, file=io.StringIO())
