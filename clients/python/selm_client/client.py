"""The blocking, thread-safe client of ``selm serve``.

One :class:`Client` holds one connection (TCP or Unix socket). A background reader thread reads
every frame the server sends and hands it to the request with the same id, so any number of calls
may be in flight at once (from several threads, or a generation stream and a version subscription
read side by side), and version pushes arrive whenever the server publishes.
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
from typing import (Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union)

from google.protobuf.message import DecodeError

from . import selm_pb2 as pb
from .errors import (ConnectionClosed, InvalidArgument, ProtocolError, SelmError, Timeout, error_from_code,
                     error_like)
from .framing import DEFAULT_MAX_FRAME_BYTES, FrameReader, decode_body, encode_frame
from .types import (FINISH_REASONS, Checkpoint, Chunk, GenerateDone, HelloInfo, PreferenceAck, Sample,
                    ScoredItem, ScoreResult, Status, VersionEvent)

__all__ = ["Client", "GenerateStream", "VersionSubscription", "PROTOCOL_VERSION", "DEFAULT_ADDRESS",
           "PromptLike", "ResponseLike"]

#: The protocol version this client speaks (``PROTOCOL_VERSION_CURRENT``).
PROTOCOL_VERSION = 1
#: Where ``selm serve`` listens by default.
DEFAULT_ADDRESS = "127.0.0.1:7070"
CLIENT_NAME = "selm-python/0.1"

Message = Mapping[str, str]
#: A prompt: text, a list of token ids, or a conversation (a list of ``{"role", "content"}`` dicts).
PromptLike = Union[str, Sequence[int], Sequence[Message]]
#: A response / continuation: text, a list of token ids, or (a preference row's response whose prompt
#: is a conversation) a list of ``{"role", "content"}`` turns ending with the assistant's.
ResponseLike = Union[str, Sequence[int], Sequence[Message]]

_CLOSED = object()  # queue sentinel: the request's stream was closed by its owner


# ─── Converting user values to messages ─────────────────────────────────────────────────────────

def _is_ids(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value)


def _is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(x, Mapping) for x in value)


def _extend_ints(target: Any, ids: Sequence[int], field: str) -> None:
    try:
        target.extend(int(i) for i in ids)
    except (ValueError, TypeError) as e:
        raise InvalidArgument("token ids must be integers in [0, 2^32): %s" % e, field=field) from None


def _fill_ids(target: Any, ids: Sequence[int], field: str) -> None:
    """Fills the ``ids`` of a TokenIds / DetokenizeRequest message."""
    _extend_ints(target.ids, ids, field)


def _fill_messages(target: "pb.Messages", messages: Sequence[Message], field: str) -> None:
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise InvalidArgument("a chat message is a mapping with 'role' and 'content'", field="%s[%d]" % (field, j))
        target.messages.add(role=str(m["role"]), content=str(m.get("content", "")))


def _fill_prompt(target: "pb.Prompt", prompt: PromptLike, field: str) -> None:
    if isinstance(prompt, str):
        target.text = prompt
    elif isinstance(prompt, (list, tuple)) and len(prompt) == 0:
        target.ids.SetInParent()  # sent as empty ids: the server refuses it and names the field
    elif _is_ids(prompt):
        _fill_ids(target.ids, prompt, field + ".ids")  # type: ignore[arg-type]
    elif _is_messages(prompt):
        _fill_messages(target.messages, prompt, field + ".messages.messages")  # type: ignore[arg-type]
    else:
        raise InvalidArgument("a prompt is text, a list of token ids or a list of {'role', 'content'} messages; "
                              "got %s" % type(prompt).__name__, field=field)


def _fill_response(target: "pb.Response", response: Any, field: str) -> None:
    if isinstance(response, str):
        target.text = response
    elif _is_ids(response):
        _fill_ids(target.ids, response, field + ".ids")
    elif _is_messages(response):
        # A conversational response travels as its turns; the server encodes it as TRL does (and
        # refuses it, naming the field, without a conversational prompt or in a score item).
        target.messages.SetInParent()
        _fill_messages(target.messages, response, field + ".messages.messages")
    elif isinstance(response, (list, tuple)) and len(response) == 0:
        target.ids.SetInParent()  # sent as empty ids: the server refuses it and names the field
    else:
        raise InvalidArgument("a response is text, a list of token ids or a list of {'role', 'content'} messages; "
                              "got %s" % type(response).__name__, field=field)


def _normalize_prompts(prompts: Any) -> List[Any]:
    """One prompt or a list of prompts → a list of prompts."""
    if isinstance(prompts, str) or _is_ids(prompts) or _is_messages(prompts):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        return list(prompts)
    raise InvalidArgument("prompts must be text, token ids, messages, or a list of those", field="prompts")


def _set_scalar(message: Any, name: str, value: Any, field: str) -> None:
    try:
        setattr(message, name, value)
    except (ValueError, TypeError) as e:
        raise InvalidArgument("%s: %s" % (field, e), field=field) from None


def _top(entries: Iterable["pb.TopLogprobs"]) -> List[Dict[int, float]]:
    return [dict(zip(e.token_ids, e.logprobs)) for e in entries]


def _sample(m: "pb.SampleResult") -> Sample:
    return Sample(prompt_index=m.prompt_index, sample_index=m.sample_index, token_ids=list(m.token_ids),
                  text=m.text, logprobs=list(m.logprobs), top_logprobs=_top(m.top_logprobs),
                  finish_reason=FINISH_REASONS.get(m.finish_reason, str(m.finish_reason)),
                  version=m.version, first_version=m.first_version, prompt_tokens=m.prompt_tokens,
                  completion_tokens=m.completion_tokens)


def _chunk(m: "pb.GenerateChunk") -> Chunk:
    return Chunk(prompt_index=m.prompt_index, sample_index=m.sample_index, token_ids=list(m.token_ids),
                 text_delta=m.text_delta, logprobs=list(m.logprobs), top_logprobs=_top(m.top_logprobs))


def _version_event(m: "pb.VersionEvent") -> VersionEvent:
    return VersionEvent(version=m.version, learner_step=m.learner_step, metrics=dict(m.metrics),
                        unix_time=m.unix_time, reference_version=m.reference_version)


def _parse_address(address: str) -> Tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("address must be HOST:PORT, got %r" % address)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


# ─── Requests and replies (the one encoding, shared by Client and selm_client.aio.AsyncClient) ──────────

def hello_envelope(token: Optional[str], client_name: str) -> "pb.Envelope":
    return pb.Envelope(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, auth_token=token or "", client_name=client_name))


def hello_info(reply: "pb.HelloReply") -> HelloInfo:
    return HelloInfo(protocol_version=reply.protocol_version, server_version=reply.server_version,
                     model_name=reply.model_name, model_path=reply.model_path,
                     policy_version=reply.policy_version, vocab_size=reply.vocab_size,
                     context_length=reply.context_length, chat_template=reply.chat_template,
                     max_frame_bytes=reply.max_frame_bytes, engine_precision=reply.engine_precision)


def generate_request(prompts: Any, *, n: int = 1, chat: bool = False, max_tokens: Optional[int] = None,
                     temperature: Optional[float] = None, top_p: Optional[float] = None, top_k: Optional[int] = None,
                     min_p: Optional[float] = None, seed: Optional[int] = None, stop: Optional[Sequence[str]] = None,
                     stop_token_ids: Optional[Sequence[int]] = None, ignore_eos: bool = False, top_logprobs: int = 0,
                     require_version: Optional[int] = None, recompute: bool = False,
                     repetition_penalty: Optional[float] = None, presence_penalty: Optional[float] = None,
                     frequency_penalty: Optional[float] = None, stream: bool = False) -> "pb.GenerateRequest":
    """The ``GenerateRequest`` of :meth:`Client.generate`'s arguments (shared with ``selm_client.aio``)."""
    req = pb.GenerateRequest(chat=bool(chat), ignore_eos=bool(ignore_eos), recompute=bool(recompute),
                             stream=bool(stream))
    for i, p in enumerate(_normalize_prompts(prompts)):
        _fill_prompt(req.prompts.add(), p, "prompts[%d]" % i)
    _set_scalar(req, "n", n, "n")
    _set_scalar(req, "top_logprobs", top_logprobs, "top_logprobs")
    if require_version is not None:
        _set_scalar(req, "require_version", require_version, "require_version")
    if stop:
        if isinstance(stop, str):
            stop = [stop]
        req.stop.extend(stop)
    if stop_token_ids:
        _extend_ints(req.stop_token_ids, stop_token_ids, "stop_token_ids")
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                "repetition_penalty": repetition_penalty, "presence_penalty": presence_penalty,
                "frequency_penalty": frequency_penalty, "seed": seed, "max_tokens": max_tokens}
    for name, value in sampling.items():
        if value is not None:
            _set_scalar(req.sampling, name, value, "sampling." + name)
    return req


def score_request(items: Sequence[Any], *, chat: bool = False, version: Optional[int] = None,
                  top_logprobs: int = 0, entropy: bool = False) -> "pb.ScoreRequest":
    """The ``ScoreRequest`` of :meth:`Client.score`'s arguments."""
    req = pb.ScoreRequest(chat=bool(chat), entropy=bool(entropy))
    _set_scalar(req, "top_logprobs", top_logprobs, "top_logprobs")
    if version is not None:
        _set_scalar(req, "version", version, "version")
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            prompt, continuation = item.get("prompt"), item.get("continuation")
        else:
            prompt, continuation = item
        entry = req.items.add()
        if prompt is not None:
            _fill_prompt(entry.prompt, prompt, "items[%d].prompt" % i)
        if continuation is not None:
            _fill_response(entry.continuation, continuation, "items[%d].continuation" % i)
    return req


def tokenize_request(text: Any, *, chat: bool = False, add_special: bool = False) -> "pb.TokenizeRequest":
    """The ``TokenizeRequest`` of :meth:`Client.tokenize`'s arguments."""
    req = pb.TokenizeRequest(chat=bool(chat), add_special=bool(add_special))
    if isinstance(text, str):
        req.text = text
    else:
        req.messages.SetInParent()
        _fill_messages(req.messages, text, "messages.messages")
    return req


def detokenize_request(ids: Sequence[int]) -> "pb.DetokenizeRequest":
    req = pb.DetokenizeRequest()
    _fill_ids(req, ids, "ids")  # type: ignore[arg-type]
    return req


def preferences_request(rows: Sequence[Mapping[str, Any]], *, chat: bool = False,
                        source: Optional[str] = None) -> "pb.SubmitPreferences":
    """The ``SubmitPreferences`` of :meth:`Client.submit_preferences`'s arguments."""
    req = pb.SubmitPreferences(chat=bool(chat))
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidArgument("a preference row is a mapping", field="rows[%d]" % i)
        r = req.rows.add()
        f = "rows[%d]" % i
        if row.get("prompt_ids") is not None:
            _fill_prompt(r.prompt, list(row["prompt_ids"]), f + ".prompt")
        elif row.get("prompt") is not None:
            _fill_prompt(r.prompt, row["prompt"], f + ".prompt")
        for part, text_key, ids_key in (("chosen", "chosen", "chosen_ids"), ("rejected", "rejected", "rejected_ids"),
                                        ("reference", "reference_response", "reference_ids")):
            value = row.get(ids_key)
            if value is None:
                value = row.get(text_key)
            if value is None and part == "reference":
                value = row.get("reference")
            if value is not None:
                _fill_response(getattr(r, part), value, "%s.%s" % (f, part))
        if row.get("weight") is not None:
            _set_scalar(r, "weight", row["weight"], f + ".weight")
        if row.get("version") is not None:
            _set_scalar(r, "version", row["version"], f + ".version")
        src = row.get("source", source)
        if src:
            r.source = str(src)
    return req


def generate_done(d: "pb.GenerateDone") -> GenerateDone:
    return GenerateDone(samples=d.samples, prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens)


def score_result(reply: "pb.ScoreReply") -> ScoreResult:
    return ScoreResult(items=[ScoredItem(token_ids=list(it.token_ids), logprobs=list(it.logprobs),
                                         total_logprob=it.total_logprob, top_logprobs=_top(it.top_logprobs),
                                         entropies=list(it.entropies))
                              for it in reply.items], version=reply.version)


def status_result(m: "pb.StatusReply") -> Status:
    return Status(policy_version=m.policy_version, learner_step=m.learner_step,
                  learner_metrics=dict(m.learner_metrics), wal_last_sequence=m.wal_last_sequence,
                  wal_consumed_sequence=m.wal_consumed_sequence, waiting_requests=m.waiting_requests,
                  running_sequences=m.running_sequences, kv_blocks_used=m.kv_blocks_used,
                  kv_blocks_total=m.kv_blocks_total, generated_tokens_per_second=m.generated_tokens_per_second,
                  uptime_seconds=m.uptime_seconds, live_versions=m.live_versions, connections=m.connections,
                  data_dir_bytes=m.data_dir_bytes, disk_free_bytes=m.disk_free_bytes, checkpoints=m.checkpoints,
                  engine_precision=m.engine_precision, staleness={b.le: b.rows for b in m.staleness},
                  stale_rows_dropped=m.stale_rows_dropped, role=m.role, following=m.following,
                  reference_version=m.reference_version)


def checkpoint_result(m: "pb.SaveCheckpointReply") -> Checkpoint:
    return Checkpoint(path=m.path, learner_step=m.learner_step, wal_sequence=m.wal_sequence, version=m.version)


# ─── Streams ────────────────────────────────────────────────────────────────────────────────────

class _Pending:
    """The mailbox of one request: the reader thread puts envelopes (or a failure) into it."""

    __slots__ = ("id", "queue")

    def __init__(self, request_id: int) -> None:
        self.id = request_id
        self.queue: "queue.Queue[Any]" = queue.Queue()


class GenerateStream(Iterator[Union[Chunk, Sample]]):
    """The replies of one generation, as they come: :class:`Chunk` objects (only with ``stream=True``)
    and one :class:`Sample` per (prompt, sample) as it finishes. Iteration ends after the server's
    ``GenerateDone``, whose totals are then in :attr:`done`; an error from the server is raised from
    the iteration.

    Use it as a context manager (or call :meth:`close`) when you may stop reading early: closing a
    stream that has not ended cancels the generation on the server.
    """

    def __init__(self, client: "Client", pending: _Pending) -> None:
        self._client = client
        self._pending = pending
        self._finished = False
        #: The request id (for :meth:`Client.cancel`).
        self.request_id: int = pending.id
        #: Every sample received so far.
        self.samples: List[Sample] = []
        #: The totals, once the generation has ended.
        self.done: Optional[GenerateDone] = None

    def __iter__(self) -> "GenerateStream":
        return self

    def __next__(self) -> Union[Chunk, Sample]:
        if self._finished:
            raise StopIteration
        try:
            env = self._client._wait(self._pending, self._client.timeout)
        except (Timeout, KeyboardInterrupt):
            self.close()  # the caller gives up: stop the generation on the server too
            raise
        except BaseException:
            self._finish()
            raise
        if env is _CLOSED:
            self._finished = True
            raise StopIteration
        kind = env.WhichOneof("body")
        if kind == "generate_chunk":
            return _chunk(env.generate_chunk)
        if kind == "sample_result":
            sample = _sample(env.sample_result)
            self.samples.append(sample)
            return sample
        self._finish()
        if kind == "generate_done":
            d = env.generate_done
            self.done = generate_done(d)
            raise StopIteration
        raise self._client._unexpected(env, "generate_chunk, sample_result or generate_done")

    def _finish(self) -> None:
        self._finished = True
        self._client._unregister(self._pending)

    @property
    def finished(self) -> bool:
        """True once the generation has ended (done, failed, or closed)."""
        return self._finished

    def cancel(self) -> bool:
        """Asks the server to cancel this generation; keep iterating to receive the (cancelled)
        samples and the end. Returns whether the server still had it running."""
        if self._finished:
            return False
        return self._client.cancel(self.request_id)

    def close(self) -> None:
        """Stops reading: cancels the generation if it is still running and drops its later replies."""
        if self._finished:
            return
        self._finish()
        try:
            self._client._send_nowait(pb.Envelope(id=self._client._next_id(), cancel=pb.Cancel(target_id=self.request_id)))
        except SelmError:
            pass

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VersionSubscription(Iterator[VersionEvent]):
    """Weight-version events: the current version first, then one per published version.

    Iterating blocks until the next event (it never times out) and ends when the subscription is
    closed; :meth:`get` waits at most a given time and :meth:`poll` not at all. :meth:`close` (or
    leaving the ``with`` block) cancels the subscription on the server.
    """

    def __init__(self, client: "Client", pending: _Pending) -> None:
        self._client = client
        self._pending = pending
        self._closed = False
        #: The request id of the subscription.
        self.request_id: int = pending.id

    def __iter__(self) -> "VersionSubscription":
        return self

    def __next__(self) -> VersionEvent:
        event = self.get(timeout=None)
        if event is None:
            raise StopIteration
        return event

    def get(self, timeout: Optional[float] = None) -> Optional[VersionEvent]:
        """The next event, waiting at most ``timeout`` seconds (``None``: no limit; ``0``: only an
        event that has already arrived).

        Returns ``None`` if no event arrived within ``timeout``, or once the subscription is closed
        (see :attr:`closed`).

        Raises:
            ConnectionClosed: the connection closed.
        """
        if self._closed:
            return None
        try:
            env = self._client._wait(self._pending, timeout, unregister_on_timeout=False)
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

    def poll(self) -> Optional[VersionEvent]:
        """The next event if one has arrived, else ``None`` (never waits)."""
        return self.get(timeout=0)

    @property
    def closed(self) -> bool:
        """True once the subscription is closed (by :meth:`close`, or by the connection ending)."""
        return self._closed

    def close(self) -> None:
        """Cancels the subscription; a thread blocked in iteration stops."""
        if self._closed:
            return
        self._closed = True
        self._client._unregister(self._pending)
        self._pending.queue.put(_CLOSED)
        try:
            self._client._send_nowait(pb.Envelope(id=self._client._next_id(), cancel=pb.Cancel(target_id=self.request_id)))
        except SelmError:
            pass

    def __enter__(self) -> "VersionSubscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ─── The client ─────────────────────────────────────────────────────────────────────────────────

class Client:
    """A connection to ``selm serve``.

    Args:
        address: ``"HOST:PORT"`` of a TCP listener (default ``"127.0.0.1:7070"``); ignored when
            ``unix`` is given.
        unix: path of the server's Unix socket.
        token: the server's shared secret (``selm serve --auth-token-file``), if it has one.
        timeout: seconds to wait for each reply message (``None``: no limit). Also bounds connecting.
        client_name: sent in Hello, for the server's logs.
        max_frame_bytes: the largest frame this client accepts from the server.

    Connecting sends Hello; :attr:`hello` holds the server's reply (model, policy version, vocab
    size, context length, chat template). Every method is thread-safe and may be called while other
    calls are in flight. Use the client as a context manager, or call :meth:`close`.

    Raises (from the constructor):
        Unauthenticated: the token is wrong or missing.
        UnsupportedVersion: the server does not speak protocol version 1.
        ConnectionClosed: the server could not be reached or closed the connection.
    """

    def __init__(self, address: Optional[str] = None, *, unix: Optional[str] = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, client_name: str = CLIENT_NAME,
                 max_frame_bytes: int = 256 << 20) -> None:
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: Dict[int, _Pending] = {}
        self._failure: Optional[SelmError] = None
        self._server_max_frame = DEFAULT_MAX_FRAME_BYTES
        self._reader_limit = max_frame_bytes
        connect_timeout = timeout if timeout is not None else 30.0
        try:
            if unix is not None:
                self.endpoint = "unix:" + unix
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(connect_timeout)
                try:
                    sock.connect(unix)
                except BaseException:
                    sock.close()
                    raise
            else:
                self.endpoint = address or DEFAULT_ADDRESS
                sock = socket.create_connection(_parse_address(self.endpoint), timeout=connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise ConnectionClosed("cannot connect to %s: %s" % (unix or address or DEFAULT_ADDRESS, e)) from None
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name="selm-client-reader", daemon=True)
        self._reader.start()
        try:
            reply = self._call(hello_envelope(token, client_name), "hello_reply").hello_reply
        except BaseException:
            self.close()
            raise
        self.hello = hello_info(reply)
        if reply.max_frame_bytes:
            self._server_max_frame = reply.max_frame_bytes

    # ── Life cycle ──

    def close(self) -> None:
        """Closes the connection. Calls still waiting end with :class:`ConnectionClosed`; the
        server cancels this connection's running generations."""
        self._fail(ConnectionClosed("the client closed the connection"))
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by either side)."""
        return self._failure is not None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Client(%s%s)" % (self.endpoint, ", closed" if self.closed else "")

    # ── Calls ──

    def generate(self, prompts: Union[PromptLike, Sequence[PromptLike]], *, n: int = 1, chat: bool = False,
                 max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, top_k: Optional[int] = None, min_p: Optional[float] = None,
                 seed: Optional[int] = None, stop: Optional[Sequence[str]] = None,
                 stop_token_ids: Optional[Sequence[int]] = None, ignore_eos: bool = False, top_logprobs: int = 0,
                 require_version: Optional[int] = None, recompute: bool = False,
                 repetition_penalty: Optional[float] = None, presence_penalty: Optional[float] = None,
                 frequency_penalty: Optional[float] = None,
                 stream: bool = False) -> Union[List[Sample], GenerateStream]:
        """Generates ``n`` samples for each prompt.

        Args:
            prompts: one prompt or a list of prompts; a prompt is text, a list of token ids (used as
                is: no template, no BOS), or a conversation (a list of ``{"role", "content"}`` dicts,
                always rendered with the model's chat template).
            n: samples per prompt (1…64).
            chat: apply the chat template to text prompts (as one user turn).
            max_tokens: completion tokens per sample (≥ 1; capped by the context length).
            temperature: ≥ 0; 0 is greedy. ``None`` (like every sampling argument) = server default.
            top_p, top_k, min_p: nucleus (0, 1], top-k (0 = off), min-p [0, 1] filtering.
            seed: seed of the request's random streams (each sample derives its own).
            stop: stop strings (not included in the text).
            stop_token_ids: extra stop tokens besides EOS (included in ``token_ids``).
            ignore_eos: keep going past EOS.
            top_logprobs: alternatives reported per token (0…20).
            require_version: run on exactly this weight version (:class:`NotFound` if it is gone, or
                once it is retired by a newer one: ``selm serve --max-live-versions``).
            recompute: move running sequences to each newly published version.
            repetition_penalty, presence_penalty, frequency_penalty: CTRL / OpenAI-style penalties.
            stream: return a :class:`GenerateStream` yielding :class:`Chunk` objects as tokens come
                and :class:`Sample` objects as samples finish.

        Returns:
            Without ``stream``: the samples, ordered by (prompt_index, sample_index). With
            ``stream``: a :class:`GenerateStream`.

        Raises:
            InvalidArgument: a bad argument (``err.field`` names it, e.g. ``"sampling.top_p"``).
            OutOfRange: a token id ≥ vocab size, or a prompt longer than the context.
            NotFound: ``require_version`` is not alive (or was retired while the request ran).
        """
        req = generate_request(prompts, n=n, chat=chat, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                               top_k=top_k, min_p=min_p, seed=seed, stop=stop, stop_token_ids=stop_token_ids,
                               ignore_eos=ignore_eos, top_logprobs=top_logprobs, require_version=require_version,
                               recompute=recompute, repetition_penalty=repetition_penalty,
                               presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, stream=stream)
        s = GenerateStream(self, self._start(pb.Envelope(generate=req)))
        if stream:
            return s
        with s:
            for _ in s:
                pass
        return sorted(s.samples, key=lambda x: (x.prompt_index, x.sample_index))

    def score(self, items: Sequence[Union[Tuple[PromptLike, ResponseLike], Mapping[str, Any]]], *,
              chat: bool = False, version: Optional[int] = None, top_logprobs: int = 0,
              entropy: bool = False) -> ScoreResult:
        """Log-probabilities of given continuations (teacher forcing, no sampling).

        Args:
            items: ``(prompt, continuation)`` pairs, or dicts with ``prompt`` and ``continuation``;
                a prompt as in :meth:`generate`, a continuation is text or token ids (the server
                refuses a conversational continuation: those are for preference rows only).
            chat: apply the chat template to text prompts.
            version: score under this weight version (must be alive); ``None`` = current.
            top_logprobs: alternatives reported per continuation token (0…20).
            entropy: also return, per continuation token, the entropy (nats) of the model's full
                next-token distribution at that position (:attr:`ScoredItem.entropies`).
        """
        req = score_request(items, chat=chat, version=version, top_logprobs=top_logprobs, entropy=entropy)
        return score_result(self._call(pb.Envelope(score=req), "score_reply").score_reply)

    def tokenize(self, text: Union[str, Sequence[Message]] = "", *, chat: bool = False,
                 add_special: bool = False) -> List[int]:
        """Token ids of ``text`` (or of a conversation, rendered with the chat template).

        Args:
            text: the text, or a list of ``{"role", "content"}`` messages.
            chat: wrap the text as a user turn and apply the chat template.
            add_special: parse special-token strings (``"<|im_start|>"``) as special tokens.
        """
        req = tokenize_request(text, chat=chat, add_special=add_special)
        return list(self._call(pb.Envelope(tokenize=req), "tokenize_reply").tokenize_reply.ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids (an incomplete UTF-8 tail becomes U+FFFD).

        Raises:
            OutOfRange: an id ≥ vocab size.
        """
        return self._call(pb.Envelope(detokenize=detokenize_request(ids)), "detokenize_reply").detokenize_reply.text

    def submit_preferences(self, rows: Sequence[Mapping[str, Any]], *, chat: bool = False,
                           source: Optional[str] = None) -> PreferenceAck:
        """Appends preference rows to the server's write-ahead log; returns once they are durable.

        A row is a dict as TRL writes them — ``prompt``, ``chosen``, ``rejected`` and optionally
        ``reference_response`` (the reference policy's own answer, SELM's optimism term) as text,
        or conversational: the prompt a list of ``{"role", "content"}`` messages and each response
        text or a list of messages ending with the assistant's (the server encodes those as TRL's
        ``DPOTrainer`` does: the rendered turns after the prompt, no EOS added) — or with token
        ids: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``reference_ids``. Optional
        ``weight`` (≥ 0; 0 = 1.0), ``source`` (provenance) and ``version`` (the weight version that
        produced the responses, :attr:`Sample.version`: the learner counts the row's staleness and,
        with ``selm serve --max-staleness K``, drops it when more than K versions old — see
        :attr:`PreferenceAck.stale_rows`). Other keys are ignored.

        Args:
            rows: the rows (at least one).
            chat: apply the chat template to text prompts.
            source: provenance for rows without their own ``source``.

        Returns:
            The WAL sequence numbers the rows were written under.

        Raises:
            InvalidArgument: a row lacks a part or has an empty one (``field`` like ``"rows[0].chosen"``),
                or has a conversational response without a conversational prompt or not ending with
                the assistant's turn (``"rows[0].chosen.messages"``).
        """
        req = preferences_request(rows, chat=chat, source=source)
        return _ack(self._call(pb.Envelope(submit_preferences=req), "preference_ack").preference_ack)

    def status(self) -> Status:
        """The server's state: policy version, learner step and metrics, WAL positions, queue, KV cache."""
        m = self._call(pb.Envelope(status=pb.StatusRequest()), "status_reply").status_reply
        return status_result(m)

    def refresh_weights(self, checkpoint: str) -> int:
        """Loads a checkpoint (a path relative to the server's data directory) and publishes it as a
        new weight version; returns that version.

        Raises:
            NotFound: no such checkpoint.  PermissionDenied / InvalidArgument: a path outside the data directory.
        """
        return self._call(pb.Envelope(refresh_weights=pb.RefreshWeights(checkpoint=checkpoint)),
                          "refresh_weights_reply").refresh_weights_reply.version

    def save_checkpoint(self, name: Optional[str] = None) -> Checkpoint:
        """Writes a checkpoint of the learner's state as ``checkpoints/<name>`` in the server's data
        directory (``name``: letters, digits, ``. _ -``; ``None`` = automatic ``step-N``); returns
        once it is on disk. ``Checkpoint.path`` is what :meth:`refresh_weights` takes."""
        m = self._call(pb.Envelope(save_checkpoint=pb.SaveCheckpoint(name=name or "")),
                       "save_checkpoint_reply").save_checkpoint_reply
        return checkpoint_result(m)

    def subscribe_versions(self) -> VersionSubscription:
        """Subscribes to weight versions: the returned iterator yields the current version at once,
        then every newly published one. Other calls can run meanwhile (on this or other threads)."""
        return VersionSubscription(self, self._start(pb.Envelope(subscribe_versions=pb.SubscribeVersions())))

    def cancel(self, request_id: int) -> bool:
        """Cancels a running request of this connection (a generation or a subscription) by id;
        returns whether the server still had it running. A cancelled generation still delivers its
        samples (unfinished ones with ``finish_reason == "cancelled"``) and its end."""
        return self._call(pb.Envelope(cancel=pb.Cancel(target_id=request_id)), "cancel_reply").cancel_reply.found

    # ── Plumbing ──

    def _next_id(self) -> int:
        with self._id_lock:
            return next(self._ids)

    def _start(self, envelope: "pb.Envelope") -> _Pending:
        """Registers a mailbox for a new request id and sends the request."""
        envelope.id = self._next_id()
        frame = encode_frame(envelope, self._server_max_frame)
        pending = _Pending(envelope.id)
        with self._lock:
            if self._failure is not None:
                raise error_like(self._failure, envelope.id)
            self._pending[pending.id] = pending
        try:
            self._send(frame)
        except BaseException:
            self._unregister(pending)
            raise
        return pending

    def _send(self, frame: bytes) -> None:
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as e:
            failure = ConnectionClosed("connection lost while sending: %s" % e)
            self._fail(failure)
            raise failure from None

    def _send_nowait(self, envelope: "pb.Envelope") -> None:
        """Sends a request whose reply is not awaited (replies to unknown ids are dropped)."""
        if self._failure is not None:
            return
        self._send(encode_frame(envelope, self._server_max_frame))

    def _unregister(self, pending: _Pending) -> None:
        with self._lock:
            self._pending.pop(pending.id, None)

    def _wait(self, pending: _Pending, timeout: Optional[float], unregister_on_timeout: bool = True) -> Any:
        """The next message for ``pending``: an Envelope (not an error), or ``_CLOSED``. Raises the
        server's error as its exception, or the connection's failure."""
        try:
            item = pending.queue.get(timeout=timeout)
        except queue.Empty:
            if unregister_on_timeout:
                self._unregister(pending)
            raise Timeout("no reply to request %d within %s s" % (pending.id, timeout), request_id=pending.id) from None
        if isinstance(item, SelmError):
            raise error_like(item, pending.id)
        if item is not _CLOSED and item.WhichOneof("body") == "error":
            err = item.error
            self._unregister(pending)
            raise error_from_code(err.code, err.message, err.field, pending.id)
        return item

    def _call(self, envelope: "pb.Envelope", expect: str) -> "pb.Envelope":
        """Sends a request with a single reply and returns that reply."""
        pending = self._start(envelope)
        try:
            reply = self._wait(pending, self.timeout)
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
        with self._lock:
            if self._failure is None:
                self._failure = failure
            waiting = list(self._pending.values())
            self._pending.clear()
        for p in waiting:
            p.queue.put(self._failure)

    def _read_loop(self) -> None:
        reader = FrameReader(self._reader_limit)
        failure: SelmError = ConnectionClosed("the server closed the connection")
        try:
            while True:
                data = self._sock.recv(1 << 16)
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
        except OSError as e:
            failure = ConnectionClosed("connection lost: %s" % e)
        finally:
            self._fail(failure)

    def _dispatch(self, envelope: "pb.Envelope") -> None:
        with self._lock:
            pending = self._pending.get(envelope.id)
            if pending is None and envelope.id == 0 and envelope.WhichOneof("body") == "error":
                # An error about a frame whose id the server could not read: it belongs to no one
                # request in particular, so every waiting request learns of it.
                err = envelope.error
                waiting = list(self._pending.values())
            else:
                waiting = None
        if pending is not None:
            pending.queue.put(envelope)
        elif waiting:
            for p in waiting:
                p.queue.put(error_from_code(err.code, err.message, err.field, p.id))
        # Replies to requests nobody waits for any more (closed streams, timed-out calls) are dropped.


def _ack(m: "pb.PreferenceAck") -> PreferenceAck:
    return PreferenceAck(first_sequence=m.first_sequence, last_sequence=m.last_sequence, rows=m.rows,
                         stale_rows=m.stale_rows)

