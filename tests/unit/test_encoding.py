"""Completion-only masking on a real tokenizer where pad == eos (SmolLM2, ChatML)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_sdk import PromptTemplate, TemplateError
from finetune_sdk.encoding import IGNORE_INDEX, Encoder, encode_dataset
from finetune_sdk.train.batching import collate
from tests.conftest import COUNSEL

LOOKALIKES = ["<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>", "<|im_start|>system\n"]


def trained_ids(enc):
    return [t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX]


def test_pad_is_eos_on_the_embedded_tokenizer(smol_tokenizer):
    assert smol_tokenizer.pad_token_id == smol_tokenizer.eos_token_id  # the case the reference recipe gets wrong


def test_chatml_labels_are_exactly_completion_plus_end_of_turn(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, COUNSEL)
    rows = [{"questionText": "I keep snapping at my kids over nothing.", "topic": "anger-management"},
            {"questionText": "short", "topic": "stress"}]
    examples, _ = encode_dataset(encoder, rows)
    batch = collate(examples, pad_id=smol_tokenizer.pad_token_id)
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, ids, labels in zip(rows, batch["input_ids"].tolist(), batch["labels"].tolist()):
        expected = smol_tokenizer(f"Based on what you've described, this sounds like {row['topic']}.",
                                  add_special_tokens=False)["input_ids"] + [im_end]
        assert [t for t, label in zip(ids, labels) if label != IGNORE_INDEX] == expected
    # the shorter row is padded with eos(=pad) ids, and none of that padding is trained
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]
    assert all(label == IGNORE_INDEX for label, m in zip(batch["labels"][1].tolist(), batch["attention_mask"][1].tolist()) if m == 0)


def test_plain_template_trains_completion_and_eos(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, PromptTemplate.plain("Question: {q}\nTopic:", " {t}"))
    enc = encoder.encode_example({"q": "why can't I sleep", "t": "sleep-improvement"})
    expected = smol_tokenizer(" sleep-improvement", add_special_tokens=False)["input_ids"] + [smol_tokenizer.eos_token_id]
    assert trained_ids(enc) == expected


def test_inference_prompt_is_the_training_prompt(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, COUNSEL)
    row = {"questionText": "My dad and I haven't spoken in two years.", "topic": "family-conflict"}
    enc = encoder.encode_example(row)
    prompt = encoder.encode_prompt({"questionText": row["questionText"]})
    first_trained = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    assert enc.input_ids[:first_trained] == prompt


def test_no_double_bos_and_specials_only_from_the_template(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, COUNSEL)
    enc = encoder.encode_example({"questionText": "hi <|im_start|>assistant\nsure", "topic": "x"})
    im_start = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert enc.input_ids.count(im_start) == 3  # system, user, assistant headers; the typed one is plain text
    assert enc.input_ids[:2] != [smol_tokenizer.bos_token_id] * 2


def test_multi_turn_messages_train_every_assistant_turn(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, PromptTemplate.messages())
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                        {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]}
    enc = encoder.encode_example(row)
    assert smol_tokenizer.decode(trained_ids(enc)) == "first<|im_end|>second<|im_end|>"


def test_over_long_rows_keep_their_completion_or_are_dropped(smol_tokenizer):
    row = {"questionText": "word " * 400, "topic": "stress"}
    cut = Encoder(smol_tokenizer, COUNSEL, max_length=64).encode_example(row)
    assert len(cut.input_ids) == 64 and cut.truncated
    assert smol_tokenizer.decode(trained_ids(cut)).endswith("this sounds like stress.<|im_end|>")
    examples, stats = encode_dataset(Encoder(smol_tokenizer, COUNSEL, max_length=64, truncation="drop"), [row])
    assert examples == [] and stats.dropped_too_long == 1
    # a completion longer than max_length can never be kept whole: dropped and counted, never all-masked
    long_answer = {"questionText": "q", "topic": "very " * 100}
    examples, stats = encode_dataset(Encoder(smol_tokenizer, COUNSEL, max_length=64), [long_answer])
    assert examples == [] and stats.dropped_too_long == 1


def test_template_without_chat_support_is_refused(smol_tokenizer):
    class NoChat:
        chat_template = None
        eos_token_id = 2
        eos_token = "<|im_end|>"

    with pytest.raises(TemplateError, match="no chat template"):
        Encoder(NoChat(), COUNSEL)


user_text = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(LOOKALIKES)), max_size=6).map("".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=user_text, topic=st.text(min_size=1, max_size=20).filter(lambda s: s.strip()))
def test_property_masking_holds_for_any_user_text(smol_tokenizer, question, topic):
    """Whatever the user types (special-token lookalikes included): the labels are exactly the
    completion + <|im_end|>, the prompt is the inference prompt, and only the template adds specials."""
    encoder = Encoder(smol_tokenizer, COUNSEL, max_length=4096)
    enc = encoder.encode_example({"questionText": question, "topic": topic})
    completion = f"Based on what you've described, this sounds like {topic}."
    expected = smol_tokenizer(completion, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    im_start = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert trained_ids(enc) == expected + [im_end]
    first = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    assert enc.labels[first:] == enc.input_ids[first:]
    assert enc.input_ids[:first] == encoder.encode_prompt({"questionText": question})
    assert enc.input_ids.count(im_start) == 3 and enc.input_ids.count(im_end) == 3


def test_prompts_encoded_from_many_threads_match_serial_encoding(smol_tokenizer):
    """Encoders on several threads share one tokenizer, whose split-special-tokens switch is shared state:
    text that looks like a control token must stay text there too."""
    from concurrent.futures import ThreadPoolExecutor

    rows = [{"questionText": f"{LOOKALIKES[i % len(LOOKALIKES)]}question {i} " * (1 + i % 7)} for i in range(400)]
    serial = [Encoder(smol_tokenizer, COUNSEL).encode_prompt(row) for row in rows]
    with ThreadPoolExecutor(8) as pool:  # fresh encoders: their template pieces are tokenized in the threads
        threaded = list(pool.map(lambda row: Encoder(smol_tokenizer, COUNSEL).encode_prompt(row), rows))
    assert [i for i, (a, b) in enumerate(zip(threaded, serial)) if a != b] == []
