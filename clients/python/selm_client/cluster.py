"""One client for a deployment of one learner and many rollout replicas.

``selm serve --role learner`` owns the preference log and the learner; ``selm serve --role rollout
--follow LEARNER`` replicas serve generations under the learner's version numbers (README,
"Deployment"). :class:`Cluster` holds a :class:`~selm_client.Client` per replica and one to the
learner, and routes each call where it belongs:

- **Generation** (``generate``, ``score``, ``tokenize``, ``detokenize``) goes to the replica with the
  fewest outstanding sequences (a request weighs ``prompts × n``; ties go round robin). When the
  replica's connection fails (the process died, was killed, or shut down) its in-flight requests are
  sent again, whole, to another replica; the failed replica is left out until it is reachable again
  (reconnected in the background) or replaced (:meth:`Cluster.set_replicas`, or ``discover``).
- **require_version** (and ``score(version=...)``): each replica's newest version is known from a
  version subscription held on it. A request pinned to version ``v`` goes to a replica whose newest
  is ``v`` (else one already past ``v``, which may still hold it alive); if no replica has reached
  ``v`` yet the call *waits* (at most ``version_timeout`` seconds) for the first that does — a
  replica one fetch behind its learner would otherwise answer ``NotFound``. A replica that answers
  ``NotFound`` (it has retired ``v``) is not asked again for that request; when every replica has
  said so, ``NotFound`` is raised.
- **Learning** (``submit_preferences``, ``save_checkpoint``, ``refresh_weights``, ``status``,
  ``subscribe_versions``) goes to the learner only, so every acknowledged preference is in the
  learner's log: nothing a replica does can lose it. A batch whose acknowledgement did not arrive
  (the learner's connection failed) raises :class:`ConnectionClosed` and may or may not be in the
  log; the next call reconnects.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .client import CLIENT_NAME, Client, GenerateStream, Message, PromptLike, ResponseLike, VersionSubscription, \
    _normalize_prompts
from .errors import ConnectionClosed, NotFound, SelmError, Timeout, Unavailable
from .types import Checkpoint, Chunk, PreferenceAck, Sample, ScoreResult, Status

__all__ = ["Cluster", "ReplicaInfo", "ClusterGenerateStream"]

#: Errors meaning "this replica is gone (or going)": the request is sent again elsewhere.
_GONE = (ConnectionClosed, Unavailable)


class ReplicaInfo:
    """What the cluster knows of one rollout replica (a snapshot: :meth:`Cluster.replicas`)."""

    __slots__ = ("address", "connected", "version", "outstanding", "requests", "failovers", "last_error")

    def __init__(self, address: str, connected: bool, version: int, outstanding: int, requests: int,
                 failovers: int, last_error: Optional[str]) -> None:
        self.address = address          #: "HOST:PORT"
        self.connected = connected      #: a live connection (requests go only to connected replicas)
        self.version = version          #: the newest version it announced (0: none yet)
        self.outstanding = outstanding  #: sequences (prompts × n) of this cluster's requests running there
        self.requests = requests        #: requests this cluster sent there in all
        self.failovers = failovers      #: requests that failed there because it went away and were sent elsewhere
        self.last_error = last_error    #: why it was last disconnected, if it was

    def __repr__(self) -> str:
        return "ReplicaInfo(%s, %s, version=%d, outstanding=%d)" % (
            self.address, "connected" if self.connected else "disconnected", self.version, self.outstanding)


class _Replica:
    def __init__(self, address: str) -> None:
        self.address = address
        self.client: Optional[Client] = None
        self.subscription: Optional[VersionSubscription] = None
        self.version = 0
        self.outstanding = 0
        self.requests = 0
        self.failovers = 0
        self.last_error: Optional[str] = None
        self.removed = False
        self.next_attempt = 0.0


class Cluster:
    """Generation spread over rollout replicas; preferences and checkpoints to the learner.

    Args:
        replicas: ``"HOST:PORT"`` of each rollout replica (``selm serve --role rollout``). May be
            empty and filled later (:meth:`set_replicas`, ``discover``).
        learner: ``"HOST:PORT"`` of the learner (``selm serve --role learner``); without it the
            learning calls raise :class:`Unavailable`.
        token: the replicas' shared secret (their ``--auth-token-file``), if any.
        learner_token: the learner's secret; default ``token``.
        timeout: seconds to wait for each reply message (as :class:`Client`'s ``timeout``).
        version_timeout: seconds a ``require_version`` call waits for a replica to reach that
            version, and any generation call waits for a reachable replica, before it raises
            :class:`Timeout` / :class:`Unavailable`.
        discover: a function returning the replicas' current addresses; called every
            ``discover_every`` seconds and as soon as a replica's connection fails, its answer
            passed to :meth:`set_replicas` (the Ray launcher, :mod:`selm_client.ray`, passes one
            that asks its supervisor, so replicas it replaces are picked up).
        reconnect_seconds: how often a disconnected replica is tried again.
        connect: ``False`` to skip connecting in the constructor (replicas are then connected by
            the background thread; the learner on first use).

    Raises (from the constructor): the learner's connection errors (a replica that cannot be
    reached is only left out and retried).
    """

    def __init__(self, replicas: Sequence[str] = (), learner: Optional[str] = None, *, token: Optional[str] = None,
                 learner_token: Optional[str] = None, timeout: Optional[float] = None,
                 version_timeout: float = 120.0, discover: Optional[Callable[[], Iterable[str]]] = None,
                 discover_every: float = 2.0, reconnect_seconds: float = 0.5,
                 client_name: str = CLIENT_NAME + " cluster", connect: bool = True) -> None:
        self.learner_address = learner
        self.timeout = timeout
        self.version_timeout = version_timeout
        self._token = token
        self._learner_token = learner_token if learner_token is not None else token
        self._client_name = client_name
        self._discover = discover
        self._discover_every = discover_every
        self._reconnect_seconds = reconnect_seconds
        self._cond = threading.Condition()
        self._replicas: Dict[str, _Replica] = {}
        self._rr = itertools.count()
        self._closed = False
        self._learner: Optional[Client] = None
        self._learner_lock = threading.Lock()
        self._discover_now = threading.Event()
        self._wake = threading.Event()
        self.set_replicas(replicas)
        if connect:
            for r in list(self._replicas.values()):
                self._connect(r)
            if learner is not None:
                self._learner_client()
        self._thread = threading.Thread(target=self._maintain, name="selm-cluster", daemon=True)
        self._thread.start()

    # ── Replica set ──

    def set_replicas(self, addresses: Iterable[str]) -> None:
        """Makes ``addresses`` the replica set: new ones are connected (in the background), ones
        not listed are dropped (their connections closed after their running requests fail over)."""
        wanted = list(dict.fromkeys(addresses))
        gone: List[_Replica] = []
        with self._cond:
            for address in wanted:
                if address not in self._replicas:
                    self._replicas[address] = _Replica(address)
            for address in list(self._replicas):
                if address not in wanted:
                    r = self._replicas.pop(address)
                    r.removed = True
                    gone.append(r)
            self._cond.notify_all()
        for r in gone:
            self._disconnect(r, "removed from the cluster", client=None)
        self._wake.set()

    def add_replica(self, address: str) -> None:
        """Adds one replica (connected in the background)."""
        with self._cond:
            current = list(self._replicas)
        self.set_replicas(current + [address])

    def remove_replica(self, address: str) -> None:
        """Drops one replica; its running requests fail over to the others."""
        with self._cond:
            current = [a for a in self._replicas if a != address]
        self.set_replicas(current)

    def replace_replica(self, old: str, new: str) -> None:
        """``old`` was replaced by ``new`` (a restarted replica on another port or node)."""
        with self._cond:
            current = [new if a == old else a for a in self._replicas]
            if new not in current:
                current.append(new)
        self.set_replicas(current)

    def replicas(self) -> List[ReplicaInfo]:
        """The replicas and what the cluster knows of each."""
        with self._cond:
            return [ReplicaInfo(r.address, r.client is not None, r.version, r.outstanding, r.requests, r.failovers,
                                r.last_error) for r in self._replicas.values()]

    def wait_for_version(self, version: int, *, replicas: Optional[int] = None,
                         timeout: Optional[float] = None) -> List[str]:
        """Blocks until ``replicas`` connected replicas (default: every replica in the set) serve
        ``version`` or newer; returns their addresses.

        Raises:
            Timeout: not within ``timeout`` seconds (default ``version_timeout``).
        """
        deadline = time.monotonic() + (self.version_timeout if timeout is None else timeout)
        with self._cond:
            while True:
                ready = [r.address for r in self._replicas.values() if r.client is not None and r.version >= version]
                need = len(self._replicas) if replicas is None else replicas
                if need > 0 and len(ready) >= need:
                    return ready
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("%d of %d replicas reached version %d within the timeout" % (len(ready), need, version))
                self._cond.wait(min(left, 0.5))

    # ── Generation calls (replicas) ──

    def generate(self, prompts: Union[PromptLike, Sequence[PromptLike]], *, n: int = 1,
                 require_version: Optional[int] = None, stream: bool = False,
                 **kwargs: Any) -> Union[List[Sample], "ClusterGenerateStream"]:
        """:meth:`Client.generate` on the least-loaded replica (same arguments and results).

        A replica that goes away while the request runs (its connection fails, or it shuts down
        and returns cancelled samples) has the request sent again, whole, to another one, so the
        samples returned all come from one replica (after 2 × replicas + 2 such failures in a row
        the last error is raised). With ``require_version`` the call waits for a
        replica that has reached that version (see the module's doc). With ``stream=True`` a
        :class:`ClusterGenerateStream` is returned; it fails over only before its first event (the
        chunks already read cannot be taken back), later it raises the replica's error.
        """
        weight = max(1, len(_normalize_prompts(prompts))) * max(1, n if isinstance(n, int) else 1)
        if stream:
            return ClusterGenerateStream(self, prompts, weight, dict(kwargs, n=n, require_version=require_version))

        def call(client: Client) -> List[Sample]:
            samples = client.generate(prompts, n=n, require_version=require_version, **kwargs)
            if any(s.finish_reason == "cancelled" for s in samples):
                # Only a server shutting down cancels a request this cluster did not cancel.
                raise Unavailable("the replica cancelled the generation (shutting down)")
            return samples  # type: ignore[return-value]

        return self._on_replica(call, weight, require_version)

    def score(self, items: Sequence[Union[Tuple[PromptLike, ResponseLike], Mapping[str, Any]]], *,
              chat: bool = False, version: Optional[int] = None, top_logprobs: int = 0) -> ScoreResult:
        """:meth:`Client.score` on a replica (``version`` as ``require_version``)."""
        return self._on_replica(lambda c: c.score(items, chat=chat, version=version, top_logprobs=top_logprobs),
                                max(1, len(items)), version)

    def tokenize(self, text: Union[str, Sequence[Message]] = "", *, chat: bool = False,
                 add_special: bool = False) -> List[int]:
        """:meth:`Client.tokenize` on a replica (all serve the same model)."""
        return self._on_replica(lambda c: c.tokenize(text, chat=chat, add_special=add_special), 0, None)

    def detokenize(self, ids: Sequence[int]) -> str:
        """:meth:`Client.detokenize` on a replica."""
        return self._on_replica(lambda c: c.detokenize(ids), 0, None)

    def replica_status(self) -> Dict[str, Status]:
        """:meth:`Client.status` of every connected replica, by address."""
        out: Dict[str, Status] = {}
        with self._cond:
            replicas = [(r.address, r.client) for r in self._replicas.values() if r.client is not None]
        for address, client in replicas:
            try:
                out[address] = client.status()  # type: ignore[union-attr]
            except _GONE:
                continue
        return out

    # ── Learning calls (the learner) ──

    def submit_preferences(self, rows: Sequence[Mapping[str, Any]], *, chat: bool = False,
                           source: Optional[str] = None) -> PreferenceAck:
        """:meth:`Client.submit_preferences` to the learner; returns once the rows are durable in its
        log. Give each row the ``version`` of the samples it was made from (``Sample.version``) so
        the learner can count its staleness (``selm serve --max-staleness``)."""
        return self._on_learner(lambda c: c.submit_preferences(rows, chat=chat, source=source))

    def status(self) -> Status:
        """The learner's :meth:`Client.status` (learner step, metrics, log, staleness histogram)."""
        return self._on_learner(lambda c: c.status())

    def save_checkpoint(self, name: Optional[str] = None) -> Checkpoint:
        """:meth:`Client.save_checkpoint` on the learner."""
        return self._on_learner(lambda c: c.save_checkpoint(name))

    def refresh_weights(self, checkpoint: str) -> int:
        """:meth:`Client.refresh_weights` on the learner (the replicas follow its new version)."""
        return self._on_learner(lambda c: c.refresh_weights(checkpoint))

    def subscribe_versions(self) -> VersionSubscription:
        """The learner's versions (:meth:`Client.subscribe_versions`): every version it publishes,
        with the learner's metrics. A replica serves a version a moment later
        (:meth:`wait_for_version`, or ``require_version``, which waits for it)."""
        return self._on_learner(lambda c: c.subscribe_versions())

    @property
    def learner(self) -> Client:
        """The learner's :class:`Client` (connected on first use)."""
        return self._learner_client()

    # ── Life cycle ──

    def close(self) -> None:
        """Closes every connection; calls still waiting end with :class:`ConnectionClosed`."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            replicas = list(self._replicas.values())
            self._cond.notify_all()
        self._wake.set()
        for r in replicas:
            self._disconnect(r, "the cluster was closed", client=None)
        with self._learner_lock:
            if self._learner is not None:
                self._learner.close()
                self._learner = None
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Cluster(learner=%s, replicas=%s)" % (self.learner_address, [r.address for r in self.replicas()])

    # ── Plumbing ──

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosed("the cluster was closed")

    def _learner_client(self) -> Client:
        self._check_open()
        if self.learner_address is None:
            raise Unavailable("this cluster has no learner address: preferences, status and checkpoints go to the learner")
        with self._learner_lock:
            if self._learner is None or self._learner.closed:
                self._learner = Client(self.learner_address, token=self._learner_token, timeout=self.timeout,
                                       client_name=self._client_name)
            return self._learner

    def _on_learner(self, call: Callable[[Client], Any]) -> Any:
        return call(self._learner_client())

    def _connect(self, r: _Replica) -> bool:
        """Connects a replica and starts following its versions; False (noted) when it fails."""
        try:
            client = Client(r.address, token=self._token, timeout=self.timeout, client_name=self._client_name)
        except SelmError as e:
            with self._cond:
                r.last_error = str(e)
                r.next_attempt = time.monotonic() + self._reconnect_seconds
            return False
        try:
            subscription = client.subscribe_versions()
            first = subscription.get(timeout=self.timeout if self.timeout is not None else 30.0)
        except SelmError as e:
            client.close()
            with self._cond:
                r.last_error = str(e)
                r.next_attempt = time.monotonic() + self._reconnect_seconds
            return False
        with self._cond:
            if r.removed or self._closed or r.client is not None:
                stale = True
            else:
                stale = False
                r.client, r.subscription = client, subscription
                r.version = max(r.version, first.version if first is not None else client.hello.policy_version)
                r.last_error = None
                self._cond.notify_all()
        if stale:
            client.close()
            return False
        threading.Thread(target=self._follow, args=(r, client, subscription), name="selm-cluster-versions",
                         daemon=True).start()
        return True

    def _follow(self, r: _Replica, client: Client, subscription: VersionSubscription) -> None:
        """A replica's version events, until its connection ends."""
        reason = "the version subscription ended"
        try:
            for event in subscription:
                with self._cond:
                    if event.version > r.version:
                        r.version = event.version
                        self._cond.notify_all()
        except SelmError as e:
            reason = str(e)
        self._disconnect(r, reason, client=client)

    def _disconnect(self, r: _Replica, reason: str, client: Optional[Client]) -> None:
        """Marks ``r`` disconnected if ``client`` is still its connection (``None``: whatever it is)."""
        with self._cond:
            if client is not None and r.client is not client:
                return
            current, r.client, r.subscription = r.client, None, None
            if current is not None:
                r.last_error = reason
            r.next_attempt = time.monotonic() + self._reconnect_seconds
            self._cond.notify_all()
        if current is not None:
            current.close()
            self._discover_now.set()
            self._wake.set()

    def _maintain(self) -> None:
        """Background: reconnects disconnected replicas; runs ``discover``."""
        last_discover = time.monotonic()
        while not self._closed:
            self._wake.wait(self._reconnect_seconds)
            self._wake.clear()
            if self._closed:
                return
            now = time.monotonic()
            if self._discover is not None and (self._discover_now.is_set() or now - last_discover >= self._discover_every):
                self._discover_now.clear()
                last_discover = now
                try:
                    self.set_replicas(list(self._discover()))
                except Exception as e:  # a supervisor being restarted: keep the current set
                    with self._cond:
                        for r in self._replicas.values():
                            if r.client is None:
                                r.last_error = "discover failed: %s" % e
            with self._cond:
                due = [r for r in self._replicas.values()
                       if r.client is None and not r.removed and r.next_attempt <= time.monotonic()]
            for r in due:
                if self._closed:
                    return
                self._connect(r)

    def _pick(self, version: Optional[int], refused: set, deadline: float) -> Tuple[_Replica, Client]:
        """A connected replica for a request (least outstanding; for ``version``: one that has
        reached it). Waits for one until ``deadline``. Caller holds ``self._cond``."""
        while True:
            self._check_open()
            live = [r for r in self._replicas.values() if r.client is not None and r.address not in refused]
            if version is not None:
                exact = [r for r in live if r.version == version]
                candidates = exact or [r for r in live if r.version > version]
            else:
                candidates = live
            if candidates:
                low = min(r.outstanding for r in candidates)
                best = [r for r in candidates if r.outstanding == low]
                r = best[next(self._rr) % len(best)]
                return r, r.client  # type: ignore[return-value]
            if version is not None and refused and not any(r.address not in refused for r in self._replicas.values()):
                raise NotFound("version %d is not alive on any replica (each answered NotFound)" % version,
                               field="require_version")
            left = deadline - time.monotonic()
            if left <= 0:
                if version is not None and live:
                    raise Timeout("no replica reached version %d within %.0f s (newest: %s)" % (
                        version, self.version_timeout, ", ".join("%s v%d" % (r.address, r.version) for r in live)))
                raise Unavailable("no rollout replica reachable within %.0f s (%s)" % (
                    self.version_timeout, "; ".join("%s: %s" % (r.address, r.last_error or "connecting")
                                                     for r in self._replicas.values()) or "no replicas"))
            self._cond.wait(min(left, 0.5))

    def _on_replica(self, call: Callable[[Client], Any], weight: int, version: Optional[int]) -> Any:
        """Runs ``call`` on a picked replica; fails over when the replica goes away."""
        deadline = time.monotonic() + self.version_timeout
        refused: set = set()
        failures = 0
        while True:
            with self._cond:
                r, client = self._pick(version, refused, deadline)
                r.outstanding += weight
                r.requests += 1
                attempts = 2 * len(self._replicas) + 2
            try:
                return call(client)
            except _GONE as e:
                with self._cond:
                    r.failovers += 1
                self._disconnect(r, "%s: %s" % (type(e).__name__, e), client=client)
                failures += 1
                if failures >= attempts:  # replicas that keep dying under this request: give up
                    raise
                deadline = max(deadline, time.monotonic() + self.version_timeout)
            except NotFound as e:
                if version is None or e.field not in ("require_version", "version", ""):
                    raise
                refused.add(r.address)  # it has retired that version: ask another
            finally:
                with self._cond:
                    r.outstanding -= weight
                    self._cond.notify_all()


class ClusterGenerateStream(Iterator[Union[Chunk, Sample]]):
    """A streamed generation on one replica (:meth:`Cluster.generate` with ``stream=True``): the
    :class:`GenerateStream`'s events. If the replica goes away before the first event the request
    is sent to another replica; after it, the replica's error is raised."""

    def __init__(self, cluster: Cluster, prompts: Any, weight: int, kwargs: Dict[str, Any]) -> None:
        self._cluster = cluster
        self._prompts = prompts
        self._kwargs = kwargs
        self._weight = weight
        self._started = False
        self._replica: Optional[_Replica] = None
        self._client: Optional[Client] = None
        self._stream: Optional[GenerateStream] = None
        self._deadline = time.monotonic() + cluster.version_timeout
        self._refused: set = set()
        self._open()

    @property
    def address(self) -> Optional[str]:
        """The replica the stream runs on."""
        return self._replica.address if self._replica else None

    @property
    def samples(self) -> List[Sample]:
        return self._stream.samples if self._stream else []

    @property
    def done(self) -> Any:
        return self._stream.done if self._stream else None

    def _open(self) -> None:
        c = self._cluster
        version = self._kwargs.get("require_version")
        while True:
            with c._cond:
                r, client = c._pick(version, self._refused, self._deadline)
                r.outstanding += self._weight
                r.requests += 1
            try:
                self._stream = client.generate(self._prompts, stream=True, **self._kwargs)  # type: ignore[assignment]
                self._replica, self._client = r, client
                return
            except _GONE as e:
                self._release(r)
                c._disconnect(r, "%s: %s" % (type(e).__name__, e), client=client)
            except BaseException:
                self._release(r)
                raise

    def _release(self, r: Optional[_Replica]) -> None:
        if r is None:
            return
        with self._cluster._cond:
            r.outstanding -= self._weight
            self._cluster._cond.notify_all()

    def __iter__(self) -> "ClusterGenerateStream":
        return self

    def __next__(self) -> Union[Chunk, Sample]:
        while True:
            if self._stream is None:
                raise StopIteration
            try:
                event = next(self._stream)
                self._started = True
                return event
            except StopIteration:
                self._finish()
                raise
            except _GONE as e:
                r, client = self._replica, self._client
                self._finish()
                with self._cluster._cond:
                    if r is not None:
                        r.failovers += 0 if self._started else 1
                self._cluster._disconnect(r, "%s: %s" % (type(e).__name__, e), client=client)  # type: ignore[arg-type]
                if self._started:
                    raise
                self._open()
            except BaseException:
                self._finish()
                raise

    def _finish(self) -> None:
        if self._replica is not None:
            self._release(self._replica)
            self._replica = None

    def close(self) -> None:
        """Stops reading (cancels the generation if it still runs)."""
        if self._stream is not None:
            self._stream.close()
        self._finish()

    def __enter__(self) -> "ClusterGenerateStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
