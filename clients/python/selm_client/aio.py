"""The asyncio client of ``selm serve``: the calls of :class:`selm_client.Client` as coroutines.

One :class:`AsyncClient` holds one connection (TCP or Unix socket) and one reader task, which hands
every frame the server sends to the request with the same id; so any number of calls may be awaited
at once on one connection (``asyncio.gather`` many generations, read a version subscription while
generating), which is what rollout drivers do.

>>> import asyncio
>>> from selm_client.aio import AsyncClient
>>> async def main():
...     async with AsyncClient("127.0.0.1:7070") as c:
...         a, b = await asyncio.gather(c.generate("Hi!", chat=True, max_tokens=16),
...                                     c.generate("Bye!", chat=True, max_tokens=16))
...         async with await c.generate("Count to five.", chat=True, stream=True) as s:
...             async for event in s:          # Chunk objects as tokens come, Sample objects at the end
...                 print(event)
>>> asyncio.run(main())

Requests are built and replies read by the same code as the blocking client's (``selm_client.client``:
``generate_request``, ``score_request``, ... and ``selm_client.framing``), and failures raise the
same exceptions (:mod:`selm_client.errors`). Every object of this module belongs to the event loop
it was created on.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from google.protobuf.message import DecodeError

from . import selm_pb2 as pb
from .client import (CLIENT_NAME, DEFAULT_ADDRESS, Message, PromptLike, ResponseLike, _ack, _chunk, _parse_address,
                     _sample, _version_event, checkpoint_result, detokenize_request, generate_done, generate_request,
                     hello_envelope, hello_info, preferences_request, score_request, score_result, status_result,
                     tokenize_request)
from .errors import ConnectionClosed, ProtocolError, SelmError, Timeout, error_from_code, error_like
from .framing import DEFAULT_MAX_FRAME_BYTES, FrameReader, decode_body, encode_frame
from .types import (Checkpoint, Chunk, GenerateDone, HelloInfo, PreferenceAck, Sample, ScoreResult, Status,
                    VersionEvent)

__all__ = ["AsyncClient", "AsyncGenerateStream", "AsyncVersionSubscription", "connect"]

_CLOSED = object()  # queue sentinel: the request's stream was closed by its owner


class _Pending:
    """The mailbox of one request: the reader task puts envelopes (or a failure) into it."""

    __slots__ = ("id", "queue")

    def __init__(self, request_id: int) -> None:
        self.id = request_id
        self.queue: "asyncio.Queue[Any]" = asyncio.Queue()


class AsyncGenerateStream:
    """The replies of one generation as an async iterator: :class:`~selm_client.Chunk` objects (only
    with ``stream=True``) and one :class:`~selm_client.Sample` per (prompt, sample) as it finishes.
    Iteration ends after the server's ``GenerateDone`` (totals in :attr:`done`); an error from the
    server is raised from the iteration.

    Use ``async with`` (or call :meth:`close`) when you may stop reading early: closing a stream that
    has not ended cancels the generation on the server. Cancelling the task that iterates does too.
    """

    def __init__(self, client: "AsyncClient", pending: _Pending) -> None:
        self._client = client
        self._pending = pending
        self._finished = False
        #: The request id (for :meth:`AsyncClient.cancel`).
        self.request_id: int = pending.id
        #: Every sample received so far.
        self.samples: List[Sample] = []
        #: The totals, once the generation has ended.
        self.done: Optional[GenerateDone] = None

    def __aiter__(self) -> "AsyncGenerateStream":
        return self

    async def __anext__(self) -> Union[Chunk, Sample]:
        if self._finished:
            raise StopAsyncIteration
        try:
            env = await self._client._wait(self._pending, self._client.timeout)
        except (Timeout, asyncio.CancelledError):
            self.close()  # the caller gives up: stop the generation on the server too
            raise
        except BaseException:
            self._finish()
            raise
        if env is _CLOSED:
            self._finished = True
            raise StopAsyncIteration
        kind = env.WhichOneof("body")
        if kind == "generate_chunk":
            return _chunk(env.generate_chunk)
        if kind == "sample_result":
            sample = _sample(env.sample_result)
            self.samples.append(sample)
            return sample
        self._finish()
        if kind == "generate_done":
            self.done = generate_done(env.generate_done)
            raise StopAsyncIteration
        raise self._client._unexpected(env, "generate_chunk, sample_result or generate_done")

    def _finish(self) -> None:
        self._finished = True
        self._client._unregister(self._pending)

    @property
    def finished(self) -> bool:
        """True once the generation has ended (done, failed, or closed)."""
        return self._finished

    async def collect(self) -> List[Sample]:
        """Reads the stream to its end; returns the samples ordered by (prompt_index, sample_index)."""
        async with self:
            async for _ in self:
                pass
        return sorted(self.samples, key=lambda x: (x.prompt_index, x.sample_index))

    async def cancel(self) -> bool:
        """Asks the server to cancel this generation; keep iterating to receive the (cancelled)
        samples and the end. Returns whether the server still had it running."""
        if self._finished:
            return False
        return await self._client.cancel(self.request_id)

    def close(self) -> None:
        """Stops reading: cancels the generation on the server if it has not ended."""
        if self._finished:
            return
        self._finish()
        self._pending.queue.put_nowait(_CLOSED)
        self._client._send_nowait(pb.Envelope(id=self._client._next_id(), cancel=pb.Cancel(target_id=self.request_id)))

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class AsyncVersionSubscription:
    """Weight-version events as an async iterator: the current version first, then one per published
    version. ``async for`` waits without limit and ends when the subscription is closed;
    :meth:`get` waits at most a given time and :meth:`poll` not at all. :meth:`close` (or leaving the
    ``async with`` block) cancels the subscription on the server.
    """

    def __init__(self, client: "AsyncClient", pending: _Pending) -> None:
        self._client = client
        self._pending = pending
        self._closed = False
        #: The request id of the subscription.
        self.request_id: int = pending.id

    def __aiter__(self) -> "AsyncVersionSubscription":
        return self

    async def __anext__(self) -> VersionEvent:
        event = await self.get(timeout=None)
        if event is None:
            raise StopAsyncIteration
        return event

    async def get(self, timeout: Optional[float] = None) -> Optional[VersionEvent]:
        """The next event, waiting at most ``timeout`` seconds (``None``: no limit; ``0``: only an
        event that has already arrived). ``None`` if none came within ``timeout``, or once the
        subscription is closed (:attr:`closed`).

        Raises:
            ConnectionClosed: the connection closed.
        """
        if self._closed:
            return None
        try:
            env = await self._client._wait(self._pending, timeout, unregister_on_timeout=False)
        except Timeout:
            return None
        except BaseException:
            self._closed = True
            self._client._unregister(self._pending)
            raise
        if env is _CLOSED:
            self._closed = True
            return None
        if env.WhichOneof("body") == "version_event":
            return _version_event(env.version_event)
        self._closed = True
        self._client._unregister(self._pending)
        raise self._client._unexpected(env, "version_event")

    async def poll(self) -> Optional[VersionEvent]:
        """The next event if one has arrived, else ``None`` (never waits)."""
        return await self.get(timeout=0)

    @property
    def closed(self) -> bool:
        """True once the subscription is closed (by :meth:`close`, or by the connection ending)."""
        return self._closed

    def close(self) -> None:
        """Cancels the subscription; a task waiting in :meth:`get` or ``async for`` stops."""
        if self._closed:
            return
        self._closed = True
        self._client._unregister(self._pending)
        self._pending.queue.put_nowait(_CLOSED)
        self._client._send_nowait(pb.Envelope(id=self._client._next_id(), cancel=pb.Cancel(target_id=self.request_id)))

    async def __aenter__(self) -> "AsyncVersionSubscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """A connection to ``selm serve`` for asyncio programs.

    Args (as :class:`selm_client.Client`'s):
        address: ``"HOST:PORT"`` (default ``"127.0.0.1:7070"``); ignored when ``unix`` is given.
        unix: path of the server's Unix socket.
        token: the server's shared secret (``selm serve --auth-token-file``), if it has one.
        timeout: seconds to wait for each reply message (``None``: no limit). Also bounds connecting.
        client_name: sent in Hello, for the server's logs.
        max_frame_bytes: the largest frame this client accepts from the server.

    Construct it, then ``await client.connect()`` — or ``async with AsyncClient(...) as client``, or
    ``client = await selm_client.aio.connect(...)``. Connecting sends Hello; :attr:`hello` holds the
    server's reply. Every call is a coroutine; any number may be in flight on the one connection.

    Raises (from :meth:`connect`): :class:`~selm_client.Unauthenticated`,
    :class:`~selm_client.UnsupportedVersion`, :class:`~selm_client.ConnectionClosed`.
    """

    def __init__(self, address: Optional[str] = None, *, unix: Optional[str] = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, client_name: str = CLIENT_NAME,
                 max_frame_bytes: int = 256 << 20) -> None:
        self.timeout = timeout
        self.endpoint = "unix:" + unix if unix is not None else (address or DEFAULT_ADDRESS)
        #: The server's Hello reply (set by :meth:`connect`).
        self.hello: Optional[HelloInfo] = None
        self._address = address or DEFAULT_ADDRESS
        self._unix = unix
        self._token = token
        self._client_name = client_name
        self._ids = itertools.count(1)
        self._pending: Dict[int, _Pending] = {}
        self._failure: Optional[SelmError] = None
        self._server_max_frame = DEFAULT_MAX_FRAME_BYTES
        self._reader_limit = max_frame_bytes
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._read_task: Optional["asyncio.Task[None]"] = None
        self._drain_lock: Optional[asyncio.Lock] = None

    # ── Life cycle ──

    async def connect(self) -> "AsyncClient":
        """Opens the connection and says Hello; returns the client."""
        if self._writer is not None:
            raise ProtocolError("already connected")
        connect_timeout = self.timeout if self.timeout is not None else 30.0
        try:
            if self._unix is not None:
                opening = asyncio.open_unix_connection(self._unix)
            else:
                host, port = _parse_address(self._address)
                opening = asyncio.open_connection(host, port)
            self._reader, self._writer = await asyncio.wait_for(opening, connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectionClosed("cannot connect to %s: %s" % (self._unix or self._address,
                                                                 e or "timed out")) from None
        if self._unix is None:
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._drain_lock = asyncio.Lock()
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop(), name="selm-client-reader")
        try:
            reply = (await self._call(hello_envelope(self._token, self._client_name), "hello_reply")).hello_reply
        except BaseException:
            await self.close()
            raise
        self.hello = hello_info(reply)
        if reply.max_frame_bytes:
            self._server_max_frame = reply.max_frame_bytes
        return self

    async def close(self) -> None:
        """Closes the connection. Calls still waiting end with :class:`~selm_client.ConnectionClosed`;
        the server cancels this connection's running generations."""
        self._fail(ConnectionClosed("the client closed the connection"))
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (OSError, ConnectionError):
                pass
        task = self._read_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by either side)."""
        return self._failure is not None

    async def __aenter__(self) -> "AsyncClient":
        if self._writer is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "AsyncClient(%s%s)" % (self.endpoint, ", closed" if self.closed else "")

    # ── Calls (arguments, results and exceptions as :class:`selm_client.Client`'s) ──

    async def generate(self, prompts: Union[PromptLike, Sequence[PromptLike]], *, n: int = 1, chat: bool = False,
                       max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                       top_p: Optional[float] = None, top_k: Optional[int] = None, min_p: Optional[float] = None,
                       seed: Optional[int] = None, stop: Optional[Sequence[str]] = None,
                       stop_token_ids: Optional[Sequence[int]] = None, ignore_eos: bool = False,
                       top_logprobs: int = 0, require_version: Optional[int] = None, recompute: bool = False,
                       repetition_penalty: Optional[float] = None, presence_penalty: Optional[float] = None,
                       frequency_penalty: Optional[float] = None,
                       stream: bool = False) -> Union[List[Sample], AsyncGenerateStream]:
        """Generates ``n`` samples for each prompt (see :meth:`selm_client.Client.generate`).

        Returns:
            Without ``stream``: the samples, ordered by (prompt_index, sample_index). With ``stream``:
            an :class:`AsyncGenerateStream` (the request is already sent) yielding chunks and samples
            with ``async for``.
        """
        req = generate_request(prompts, n=n, chat=chat, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                               top_k=top_k, min_p=min_p, seed=seed, stop=stop, stop_token_ids=stop_token_ids,
                               ignore_eos=ignore_eos, top_logprobs=top_logprobs, require_version=require_version,
                               recompute=recompute, repetition_penalty=repetition_penalty,
                               presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, stream=stream)
        s = AsyncGenerateStream(self, await self._start(pb.Envelope(generate=req)))
        if stream:
            return s
        return await s.collect()

    async def score(self, items: Sequence[Union[Tuple[PromptLike, ResponseLike], Mapping[str, Any]]], *,
                    chat: bool = False, version: Optional[int] = None, top_logprobs: int = 0,
                    entropy: bool = False) -> ScoreResult:
        """Log-probabilities of given continuations (see :meth:`selm_client.Client.score`)."""
        req = score_request(items, chat=chat, version=version, top_logprobs=top_logprobs, entropy=entropy)
        return score_result((await self._call(pb.Envelope(score=req), "score_reply")).score_reply)

    async def tokenize(self, text: Union[str, Sequence[Message]] = "", *, chat: bool = False,
                       add_special: bool = False) -> List[int]:
        """Token ids of a text or a conversation (see :meth:`selm_client.Client.tokenize`)."""
        req = tokenize_request(text, chat=chat, add_special=add_special)
        return list((await self._call(pb.Envelope(tokenize=req), "tokenize_reply")).tokenize_reply.ids)

    async def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids."""
        reply = await self._call(pb.Envelope(detokenize=detokenize_request(ids)), "detokenize_reply")
        return reply.detokenize_reply.text

    async def submit_preferences(self, rows: Sequence[Mapping[str, Any]], *, chat: bool = False,
                                 source: Optional[str] = None) -> PreferenceAck:
        """Appends preference rows to the server's log; returns once they are durable (see
        :meth:`selm_client.Client.submit_preferences` for the rows)."""
        req = preferences_request(rows, chat=chat, source=source)
        return _ack((await self._call(pb.Envelope(submit_preferences=req), "preference_ack")).preference_ack)

    async def status(self) -> Status:
        """The server's state."""
        return status_result((await self._call(pb.Envelope(status=pb.StatusRequest()), "status_reply")).status_reply)

    async def refresh_weights(self, checkpoint: str) -> int:
        """Loads a checkpoint (relative to the server's data directory) and publishes it as a new
        weight version; returns that version."""
        reply = await self._call(pb.Envelope(refresh_weights=pb.RefreshWeights(checkpoint=checkpoint)),
                                 "refresh_weights_reply")
        return reply.refresh_weights_reply.version

    async def save_checkpoint(self, name: Optional[str] = None) -> Checkpoint:
        """Writes a checkpoint of the learner's state as ``checkpoints/<name>`` (``None``: ``step-N``);
        returns once it is on disk."""
        reply = await self._call(pb.Envelope(save_checkpoint=pb.SaveCheckpoint(name=name or "")),
                                 "save_checkpoint_reply")
        return checkpoint_result(reply.save_checkpoint_reply)

    async def subscribe_versions(self) -> AsyncVersionSubscription:
        """Subscribes to weight versions: the current version at once, then every newly published one."""
        return AsyncVersionSubscription(self, await self._start(pb.Envelope(subscribe_versions=pb.SubscribeVersions())))

    async def cancel(self, request_id: int) -> bool:
        """Cancels a running request of this connection by id; returns whether the server still had it."""
        reply = await self._call(pb.Envelope(cancel=pb.Cancel(target_id=request_id)), "cancel_reply")
        return reply.cancel_reply.found

    # ── Plumbing ──

    def _next_id(self) -> int:
        return next(self._ids)

    async def _start(self, envelope: "pb.Envelope") -> _Pending:
        """Registers a mailbox for a new request id and sends the request."""
        envelope.id = self._next_id()
        frame = encode_frame(envelope, self._server_max_frame)
        if self._failure is not None:
            raise error_like(self._failure, envelope.id)
        if self._writer is None:
            raise ConnectionClosed("not connected: await connect() first", request_id=envelope.id)
        pending = _Pending(envelope.id)
        self._pending[pending.id] = pending
        try:
            await self._send(frame)
        except BaseException:
            self._unregister(pending)
            raise
        return pending

    async def _send(self, frame: bytes) -> None:
        assert self._writer is not None and self._drain_lock is not None
        try:
            self._writer.write(frame)
            async with self._drain_lock:  # one drain at a time (a write is whole either way)
                await self._writer.drain()
        except (OSError, ConnectionError, RuntimeError) as e:
            failure = ConnectionClosed("connection lost while sending: %s" % e)
            self._fail(failure)
            raise failure from None

    def _send_nowait(self, envelope: "pb.Envelope") -> None:
        """Queues a request whose reply is not awaited (replies to unknown ids are dropped)."""
        if self._failure is not None or self._writer is None:
            return
        try:
            self._writer.write(encode_frame(envelope, self._server_max_frame))
        except (OSError, ConnectionError, RuntimeError):
            pass

    def _unregister(self, pending: _Pending) -> None:
        self._pending.pop(pending.id, None)

    async def _wait(self, pending: _Pending, timeout: Optional[float], unregister_on_timeout: bool = True) -> Any:
        """The next message for ``pending``: an Envelope (not an error), or ``_CLOSED``. Raises the
        server's error as its exception, or the connection's failure."""
        if timeout == 0:
            if pending.queue.empty():
                raise Timeout("no reply to request %d yet" % pending.id, request_id=pending.id)
            item = pending.queue.get_nowait()
        else:
            try:
                item = await asyncio.wait_for(pending.queue.get(), timeout)
            except asyncio.TimeoutError:
                if unregister_on_timeout:
                    self._unregister(pending)
                raise Timeout("no reply to request %d within %s s" % (pending.id, timeout),
                              request_id=pending.id) from None
        if isinstance(item, SelmError):
            raise error_like(item, pending.id)
        if item is not _CLOSED and item.WhichOneof("body") == "error":
            err = item.error
            self._unregister(pending)
            raise error_from_code(err.code, err.message, err.field, pending.id)
        return item

    async def _call(self, envelope: "pb.Envelope", expect: str) -> "pb.Envelope":
        """Sends a request with a single reply and returns that reply."""
        pending = await self._start(envelope)
        try:
            reply = await self._wait(pending, self.timeout)
        finally:
            self._unregister(pending)
        if reply.WhichOneof("body") != expect:
            raise self._unexpected(reply, expect)
        return reply

    def _unexpected(self, envelope: "pb.Envelope", expected: str) -> ProtocolError:
        return ProtocolError("expected %s for request %d, got %s" % (expected, envelope.id, envelope.WhichOneof("body")),
                             request_id=envelope.id)

    def _fail(self, failure: SelmError) -> None:
        """Marks the connection failed and ends every waiting request with ``failure``."""
        if self._failure is None:
            self._failure = failure
        waiting = list(self._pending.values())
        self._pending.clear()
        for p in waiting:
            p.queue.put_nowait(self._failure)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = FrameReader(self._reader_limit)
        failure: SelmError = ConnectionClosed("the server closed the connection")
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                for body in reader.feed(data):
                    try:
                        envelope = decode_body(body)
                    except DecodeError:
                        failure = ProtocolError("the server sent a frame that is not a valid Envelope")
                        return
                    self._dispatch(envelope)
        except SelmError as e:
            failure = e
        except (OSError, ConnectionError) as e:
            failure = ConnectionClosed("connection lost: %s" % e)
        finally:
            self._fail(failure)

    def _dispatch(self, envelope: "pb.Envelope") -> None:
        pending = self._pending.get(envelope.id)
        if pending is not None:
            pending.queue.put_nowait(envelope)
        elif envelope.id == 0 and envelope.WhichOneof("body") == "error":
            # An error about a frame whose id the server could not read: every waiting request learns of it.
            err = envelope.error
            for p in list(self._pending.values()):
                p.queue.put_nowait(error_from_code(err.code, err.message, err.field, p.id))
        # Replies to requests nobody waits for any more (closed streams, timed-out calls) are dropped.


async def connect(address: Optional[str] = None, **kwargs: Any) -> AsyncClient:
    """``await connect("HOST:PORT", token=..., timeout=...)``: a connected :class:`AsyncClient`
    (keyword arguments as its constructor's)."""
    return await AsyncClient(address, **kwargs).connect()
