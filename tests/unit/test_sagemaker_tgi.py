"""The Predictor in front of a TGI endpoint, through botocore's Stubber on sagemaker-runtime InvokeEndpoint.

A TGI container cannot run here, so these tests check both sides of its contract instead: the body the
Predictor sends (the prompt rendered with the artifact's template, TGI's parameters) and how TGI's
answer (``[{"generated_text", "details"}]``) becomes the same Prediction every other endpoint gives.
"""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from finetune_sdk import BadRequest, EndpointError, Predictor
from finetune_sdk.artifact import Artifact, write_manifest
from finetune_sdk.encoding import Encoder
from finetune_sdk.predict.sagemaker import SageMakerTransport
from finetune_sdk.predict.tgi import TgiTransport
from tests.conftest import COUNSEL
from tests.unit.test_sagemaker_stubbed import INVOKE, _reply, fake_aws  # noqa: F401  (autouse fixture)

QUESTION = "I haven't slept properly since March.\nWhat can I do?"
PROMPT = ("<|im_start|>system\nYou are a mental health assistant.<|im_end|>\n<|im_start|>user\n"
          f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture
def artifact(tmp_path, smol_tokenizer):
    """What the TGI Predictor reads from an artifact: its tokenizer and manifest (template, stop tokens)."""
    path = tmp_path / "artifact"
    smol_tokenizer.save_pretrained(path)
    write_manifest(path, {"base_model": {"name": "tiny", "source": "local"}, "template": COUNSEL.to_dict(),
                          "stop_tokens": ["<|im_end|>"], "generation": {"max_new_tokens": 256, "do_sample": False},
                          "max_length": 512})
    return Artifact.load(path)


@pytest.fixture
def tgi(artifact):
    """A Predictor for a TGI endpoint, the Stubber on its client, and the bodies it sent."""
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    sent: list[dict] = []
    client.meta.events.register("before-parameter-build.sagemaker-runtime.InvokeEndpoint",
                                lambda params, **kw: sent.append(json.loads(params["Body"])))
    transport = SageMakerTransport("ep", client=client, max_retries=0)
    return Predictor(TgiTransport.for_artifact(transport, artifact)), Stubber(client), sent


def test_the_prompt_is_rendered_here_and_the_tgi_answer_becomes_a_prediction(tgi, artifact, smol_tokenizer):
    predictor, stub, sent = tgi
    stub.add_response("invoke_endpoint", _reply([{"generated_text": " It sounds like insomnia.<|im_end|>", "details": {
        "finish_reason": "stop_sequence", "generated_tokens": 7, "seed": None}}]), INVOKE)
    with stub:
        answer = predictor.predict(QUESTION, max_new_tokens=32, temperature=0.7)  # greedy: temperature is dropped
    assert sent == [{"inputs": PROMPT, "parameters": {"max_new_tokens": 32, "stop": ["<|im_end|>"], "details": True,
                                                      "return_full_text": False}}]
    prompt_ids = Encoder(smol_tokenizer, COUNSEL, max_length=512).encode_prompt({"questionText": QUESTION})
    assert answer.text == "It sounds like insomnia." and answer.finish_reason == "stop"
    assert (answer.prompt_tokens, answer.completion_tokens) == (len(prompt_ids), 7)


@pytest.mark.parametrize("source", [
    QUESTION,
    {"questionText": "Two lines,\n  indented, with \"quotes\" and émigré accents."},
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": QUESTION}],
])
def test_the_text_sent_tokenizes_as_tgi_does_to_the_ids_the_sdk_server_uses(artifact, smol_tokenizer, source):
    encoder = Encoder(smol_tokenizer, COUNSEL, max_length=512)
    prepared = COUNSEL.prompt_source(source)
    text = encoder.prompt_text(prepared)
    assert smol_tokenizer(text, add_special_tokens=True)["input_ids"] == encoder.encode_prompt(prepared)


def test_sampling_parameters_and_stop_strings_pass_through(tgi):
    predictor, stub, sent = tgi
    for text, reason in (("Try a routine.\n\nAlso", "eos_token"), ("A very long", "length")):
        stub.add_response("invoke_endpoint", _reply([{"generated_text": text, "details": {
            "finish_reason": reason, "generated_tokens": 4}}]), INVOKE)
    with stub:
        answers = predictor.predict_batch([QUESTION, {"questionText": "Hello"}], do_sample=True, temperature=0.7,
                                          top_p=0.9, seed=3, stop="\n\n")
    assert [a.text for a in answers] == ["Try a routine.", "A very long"]
    assert [a.finish_reason for a in answers] == ["stop", "length"]
    assert [body["inputs"].split("<|im_start|>user\n")[1].split("<|im_end|>")[0] for body in sent] == [
        QUESTION, "Hello"]
    assert sent[0]["parameters"] == sent[1]["parameters"] == {
        "max_new_tokens": 256, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 3,
        "stop": ["\n\n", "<|im_end|>"], "details": True, "return_full_text": False}


def test_bad_parameters_fail_before_any_call_and_a_bad_answer_is_an_endpoint_error(tgi):
    predictor, stub, sent = tgi
    with stub, pytest.raises(BadRequest, match=r"a TGI endpoint does not take \['num_beams'\]"):
        predictor.predict(QUESTION, num_beams=4)
    assert sent == []
    stub.add_response("invoke_endpoint", _reply([{"error": "Input validation error"}]), INVOKE)
    with stub, pytest.raises(EndpointError, match="expected \\[\\{'generated_text'"):
        predictor.predict(QUESTION)


def test_an_answer_without_the_list_reads_the_same():
    """LMI (vLLM) containers answer one object rather than TGI's list of one."""
    got = TgiTransport.generation({"generated_text": "Yes.<|im_end|>", "details": {"finish_reason": "eos_token",
                                                                                  "generated_tokens": 3}},
                                  ["<|im_end|>"], 12)
    assert got == {"generated_text": "Yes.", "details": {"finish_reason": "stop", "prompt_tokens": 12,
                                                         "completion_tokens": 3}}
