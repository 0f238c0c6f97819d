"""The OpenAI-compatible HTTP API (`selm serve --http`) driven by the real `openai` package from PyPI,
against a real `selm serve` on SmolLM2 (see conftest.py): completions and chat completions, streamed
and not, logprobs in both shapes, n > 1, the weight version on every reply, and errors as OpenAI's
exceptions with the right status codes. Raw-socket cases (malformed HTTP, oversized bodies, a client
vanishing mid-stream): Tests/ServerTests/HTTPTests.swift."""

from __future__ import annotations

import re
from typing import Iterator

import openai
import pytest

from conftest import Server

PROMPT = "What is the capital of France? Answer in one word."


def http_base_url(server: Server) -> str:
    m = re.search(r"listening on http (\S+)", server.log())
    assert m, "no http listener in the log:\n" + server.log()
    return "http://%s/v1" % m.group(1)


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    """A server with the HTTP API and no learner (its version never changes under a test)."""
    s = Server(["--no-learner", "--http", "127.0.0.1:0"])
    yield s
    s.cleanup()


@pytest.fixture(scope="module")
def oai(http_server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=http_base_url(http_server), api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def model(oai: openai.OpenAI) -> str:
    models = oai.models.list().data
    assert len(models) == 1
    return models[0].id


def version_of(obj) -> int:  # type: ignore[no-untyped-def]
    """The weight version a reply (or a choice) carries in its `selm` field."""
    extra = obj.model_extra or {}
    return extra["selm"]["version"]


def test_models_lists_the_served_model(oai: openai.OpenAI, model: str) -> None:
    listed = oai.models.list().data[0]
    assert listed.id == model and listed.object == "model"
    assert version_of(listed) >= 1


def test_completion(oai: openai.OpenAI, model: str) -> None:
    r = oai.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.model == model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.text and c.index == 0 and c.finish_reason in ("stop", "length")
    assert "Paris" in c.text
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert version_of(r) >= 1 and r.system_fingerprint == "selm-v%d" % version_of(r)
    assert version_of(c) == version_of(r)


def test_chat_streamed_equals_non_streamed(oai: openai.OpenAI, model: str) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]
    kwargs = dict(model=model, messages=messages, max_tokens=24, temperature=1.0, seed=1234)
    full = oai.chat.completions.create(**kwargs)
    assert full.object == "chat.completion"
    text = full.choices[0].message.content
    assert full.choices[0].message.role == "assistant" and text
    roles, pieces, finish = [], [], None
    last_version = None
    for chunk in oai.chat.completions.create(stream=True, **kwargs):
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
                last_version = version_of(chunk)
    assert roles == ["assistant"]
    assert "".join(pieces) == text, "the same seed gives the same text, streamed or not"
    assert finish == full.choices[0].finish_reason
    assert last_version == version_of(full)


def test_streamed_completion_with_usage(oai: openai.OpenAI, model: str) -> None:
    chunks = list(oai.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    full = oai.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0)
    assert text == full.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completion_logprobs_shape(oai: openai.OpenAI, model: str) -> None:
    r = oai.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert all(x <= 0 for x in lp.token_logprobs)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3
        # Greedy: the chosen token is the most likely alternative.
        assert top[token] == pytest.approx(logprob) and max(top.values()) == pytest.approx(logprob)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens).startswith(r.choices[0].text)


def test_chat_logprobs_shape(oai: openai.OpenAI, model: str) -> None:
    r = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=6,
                                    temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert isinstance(t.token, str) and t.logprob <= 0
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    # Without logprobs: none.
    r = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=2)
    assert r.choices[0].logprobs is None


def test_streamed_chat_logprobs(oai: openai.OpenAI, model: str) -> None:
    tokens = []
    for chunk in oai.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=5,
                                             temperature=0, logprobs=True, top_logprobs=1, stream=True,
                                             stream_options={"include_usage": True}):
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                tokens += c.logprobs.content
        if chunk.usage:
            assert len(tokens) == chunk.usage.completion_tokens


def test_n_samples(oai: openai.OpenAI, model: str) -> None:
    r = oai.completions.create(model=model, prompt=["Hello", "Goodbye"], n=3, max_tokens=5, temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == list(range(6))
    assert 6 <= r.usage.completion_tokens <= 6 * 5
    assert all(version_of(c) == version_of(r) for c in r.choices)
    r = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], n=4, max_tokens=8,
                                    temperature=1.0, seed=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert len({c.message.content for c in r.choices}) > 1, "four samples at temperature 1 are not all alike"
    # Streamed: every choice gets its own role, text and finish chunk.
    finished = set()
    for chunk in oai.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], n=2,
                                             max_tokens=4, stream=True):
        for c in chunk.choices:
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1}


def test_stop_strings(oai: openai.OpenAI, model: str) -> None:
    full = oai.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0].text
    assert " 6" in full, full
    r = oai.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 6", "xyz"])
    assert r.choices[0].text == full[:full.index(" 6")] and r.choices[0].finish_reason == "stop"
    r = oai.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=" 6")
    assert r.choices[0].text == full[:full.index(" 6")]


def test_errors_are_openai_errors(oai: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=model, prompt="x", temperature=-1)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "temperature" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=65)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=model, prompt="x", max_tokens=100000)
    assert e.value.body["param"] == "max_tokens", e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                    tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert e.value.body["param"] == "tools" and e.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="gpt-4o", prompt="x")
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve(model)  # /v1/models/{id} is not a route


def test_bearer_token() -> None:
    s = Server(["--no-learner", "--http", "127.0.0.1:0"], token="s3cret-token")
    try:
        url = http_base_url(s)
        with openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as e:
                bad.models.list()
            assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        with openai.OpenAI(base_url=url, api_key="s3cret-token", max_retries=0) as good:
            model = good.models.list().data[0].id
            r = good.completions.create(model=model, prompt="Hi", max_tokens=2)
            assert r.usage.completion_tokens == 2 or r.choices[0].finish_reason == "stop"
    finally:
        s.cleanup()
