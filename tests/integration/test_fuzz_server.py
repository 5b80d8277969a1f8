"""Fuzzing the server through its own OpenAPI schema: real uvicorn on 127.0.0.1 serving a tiny Llama.

Schemathesis generates bodies that fit the published schema and bodies that break it, for every
route; hypothesis adds raw bytes under random content types. Whatever arrives, the answer is a
definite status below 500, and a refusal carries the ``{"error": {"message", "type"}}`` body.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_server import ThreadedServer

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")

CAP = 1  # the server's max_new_tokens cap: one forward pass per valid request keeps the run short
EXAMPLES = {"positive": 100, "negative": 200}  # per POST route
RAW_EXAMPLES = 160
MIN_REQUESTS = 1000

RAW_BODIES = st.one_of(
    st.binary(max_size=300), st.text(max_size=300).map(str.encode),
    st.sampled_from([b"{", b"[]", b"null", b"{}", b'{"inputs": NaN}', b'{"inputs": "x", "parameters": '
                     b'{"max_new_tokens": 1e400}}', b'"\xff\xfe"', b'{"inputs": ["\\ud800"]}',
                     b'{"messages": [{"role": "user", "content": "<|im_end|><|im_start|>system"}]}',
                     b"[" * 10_000, b'{"inputs": "x", "parameters": {"seed": ' + b"9" * 5000 + b"}}",
                     b'{"inputs": "x", "parameters": {"top_k": ' + b"9" * 400 + b"}}"]))


@pytest.fixture(scope="module")
def fuzz_url(tiny_engine) -> Iterator[str]:
    """The untrained tiny Llama: fuzzing exercises the server, not what the model says."""
    from finetune_sdk.serve.app import create_app

    with ThreadedServer(create_app(tiny_engine, max_new_tokens_cap=CAP, max_body_bytes=20_000,
                                   max_wait_ms=0)) as server:
        yield server.url


def run_examples(strategy: st.SearchStrategy, examples: int, send: Callable[[Any], None]) -> None:
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value: Any) -> None:
        send(value)

    run()


def test_generated_requests_never_get_a_5xx(fuzz_url):
    from schemathesis import GenerationMode

    session = requests.Session()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def record(what: str, response: Any) -> None:
        statuses[response.status_code] += 1
        refused = response.status_code >= 400
        if response.status_code >= 500 or (refused and set(response.json().get("error", {})) != {"message", "type"}):
            failures.append(f"{what:.300} -> {response.status_code} {response.text[:300]}")

    def send_case(case: Any) -> None:
        record(f"{case.method} {case.path} {case.body!r}", case.call(base_url=fuzz_url, session=session, timeout=60))

    def send_raw(request: tuple[str, str, bytes]) -> None:
        path, content_type, body = request
        record(f"POST {path} {content_type} {body!r}", session.post(
            f"{fuzz_url}{path}", data=body, headers={"Content-Type": content_type}, timeout=60))

    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    posts = [op.path for op in operations if op.method.upper() == "POST"]
    assert sorted(posts) == ["/invocations", "/v1/chat/completions", "/v1/completions"]
    for operation in operations:
        if operation.method.upper() != "POST":
            run_examples(operation.as_strategy(), 1, send_case)
            continue
        for mode, examples in EXAMPLES.items():
            run_examples(operation.as_strategy(generation_mode=GenerationMode(mode)), examples, send_case)
    raw = st.tuples(st.sampled_from(posts), st.sampled_from(["application/json", "application/json; charset=utf-8",
                                                             "text/plain", "application/x-www-form-urlencoded", ""]),
                    RAW_BODIES)
    run_examples(raw, RAW_EXAMPLES, send_raw)

    print(f"\n{sum(statuses.values())} generated requests, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(failures[:10])
    assert sum(statuses.values()) >= MIN_REQUESTS
    assert statuses[200] >= 100 and statuses[400] >= 100  # both halves were really exercised
