"""Every call and error path of the Python client, against a real `selm serve` (see conftest.py)."""

from __future__ import annotations

import math
import threading
import time

import pytest

import selm_client
from conftest import offline_greedy
from selm_client import (Chunk, Client, ConnectionClosed, FrameTooLarge, InvalidArgument, Malformed, NotFound,
                         OutOfRange, Sample, SelmError, Unauthenticated, UnsupportedVersion)
from selm_client import selm_pb2 as pb

PROMPT = "What is the capital of France? Answer in one word."


# ─── Hello, endpoints ───────────────────────────────────────────────────────────────────────────

def test_hello_describes_the_model(client: Client) -> None:
    h = client.hello
    assert h.protocol_version == 1
    assert h.model_name and h.model_path.endswith(".gguf")
    assert h.vocab_size == 49152
    assert h.context_length >= 2048
    assert h.chat_template
    assert h.max_frame_bytes == 16 << 20
    assert h.policy_version >= 0
    assert h.engine_precision == "f32"  # the test server pins f32 (conftest); the log-probs are f32's
    assert client.status().engine_precision == "f32"


def test_tcp_and_unix_socket_serve_the_same(server) -> None:  # type: ignore[no-untyped-def]
    with server.client(address=server.address) as tcp, server.client(unix=server.unix) as unix:
        assert tcp.tokenize("Hello world") == unix.tokenize("Hello world")
        assert tcp.hello == unix.hello or tcp.hello.model_name == unix.hello.model_name


def test_context_manager_closes(server) -> None:  # type: ignore[no-untyped-def]
    with server.client() as c:
        assert not c.closed
    assert c.closed
    with pytest.raises(ConnectionClosed):
        c.status()


def test_connecting_to_nothing_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConnectionClosed):
        Client(unix=str(tmp_path / "nobody.sock"), timeout=5)


# ─── Tokenizer ──────────────────────────────────────────────────────────────────────────────────

def test_tokenize_and_detokenize_round_trip(client: Client) -> None:
    ids = client.tokenize("Hello world")
    assert ids == [19556, 905]
    assert client.detokenize(ids) == "Hello world"
    chat = client.tokenize("Hi", chat=True)
    assert len(chat) > len(client.tokenize("Hi"))
    messages = client.tokenize([{"role": "user", "content": "Hi"}])
    assert messages == chat
    special = client.tokenize("<|im_start|>", add_special=True)
    assert len(special) == 1
    assert len(client.tokenize("<|im_start|>")) > 1
    assert client.tokenize("") == []


def test_detokenize_out_of_range(client: Client) -> None:
    with pytest.raises(OutOfRange) as e:
        client.detokenize([1, 10 ** 8])
    assert e.value.code == 13 and e.value.code_name == "OUT_OF_RANGE"
    assert e.value.field == "ids[1]"
    assert client.detokenize([19556]) == "Hello"  # the connection carries on


# ─── Generation ─────────────────────────────────────────────────────────────────────────────────

def test_generate_returns_samples(client: Client) -> None:
    samples = client.generate(PROMPT, chat=True, max_tokens=12, temperature=0)
    assert len(samples) == 1
    s = samples[0]
    assert isinstance(s, Sample)
    assert (s.prompt_index, s.sample_index) == (0, 0)
    assert 1 <= len(s.token_ids) <= 12
    assert s.completion_tokens == len(s.token_ids) == len(s.logprobs)
    assert all(lp <= 0 for lp in s.logprobs)
    assert s.finish_reason in ("eos", "length")
    assert s.prompt_tokens > 10  # templated
    assert s.version == s.first_version == client.status().policy_version  # the shared server publishes nothing
    assert s.text == client.detokenize(s.token_ids) or s.finish_reason == "eos"
    assert "Paris" in s.text


def test_generate_many_prompts_and_samples(client: Client) -> None:
    ids = client.tokenize("The sky is")
    prompts = ["Once upon a time", ids, [{"role": "user", "content": "Say hi."}]]
    samples = client.generate(prompts, n=2, max_tokens=4, temperature=0.8, seed=7)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(p, k) for p in range(3) for k in range(2)]
    assert samples[2].prompt_tokens == len(ids)  # ids are used as they are
    assert all(1 <= s.completion_tokens <= 4 for s in samples)


def test_generate_seed_is_reproducible(client: Client) -> None:
    a = client.generate("Tell me a story", max_tokens=10, temperature=1.0, seed=1234)
    b = client.generate("Tell me a story", max_tokens=10, temperature=1.0, seed=1234, require_version=a[0].version)
    assert b[0].version == a[0].version
    assert a[0].token_ids == b[0].token_ids
    assert a[0].logprobs == b[0].logprobs


def test_generate_sampling_options_are_accepted(client: Client) -> None:
    samples = client.generate("List three colors:", max_tokens=8, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05,
                              repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.2, seed=3,
                              stop=["\n\n"], stop_token_ids=[2], top_logprobs=3)
    s = samples[0]
    assert len(s.top_logprobs) == len(s.token_ids)
    assert all(len(t) == 3 for t in s.top_logprobs)
    assert all(list(t.values()) == sorted(t.values(), reverse=True) for t in s.top_logprobs)


def test_generate_ignore_eos_runs_to_length(client: Client) -> None:
    s = client.generate(PROMPT, chat=True, max_tokens=24, temperature=0, ignore_eos=True)[0]
    assert s.finish_reason == "length" and s.completion_tokens == 24


def test_generate_stream_yields_chunks_then_samples(client: Client) -> None:
    with client.generate(PROMPT, chat=True, max_tokens=16, temperature=0, stream=True) as stream:
        events = list(stream)
    chunks = [e for e in events if isinstance(e, Chunk)]
    samples = [e for e in events if isinstance(e, Sample)]
    assert chunks and len(samples) == 1
    assert events[-1] is samples[0]
    s = samples[0]
    assert [t for c in chunks for t in c.token_ids] == s.token_ids
    assert [lp for c in chunks for lp in c.logprobs] == pytest.approx(s.logprobs)
    assert "".join(c.text_delta for c in chunks) == s.text
    assert stream.done is not None and stream.done.samples == 1
    assert stream.done.completion_tokens == s.completion_tokens
    # Without streaming, greedy gives the same tokens (on the same weights).
    again = client.generate(PROMPT, chat=True, max_tokens=16, temperature=0, require_version=s.version)[0]
    assert again.version == s.version
    assert again.token_ids == s.token_ids


def test_cancel_a_running_generation(client: Client) -> None:
    stream = client.generate("Count to one thousand:", max_tokens=400, ignore_eos=True, temperature=0, stream=True)
    first = next(stream)
    assert isinstance(first, Chunk)
    assert stream.cancel() is True
    rest = list(stream)
    samples = [e for e in rest if isinstance(e, Sample)]
    assert len(samples) == 1 and samples[0].finish_reason == "cancelled"
    assert samples[0].completion_tokens < 400
    assert stream.done is not None
    assert client.cancel(stream.request_id) is False  # no longer running
    assert client.cancel(987654) is False


def test_closing_a_stream_early_cancels_it(client: Client) -> None:
    with client.generate("Count to one thousand:", max_tokens=400, ignore_eos=True, stream=True) as stream:
        next(stream)
    assert stream.finished
    assert client.tokenize("still fine") == client.tokenize("still fine")
    deadline = time.monotonic() + 30
    while client.status().running_sequences and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.status().running_sequences == 0


@pytest.mark.parametrize("kwargs, field", [
    (dict(top_p=1.5), "sampling.top_p"),
    (dict(top_p=0.0), "sampling.top_p"),
    (dict(temperature=-1.0), "sampling.temperature"),
    (dict(temperature=math.inf), "sampling.temperature"),
    (dict(min_p=2.0), "sampling.min_p"),
    (dict(repetition_penalty=0.0), "sampling.repetition_penalty"),
    (dict(max_tokens=0), "sampling.max_tokens"),
    (dict(n=65), "n"),
    (dict(top_logprobs=21), "top_logprobs"),
    (dict(stop=["ok", ""]), "stop[1]"),
])
def test_generate_bad_parameters_name_the_field(client: Client, kwargs, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as e:
        client.generate("Hi", **kwargs)
    assert e.value.field == field
    assert e.value.code == 1 and e.value.request_id
    assert field in str(e.value)


def test_generate_bad_prompts(client: Client) -> None:
    with pytest.raises(InvalidArgument) as e:
        client.generate([])
    assert e.value.field == "prompts"
    with pytest.raises(InvalidArgument) as e:
        client.generate(["fine", []])
    assert e.value.field == "prompts[1].ids"
    with pytest.raises(InvalidArgument) as e:
        client.generate([[{"role": "", "content": "x"}]])
    assert e.value.field.startswith("prompts[0].messages")
    with pytest.raises(OutOfRange) as e:
        client.generate([[1, 2, 10 ** 6]], max_tokens=2)
    assert e.value.field.startswith("prompts[0]")
    with pytest.raises(InvalidArgument) as e:  # caught before sending: not a uint32
        client.generate("Hi", n=-1)
    assert e.value.field == "n" and e.value.request_id is None
    with pytest.raises(InvalidArgument):
        client.generate(3.5)  # type: ignore[arg-type]


def test_generate_on_a_version_that_is_not_alive(client: Client) -> None:
    with pytest.raises(NotFound) as e:
        client.generate("Hi", max_tokens=2, require_version=10 ** 9)
    assert e.value.field == "require_version"
    current = client.status().policy_version
    assert client.generate("Hi", max_tokens=2, require_version=current)[0].version == current


def test_prompt_longer_than_the_context(client: Client) -> None:
    with pytest.raises(OutOfRange):
        client.generate([[1] * (client.hello.context_length + 1)], max_tokens=1)


# ─── Scoring ────────────────────────────────────────────────────────────────────────────────────

def test_score_matches_generation_logprobs(client: Client) -> None:
    """Scoring a generated continuation gives the log-probs the generation reported, at the engine's own
    agreement (1e-4 per token, EngineTests), on the same version."""
    prompt = client.tokenize(PROMPT, chat=True)
    s = client.generate([prompt], max_tokens=8, temperature=0)[0]
    r = client.score([(prompt, s.token_ids)], top_logprobs=2, version=s.version)
    assert r.version == s.version
    item = r.items[0]
    assert item.token_ids == s.token_ids
    assert item.logprobs == pytest.approx(s.logprobs, abs=1e-4)
    assert item.total_logprob == pytest.approx(sum(item.logprobs), abs=1e-4)
    assert all(len(t) == 2 for t in item.top_logprobs)
    # Greedy tokens are the most likely ones.
    assert all(next(iter(t)) == tok for t, tok in zip(item.top_logprobs, item.token_ids))


def test_score_text_items(client: Client) -> None:
    r = client.score([("The capital of France is", " Paris"),
                      {"prompt": "The capital of France is", "continuation": " Berlin"}])
    paris, berlin = r.items
    assert paris.total_logprob > berlin.total_logprob
    assert paris.total_logprob < 0


def test_score_errors(client: Client) -> None:
    with pytest.raises(InvalidArgument) as e:
        client.score([])
    assert e.value.field == "items"
    with pytest.raises(InvalidArgument) as e:
        client.score([("Hi", "")])
    assert e.value.field.startswith("items[0].continuation")
    with pytest.raises(InvalidArgument) as e:
        client.score([{"prompt": "Hi"}])
    assert e.value.field == "items[0].continuation"
    with pytest.raises(InvalidArgument) as e:
        client.score([("Hi", "x")], top_logprobs=21)
    assert e.value.field == "top_logprobs"


# ─── Preferences ────────────────────────────────────────────────────────────────────────────────

def test_submit_preferences_is_acknowledged_in_order(client: Client) -> None:
    rows = [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "reference_response": "four", "weight": 2.0},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!",
         "rejected": "Go away.", "extra": "ignored"},
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6], "reference_ids": [7], "source": "test"},
    ]
    ack = client.submit_preferences(rows, chat=True, source="pytest")
    assert ack.rows == 3
    assert ack.first_sequence >= 1 and ack.last_sequence >= ack.first_sequence
    again = client.submit_preferences(rows[:1])
    assert again.first_sequence > ack.last_sequence
    assert client.status().wal_last_sequence >= again.last_sequence


@pytest.mark.parametrize("row, field", [
    ({"prompt": "p", "chosen": "", "rejected": "r"}, "rows[0].chosen"),
    ({"prompt": "p", "chosen": "c"}, "rows[0].rejected"),
    ({"chosen": "c", "rejected": "r"}, "rows[0].prompt"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "weight": -1.0}, "rows[0].weight"),
    ({"prompt_ids": [], "chosen_ids": [1], "rejected_ids": [2]}, "rows[0].prompt"),
])
def test_submit_bad_rows_name_the_field(client: Client, row, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as e:
        client.submit_preferences([row])
    assert e.value.field.startswith(field)


def test_submit_nothing(client: Client) -> None:
    with pytest.raises(InvalidArgument) as e:
        client.submit_preferences([])
    assert e.value.field == "rows"


def test_submit_token_ids_out_of_range(client: Client) -> None:
    with pytest.raises(OutOfRange) as e:
        client.submit_preferences([{"prompt_ids": [1], "chosen_ids": [10 ** 6], "rejected_ids": [2]}])
    assert e.value.field.startswith("rows[0].chosen")


# ─── Operations ─────────────────────────────────────────────────────────────────────────────────

def test_status(client: Client) -> None:
    s = client.status()
    assert s.policy_version == client.hello.policy_version or s.policy_version > client.hello.policy_version
    assert s.connections >= 1
    assert s.uptime_seconds > 0
    assert s.live_versions >= 1
    assert s.wal_consumed_sequence <= s.wal_last_sequence
    assert isinstance(s.learner_metrics, dict)
    assert s.data_dir_bytes > 0 and s.disk_free_bytes > 0 and s.checkpoints >= 0


def test_subscribe_versions_gets_the_current_version_and_runs_beside_other_calls(client: Client) -> None:
    with client.subscribe_versions() as sub:
        first = sub.get(timeout=30)
        assert first is not None
        assert first.version <= client.status().policy_version
        assert first.unix_time > 1.6e9
        # Other calls on the same connection are answered while the subscription is open.
        assert client.tokenize("Hello world") == [19556, 905]
        assert sub.get(timeout=0.2) is None  # this server publishes nothing: only the current version came
        # poll() never waits: nothing will ever arrive here, so a poll that waited would not return
        # (the join's bound only turns such a hang into a failure).
        polled: list = []
        t = threading.Thread(target=lambda: polled.append(sub.poll()))
        t.start()
        t.join(timeout=60)
        assert not t.is_alive() and polled == [None]
        assert not sub.closed
    assert sub.closed and sub.get() is None and list(sub) == []


def test_subscription_closed_from_another_thread(client: Client) -> None:
    sub = client.subscribe_versions()
    next(sub)
    got = []
    t = threading.Thread(target=lambda: got.extend(list(sub)))
    t.start()
    wait_until_blocked(sub)
    sub.close()
    t.join(timeout=10)
    assert not t.is_alive() and got == []


def wait_until_blocked(sub: selm_client.VersionSubscription) -> None:
    """Returns once a thread waits in ``sub``'s mailbox (the deadline is only a failure bound)."""
    waiting = sub._pending.queue.not_empty  # the Condition a blocked get() waits on
    deadline = time.monotonic() + 60
    while not waiting._waiters:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "no thread blocked on the subscription within 60 s"
        time.sleep(0.001)


def next_version(sub: selm_client.VersionSubscription, after: int) -> selm_client.VersionEvent:
    """The next version event above ``after`` (the timeout is only a failure bound)."""
    while True:
        event = sub.get(timeout=300)
        assert event is not None, "no version after %d within 300 s" % after
        if event.version > after:
            return event


def test_save_checkpoint_and_refresh_weights(learner_server) -> None:  # type: ignore[no-untyped-def]
    """SaveCheckpoint after a learner step, RefreshWeights back to it once the learner has moved on: the
    refresh publishes a new version serving the checkpoint's weights — its greedy answer and log-probs
    equal what ``selm generate`` computes from the checkpoint offline, and differ from the version served
    before. This server always runs a learner: UNAVAILABLE from SaveCheckpoint is a failure."""
    question = "What is the capital of France?"
    with learner_server.client() as client, client.subscribe_versions() as sub:
        start = sub.get(timeout=30)
        assert start is not None
        client.submit_preferences([{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}], chat=True)
        v1 = next_version(sub, start.version)
        assert v1.learner_step == 1
        ckpt = client.save_checkpoint("ckpt-pytest")
        assert ckpt.path.endswith("ckpt-pytest")
        assert (ckpt.learner_step, ckpt.version) == (1, v1.version)
        # The learner moves on: the served weights are no longer the checkpoint's.
        client.submit_preferences([{"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Seven."}], chat=True)
        v2 = next_version(sub, v1.version)
        assert v2.learner_step == 2
        expected = offline_greedy(str(learner_server.data_dir / ckpt.path), question, 8)

        def greedy(version: int) -> Sample:
            return client.generate(question, chat=True, max_tokens=8, temperature=0, require_version=version)[0]

        def distance(s: Sample) -> float:
            if s.token_ids != expected["ids"]:
                return math.inf
            return max(abs(a - b) for a, b in zip(s.logprobs, expected["logprobs"]))

        assert distance(greedy(v2.version)) > 1e-3, "the learner's second step must change the served outputs"
        version = client.refresh_weights(ckpt.path)
        assert version > v2.version
        assert next_version(sub, v2.version).version == version  # the push for the refreshed version
        assert client.status().policy_version == version
        after = greedy(version)
        assert after.version == version
        assert after.token_ids == expected["ids"], "the refreshed version does not serve the checkpoint's weights"
        assert distance(after) <= 1e-4


def test_save_and_refresh_paths_are_confined(client: Client) -> None:
    with pytest.raises(NotFound) as e:
        client.refresh_weights("no-such-checkpoint")
    assert e.value.field == "checkpoint"
    for bad in ("/etc", "../outside", ""):
        with pytest.raises((InvalidArgument, selm_client.PermissionDenied)) as e2:
            client.refresh_weights(bad)
        assert e2.value.field == "checkpoint"
    with pytest.raises((InvalidArgument, selm_client.PermissionDenied)) as e3:
        client.save_checkpoint("../outside")
    assert e3.value.field == "name"


# ─── Concurrency ────────────────────────────────────────────────────────────────────────────────

def test_many_calls_in_flight_on_one_connection(client: Client) -> None:
    results: dict = {}
    errors: list = []

    def work(i: int) -> None:
        try:
            text = "number %d" % i
            results[i] = client.detokenize(client.tokenize(text)) == text
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    stream = client.generate("Count to one hundred:", max_tokens=32, ignore_eos=True, stream=True)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    events = list(stream)
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 16 and all(results.values())
    assert isinstance(events[-1], Sample) and events[-1].completion_tokens == 32


def test_several_clients(server) -> None:  # type: ignore[no-untyped-def]
    clients = [server.client() for _ in range(4)]
    try:
        assert clients[0].status().connections >= 4
        outs = [c.generate("Hi", max_tokens=3, temperature=0, seed=1)[0] for c in clients]
        assert len({o.version for o in outs}) == 1  # the shared server publishes nothing
        assert all(o.token_ids == outs[0].token_ids for o in outs)
    finally:
        for c in clients:
            c.close()


# ─── Authentication, protocol errors, connection failures ───────────────────────────────────────

def test_unauthenticated_without_or_with_a_wrong_token(auth_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unauthenticated) as e:
        Client(auth_server.address, timeout=30)
    assert e.value.code == 2
    with pytest.raises(Unauthenticated):
        Client(unix=auth_server.unix, token="wrong", timeout=30)
    with auth_server.client() as c:  # the right token
        assert c.tokenize("Hello world") == [19556, 905]


def test_unsupported_protocol_version(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(selm_client.client, "PROTOCOL_VERSION", 99)
    with pytest.raises(UnsupportedVersion) as e:
        server.client()
    assert e.value.code == 8


def test_request_over_the_servers_frame_limit_is_refused_before_sending(client: Client) -> None:
    huge = "x" * (client.hello.max_frame_bytes + 10)
    with pytest.raises(FrameTooLarge):
        client.tokenize(huge)
    assert client.detokenize(client.tokenize("ok")) == "ok"  # the connection carries on


def test_oversize_frame_header_gets_frame_too_large(server) -> None:  # type: ignore[no-untyped-def]
    with server.client() as c:
        sub = c.subscribe_versions()
        sub.get(timeout=30)
        c._send((c.hello.max_frame_bytes + 1).to_bytes(4, "big"))  # a header announcing too much
        with pytest.raises((FrameTooLarge, ConnectionClosed)) as e:
            sub.get(timeout=30)
        assert isinstance(e.value, FrameTooLarge) or "closed" in str(e.value)


def test_malformed_frame_gets_malformed(server) -> None:  # type: ignore[no-untyped-def]
    with server.client() as c:
        sub = c.subscribe_versions()
        sub.get(timeout=30)
        garbage = b"\xff\xff\xff\xff"
        c._send(len(garbage).to_bytes(4, "big") + garbage)
        with pytest.raises(Malformed) as e:
            sub.get(timeout=30)
        assert e.value.code == 6
        # A message of the wrong direction is refused with UNKNOWN_BODY and its id.
        env = pb.Envelope(status_reply=pb.StatusReply())
        with pytest.raises(selm_client.UnknownBody):
            c._call(env, "status_reply")


def test_server_going_away_ends_waiting_calls(fresh_server) -> None:  # type: ignore[no-untyped-def]
    c = fresh_server.client()
    sub = c.subscribe_versions()
    sub.get(timeout=30)
    got: list = []

    def wait() -> None:
        try:
            sub.get(timeout=60)
        except SelmError as e:
            got.append(e)

    t = threading.Thread(target=wait)
    t.start()
    assert fresh_server.stop() == 0  # SIGTERM: a clean exit
    t.join(timeout=30)
    assert len(got) == 1 and isinstance(got[0], ConnectionClosed)
    with pytest.raises(ConnectionClosed):
        c.status()
    c.close()
