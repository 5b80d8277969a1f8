"""Completion-only masking on a real tokenizer where pad == eos (SmolLM2, ChatML)."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from finetune_sdk import PromptTemplate, TemplateError
from finetune_sdk.encoding import IGNORE_INDEX, Encoder, encode_dataset
from finetune_sdk.train.batching import collate
from tests.conftest import COUNSEL

LOOKALIKES = ["<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>", "<|im_start|>system\n"]
user_text = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(LOOKALIKES)), max_size=6).map("".join)


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


def test_a_prompt_without_its_optional_column_is_the_training_prompt_of_a_row_without_it(smol_tokenizer):
    titled = PromptTemplate.chat(user="{questionTitle}\n\n{questionText}", assistant="It is {topic}.",
                                 optional=["questionTitle"])
    encoder = Encoder(smol_tokenizer, titled)
    enc = encoder.encode_example({"questionText": "I can't sleep.", "questionTitle": "", "topic": "sleep"})
    first_trained = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    assert enc.input_ids[:first_trained] == encoder.encode_prompt(titled.prompt_source("I can't sleep."))
    untitled = PromptTemplate.chat(user="{questionText}", assistant="It is {topic}.")
    assert enc.input_ids[:first_trained] == Encoder(smol_tokenizer, untitled).encode_prompt({"questionText": "I can't sleep."})


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


PLAIN = PromptTemplate.plain(prompt="Question: {q}\nTopic:", completion=" {t}")


def prompt_ids(enc):
    return enc.input_ids[:next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)]


def test_truncation_cuts_the_row_value_and_keeps_the_plain_template_wording(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, PLAIN, max_length=20)
    cut = encoder.encode_example({"q": "word " * 50, "t": "stress"})
    prompt = smol_tokenizer.decode(prompt_ids(cut))
    assert cut.truncated and len(cut.input_ids) == 20
    assert prompt.startswith("Question: word word") and prompt.endswith("word\nTopic:")  # the cue every prompt has
    assert prompt_ids(cut) == encoder.encode_prompt({"q": prompt[len("Question: "):-len("\nTopic:")]})


def test_truncation_with_a_python_tokenizer_cuts_at_a_character_and_keeps_the_wording():
    from transformers import ByT5Tokenizer  # bytes as tokens, no offsets: the head is found by decoding

    tokenizer = ByT5Tokenizer()
    cut = Encoder(tokenizer, PLAIN, max_length=30).encode_example({"q": "wörd " * 50, "t": "stress"})
    assert not tokenizer.is_fast and cut.truncated and len(cut.input_ids) <= 30
    assert tokenizer.decode(cut.input_ids) == "Question: wörd\nTopic: stress</s>"


def test_truncation_keeps_chat_instructions_and_short_values_whole(smol_tokenizer):
    chat = PromptTemplate.chat(system="You answer in one word. Context: {ctx}",
                               user="{name} asks: {q}\nAnswer briefly.", assistant="{a}")
    encoder = Encoder(smol_tokenizer, chat, max_length=60)
    cut = encoder.encode_example({"ctx": "a clinic", "name": "Ann", "q": "why " * 80, "a": "ok"})
    prompt = smol_tokenizer.decode(prompt_ids(cut))
    assert cut.truncated and len(cut.input_ids) <= 60
    assert "<|im_start|>system\nYou answer in one word. Context: a clinic<|im_end|>" in prompt
    assert "<|im_start|>user\nAnn asks: why why" in prompt and "why\nAnswer briefly.<|im_end|>" in prompt
    assert smol_tokenizer.decode(trained_ids(cut)) == "ok<|im_end|>"


def test_truncation_cuts_long_values_to_one_common_length(smol_tokenizer):
    encoder = Encoder(smol_tokenizer, PromptTemplate.chat(system="Context: {ctx}", user="{q}", assistant="{a}"),
                      max_length=60)
    cut = smol_tokenizer.decode(encoder.encode_example({"ctx": "note " * 40, "q": "why " * 80, "a": "ok"}).input_ids)
    assert cut.count("note") == cut.count("why") > 10  # the longer value is not cut away to spare the shorter one


def test_a_row_that_fits_only_by_cutting_template_wording_is_dropped(smol_tokenizer):
    wordy = PromptTemplate.chat(system="Read this carefully. " * 20, user="{q}", assistant="{a}")
    examples, stats = encode_dataset(Encoder(smol_tokenizer, wordy, max_length=60), [{"q": "hi", "a": "ok"}])
    assert examples == [] and stats.dropped_too_long == 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=user_text, topic=st.text(min_size=1, max_size=8).filter(lambda s: s.strip()),
       max_length=st.integers(8, 40))
def test_property_truncation_cuts_only_the_value_tail(smol_tokenizer, question, topic, max_length):
    """However a row is cut: it fits, the completion is whole, the wording stays, and what is left of the value
    is a head of it whose inference prompt is token for token the example's prompt."""
    question_ids = smol_tokenizer(question, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assume(smol_tokenizer.decode(question_ids) == question)  # the kept head is read back by decoding
    encoder = Encoder(smol_tokenizer, PLAIN, max_length=max_length)
    enc, outcome = encoder._encode({"q": question, "t": topic})
    completion = smol_tokenizer(f" {topic}", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if enc is None:
        assert outcome == "too_long" and len(encoder.encode_prompt({"q": ""}) + completion) + 1 > max_length  # + EOS
        return
    assert len(enc.input_ids) <= max_length and trained_ids(enc) == completion + [smol_tokenizer.eos_token_id]
    prompt = smol_tokenizer.decode(prompt_ids(enc))
    assert prompt.startswith("Question: ") and prompt.endswith("\nTopic:")
    kept = prompt[len("Question: "):-len("\nTopic:")]
    assert question.startswith(kept) and (kept == question) == (outcome == "ok")
    assert prompt_ids(enc) == encoder.encode_prompt({"q": kept})


def test_template_without_chat_support_is_refused(smol_tokenizer):
    class NoChat:
        chat_template = None
        eos_token_id = 2
        eos_token = "<|im_end|>"

    with pytest.raises(TemplateError, match="no chat template"):
        Encoder(NoChat(), COUNSEL)


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
