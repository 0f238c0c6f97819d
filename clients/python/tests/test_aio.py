"""The asyncio client (``selm_client.aio``) against a real `selm serve` (see conftest.py), beside the
blocking client: same results, same exceptions, many calls in flight on one connection; and the
online example run with ``--async``.

Plain tests that call ``asyncio.run`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPLY_TIMEOUT, model_path, selm_binary
from selm_client import (Chunk, ConnectionClosed, InvalidArgument, NotFound, Sample, Unauthenticated)
from selm_client.aio import AsyncClient, connect

PROMPT = "What is the capital of France? Answer in one word."
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def aclient(server, **kwargs) -> AsyncClient:  # type: ignore[no-untyped-def]
    kwargs.setdefault("timeout", REPLY_TIMEOUT)
    if "unix" not in kwargs and "address" not in kwargs:
        kwargs["address"] = server.address
    if server.token is not None:
        kwargs.setdefault("token", server.token)
    return AsyncClient(**kwargs)


def test_hello_tokenize_status_as_the_blocking_client(server) -> None:  # type: ignore[no-untyped-def]
    with server.client() as c:
        hello, ids, status = c.hello, c.tokenize(PROMPT, chat=True), c.status()

    async def main():  # type: ignore[no-untyped-def]
        async with aclient(server) as a, aclient(server, unix=server.unix) as u:
            assert a.hello == hello and u.hello == hello
            assert await a.tokenize(PROMPT, chat=True) == ids
            assert await u.tokenize([{"role": "user", "content": PROMPT}]) == ids
            assert await a.detokenize(await a.tokenize("Hello world")) == "Hello world"
            s = await a.status()
            assert s.policy_version == status.policy_version and s.engine_precision == status.engine_precision
        assert a.closed

    asyncio.run(main())


def test_generate_and_score_match_the_blocking_client(server) -> None:  # type: ignore[no-untyped-def]
    with server.client() as c:
        greedy = c.generate([PROMPT, "Name a colour."], chat=True, n=2, temperature=0.0, max_tokens=8)
        scored = c.score([(PROMPT, " Paris"), ("Hello", [905])], chat=True, top_logprobs=2)

    async def main():  # type: ignore[no-untyped-def]
        c = await connect(server.address, timeout=REPLY_TIMEOUT)
        try:
            samples = await c.generate([PROMPT, "Name a colour."], chat=True, n=2, temperature=0.0, max_tokens=8)
            assert [(s.prompt_index, s.sample_index, s.token_ids, s.text) for s in samples] == \
                [(s.prompt_index, s.sample_index, s.token_ids, s.text) for s in greedy]
            assert await c.score([(PROMPT, " Paris"), ("Hello", [905])], chat=True, top_logprobs=2) == scored
        finally:
            await c.close()

    asyncio.run(main())


def test_streaming_is_an_async_iterator(server) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with aclient(server) as c:
            stream = await c.generate(PROMPT, chat=True, n=2, temperature=0.0, max_tokens=6, stream=True)
            chunks, samples = {0: [], 1: []}, []
            async with stream:
                async for event in stream:
                    if isinstance(event, Chunk):
                        chunks[event.sample_index] += event.token_ids
                    else:
                        assert isinstance(event, Sample)
                        samples.append(event)
            assert stream.finished and stream.done is not None and stream.done.samples == 2
            assert len(samples) == 2
            for s in samples:
                assert chunks[s.sample_index] == s.token_ids and s.token_ids
            assert stream.done.completion_tokens == sum(len(s.token_ids) for s in samples)

    asyncio.run(main())


def test_many_calls_in_flight_on_one_connection(server) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with aclient(server) as c:
            prompts = ["Count to %d." % i for i in range(8)]
            results = await asyncio.gather(*(c.generate(p, chat=True, temperature=0.0, max_tokens=4) for p in prompts),
                                           c.status(), c.tokenize("Hello world"))
            alone = [await c.generate(p, chat=True, temperature=0.0, max_tokens=4) for p in prompts]
            assert [r[0].token_ids for r in results[:8]] == [a[0].token_ids for a in alone]
            assert results[9] == [19556, 905]

    asyncio.run(main())


def test_errors_are_the_blocking_clients_exceptions(server, auth_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with aclient(server) as c:
            with pytest.raises(InvalidArgument) as e:
                await c.generate("Hi", top_p=1.5)
            assert e.value.field == "sampling.top_p"
            with pytest.raises(NotFound):
                await c.generate("Hi", require_version=10**9, max_tokens=2)
            # The connection still serves after refused requests.
            assert await c.tokenize("Hello world") == [19556, 905]
        with pytest.raises(Unauthenticated):
            await connect(auth_server.address, token="wrong", timeout=REPLY_TIMEOUT)
        async with aclient(auth_server) as ok:
            assert ok.hello.model_name
        with pytest.raises(ConnectionClosed):
            await connect(unix=str(tmp_path / "nobody.sock"), timeout=5)
        closed = aclient(server)
        await closed.connect()
        await closed.close()
        with pytest.raises(ConnectionClosed):
            await closed.status()

    asyncio.run(main())


def test_closing_a_stream_cancels_the_generation(server) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with aclient(server) as c:
            stream = await c.generate("Tell me a very long story.", chat=True, max_tokens=2000, ignore_eos=True,
                                      stream=True)
            async with stream:
                first = await stream.__anext__()
                assert isinstance(first, Chunk)
            assert stream.finished
            # The server drops it: no sequence keeps running (polled; the deadline only bounds a failure).
            deadline = asyncio.get_running_loop().time() + 60
            while (await c.status()).running_sequences > 0:
                assert asyncio.get_running_loop().time() < deadline, "the closed stream kept running"
                await asyncio.sleep(0.1)

    asyncio.run(main())


def test_preferences_versions_and_checkpoints(learner_server) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with aclient(learner_server) as c:
            async with await c.subscribe_versions() as sub:
                first = await sub.get(timeout=REPLY_TIMEOUT)
                assert first is not None and first.version == c.hello.policy_version
                assert await sub.poll() is None
                ack = await c.submit_preferences([{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}],
                                                 chat=True)
                assert ack.rows == 1 and ack.last_sequence >= ack.first_sequence
                # The learner takes a step on that row and publishes a version (the timeout only bounds a failure).
                event = await sub.get(timeout=300)
                while event is not None and event.version <= first.version:
                    event = await sub.get(timeout=300)
                assert event is not None and event.learner_step == 1
                ckpt = await c.save_checkpoint("aio")
                assert ckpt.path.endswith("aio") and (ckpt.learner_step, ckpt.version) == (1, event.version)
                version = await c.refresh_weights(ckpt.path)
                assert version > event.version
                pushed = await sub.get(timeout=300)  # the push for the refreshed version
                assert pushed is not None and pushed.version == version
                assert (await c.status()).policy_version == version
            assert sub.closed and await sub.get() is None

    asyncio.run(main())


def test_online_example_runs_on_the_async_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`examples/online_selm.py --async`: starts its own `selm serve`, one short round on selm_client.aio."""
    r = subprocess.run([sys.executable, str(EXAMPLES / "online_selm.py"), "--async", "--selm", str(selm_binary()),
                        "--model", str(model_path()), "--out", str(tmp_path), "--rounds", "1", "--batch", "2",
                        "-n", "2", "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "round   1: rollouts from version" in r.stdout, r.stdout
    assert "held-out reward" in r.stdout and (tmp_path / "rounds.jsonl").is_file()
