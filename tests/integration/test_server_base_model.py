"""``python -m finetune_sdk.serve --model NAME``: a base model served without an artifact, prompts in its chat template.

The server program runs as a subprocess on 127.0.0.1 with a local model folder: the tiny trained
artifact's model with its adapter merged in (SmolLM2's tokenizer and chat template, replies in words).
Its answers must equal what the in-process base-model Predictor (the one ``FineTuner.evaluate("base")``
uses) gives for the same input.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from finetune_sdk import Predictor
from finetune_sdk.template import PromptTemplate
from tests.conftest import COUNSEL
from tests.integration.test_server import engine, tuner  # noqa: F401  (module fixtures)
from tests.integration.test_server_shutdown import start_server

pytest.importorskip("uvicorn")

@pytest.fixture(scope="module")
def model_dir(engine, tmp_path_factory):
    """A plain model folder (config.json + safetensors + tokenizer), as a user's own base model would be."""
    folder = tmp_path_factory.mktemp("merged-tiny")
    engine.model.save_pretrained(folder)
    engine.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def url(model_dir):
    process, url = start_server("--model", str(model_dir))
    yield url
    process.terminate()
    process.communicate(timeout=60)


@pytest.fixture(scope="module")
def base(model_dir):
    with Predictor.base_model(str(model_dir), PromptTemplate.messages(), device="cpu") as predictor:
        yield predictor


def conversation(question: str) -> list[dict[str, str]]:
    """The system and user turns the tiny model was trained on, as chat messages."""
    return COUNSEL.conversation({"questionText": question}, with_completion=False)


@pytest.fixture(scope="module")
def questions(base, counsel_rows) -> list[str]:
    """Three questions the tiny model answers with visible text when asked in its training conversation, so
    equal replies prove something."""
    distinct = list(dict.fromkeys(r["questionText"] for r in counsel_rows))
    replies = base.predict_batch([conversation(q) for q in distinct], max_new_tokens=12)
    chosen = [q for q, reply in zip(distinct, replies) if reply.text][:3]
    assert len(chosen) == 3, "the tiny model should answer at least three questions with words"
    return chosen


def chat_template_length(tokenizer, messages: list[dict[str, str]]) -> int:
    """The prompt's token count as the tokenizer's own chat template renders it (independent of the SDK)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def served(response: httpx.Response) -> list[tuple[str, int, int]]:
    assert response.status_code == 200, response.text
    return [(x["generated_text"], x["details"]["completion_tokens"], x["details"]["prompt_tokens"])
            for x in response.json()]


def in_process(predictions: list) -> list[tuple[str, int, int]]:
    return [(p.text, p.completion_tokens, p.prompt_tokens) for p in predictions]


def test_a_string_input_is_one_user_message_in_the_chat_template(url, base, questions, smol_tokenizer):
    response = httpx.post(f"{url}/invocations", json={"inputs": questions, "parameters": {"max_new_tokens": 12}},
                          timeout=120)
    answers = served(response)
    assert answers == in_process(base.predict_batch(questions, max_new_tokens=12))
    assert [n for *_, n in answers] == [chat_template_length(smol_tokenizer, [{"role": "user", "content": q}])
                                        for q in questions]


def test_invocations_take_chat_messages_as_given(url, base, questions, smol_tokenizer):
    conversations = [conversation(q) for q in questions]
    response = httpx.post(f"{url}/invocations", json={"inputs": conversations, "parameters": {"max_new_tokens": 12}},
                          timeout=120)
    answers = served(response)
    assert answers == in_process(base.predict_batch(conversations, max_new_tokens=12))
    assert all(text for text, *_ in answers)
    assert [n for *_, n in answers] == [chat_template_length(smol_tokenizer, c) for c in conversations]


def test_chat_completions_answer_as_the_base_model_does_in_process(url, base, questions):
    messages = conversation(questions[0])
    response = httpx.post(f"{url}/v1/chat/completions", json={"messages": messages, "max_tokens": 12}, timeout=120)
    assert response.status_code == 200
    reply, expected = response.json(), base.chat(messages, max_new_tokens=12)
    assert reply["choices"][0]["message"]["content"] == expected.text != ""
    assert reply["usage"]["completion_tokens"] == expected.completion_tokens


def test_the_model_is_listed_under_the_name_it_was_started_with(url, model_dir):
    response = httpx.get(f"{url}/v1/models", timeout=30)
    assert [m["id"] for m in response.json()["data"]] == [str(model_dir)]


@pytest.mark.parametrize("arguments, message", [
    (["/some/artifact", "--model", "smollm2-135m-instruct"], "not both"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_a_bad_model_option_is_refused_with_a_reason(arguments, message):
    result = subprocess.run([sys.executable, "-m", "finetune_sdk.serve", *arguments], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode in (1, 2) and message in result.stderr
