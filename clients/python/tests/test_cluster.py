"""``selm_client.Cluster`` against real processes, without Ray: a learner (``selm serve --role
learner``) and rollout replicas (``--role rollout --follow``) on the tiny chat model, over loopback.

Least-outstanding spreading, ``require_version`` (waits for a replica that has the version; a
version no replica will reach times out; one every replica has retired is ``NotFound``), failover
of an in-flight request when its replica is killed with SIGKILL, reconnection to a replica restarted
at the same address and to one replaced at another, and preferences acknowledged by the learner.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Iterator, List

import pytest

from conftest import REPLY_TIMEOUT, TINY_CHAT, Server
from selm_client import Cluster, ConnectionClosed, NotFound, Sample, Timeout

PROMPT = [1, 20, 21, 22]


def start_learner(*extra: str) -> Server:
    return Server(["--role", "learner", "--lr", "1e-3", "--batch-size", "1", "--max-wait-seconds", "0", *extra],
                  model=TINY_CHAT)


def start_replica(learner: Server, address: str = "127.0.0.1:0") -> Server:
    return Server(["--role", "rollout", "--follow", learner.address, "--follow-retry-seconds", "0.2"],
                  model=TINY_CHAT, address=address)


@pytest.fixture()
def deployment() -> Iterator[List[Server]]:
    """[learner, replica, replica]."""
    servers = [start_learner()]
    try:
        servers += [start_replica(servers[0]), start_replica(servers[0])]
        yield servers
    finally:
        for s in servers:
            s.cleanup()


def by_address(cluster: Cluster):  # type: ignore[no-untyped-def]
    return {r.address: r for r in cluster.replicas()}


def wait_until(what: str, cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def publish(cluster: Cluster, name: str) -> int:
    """A new version on the learner (its own weights, saved and loaded back)."""
    cluster.save_checkpoint(name)
    return cluster.refresh_weights("checkpoints/" + name)


def test_least_outstanding_requests(deployment) -> None:  # type: ignore[no-untyped-def]
    learner, a, b = deployment
    with Cluster([a.address, b.address], learner.address, timeout=REPLY_TIMEOUT) as cluster:
        # A long streamed generation of 8 sequences holds one replica ...
        stream = cluster.generate(PROMPT, n=8, max_tokens=200, ignore_eos=True, stream=True)
        busy = stream.address
        idle = b.address if busy == a.address else a.address
        assert by_address(cluster)[busy].outstanding == 8
        # ... so every short request goes to the other while it runs.
        for _ in range(4):
            samples = cluster.generate(PROMPT, max_tokens=2, temperature=0)
            assert len(samples) == 1 and samples[0].completion_tokens == 2
        info = by_address(cluster)
        assert (info[busy].requests, info[idle].requests) == (1, 4)
        events = list(stream)
        assert sum(isinstance(e, Sample) for e in events) == 8
        assert by_address(cluster)[busy].outstanding == 0

        # Equal requests from 8 threads at once land on both replicas, at most 5 on one.
        before = {k: v.requests for k, v in by_address(cluster).items()}
        errors: list = []

        def one() -> None:
            try:
                cluster.generate(PROMPT, n=4, max_tokens=64, ignore_eos=True)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=REPLY_TIMEOUT)
        assert not errors
        spread = sorted(v.requests - before[k] for k, v in by_address(cluster).items())
        assert sum(spread) == 8 and spread[0] >= 3, spread


def test_require_version_waits_for_a_replica_that_has_it(deployment) -> None:  # type: ignore[no-untyped-def]
    learner, a, b = deployment
    with Cluster([a.address, b.address], learner.address, timeout=REPLY_TIMEOUT, version_timeout=60) as cluster:
        start = cluster.status().policy_version
        cluster.wait_for_version(start)
        # Asked while no replica has the new version (both stopped with SIGSTOP before the learner
        # publishes it): the call waits for a replica that serves it instead of failing.
        for s in (a, b):
            os.kill(s.process.pid, signal.SIGSTOP)
        try:
            v = publish(cluster, "c1")
            assert v > start
            result: list = []
            t = threading.Thread(target=lambda: result.append(cluster.generate(PROMPT, n=2, max_tokens=4,
                                                                                 require_version=v)))
            t.start()
            time.sleep(1.0)
            # Nothing was sent to a replica that lacks the version: the call waits in the cluster.
            assert not result and all(r.version < v and r.outstanding == 0 for r in cluster.replicas())
        finally:
            for s in (a, b):
                os.kill(s.process.pid, signal.SIGCONT)
        t.join(timeout=REPLY_TIMEOUT)
        samples = result[0]
        assert [s.version for s in samples] == [v, v]
        assert cluster.score([(PROMPT, [30, 31])], version=v).version == v
        assert {r.address for r in cluster.replicas() if r.version >= v} != set()
        cluster.wait_for_version(v)
        assert {s.policy_version for s in cluster.replica_status().values()} == {v}
        assert {s.role for s in cluster.replica_status().values()} == {"rollout"}

        # A version no replica reaches: Timeout after version_timeout.
        cluster.version_timeout = 1.0
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            cluster.generate(PROMPT, max_tokens=2, require_version=v + 50)
        assert 0.9 < time.monotonic() - t0 < 10

        # A version every replica has retired (--max-live-versions 3: four newer ones): NotFound.
        for i in range(4):
            newest = publish(cluster, "c%d" % (i + 2))
        cluster.wait_for_version(newest, timeout=60)
        with pytest.raises(NotFound) as e:
            cluster.generate(PROMPT, max_tokens=2, require_version=v)
        assert e.value.field == "require_version"


def test_a_killed_replicas_request_fails_over(deployment) -> None:  # type: ignore[no-untyped-def]
    learner, a, b = deployment
    with Cluster([a.address, b.address], learner.address, timeout=REPLY_TIMEOUT, reconnect_seconds=0.1) as cluster:
        v = cluster.status().policy_version
        cluster.wait_for_version(v)
        acked = [cluster.submit_preferences([{"prompt_ids": PROMPT, "chosen_ids": [30, 2], "rejected_ids": [40, 2],
                                              "version": v}])]
        # Both replicas stopped (SIGSTOP): a request sent now waits on one of them; that one is
        # killed with SIGKILL, the other resumed: the request must come back whole from it.
        for s in (a, b):
            os.kill(s.process.pid, signal.SIGSTOP)
        try:
            result: list = []
            t = threading.Thread(target=lambda: result.append(cluster.generate(PROMPT, n=3, max_tokens=16,
                                                                                 ignore_eos=True, temperature=0)))
            t.start()
            wait_until("the request to be sent", lambda: any(r.outstanding for r in cluster.replicas()))
            victim = next(r.address for r in cluster.replicas() if r.outstanding)
            dead, alive = (a, b) if victim == a.address else (b, a)
            dead.process.kill()
            dead.process.wait()
        finally:
            for s in (a, b):
                if s.process.poll() is None:
                    os.kill(s.process.pid, signal.SIGCONT)
        t.join(timeout=REPLY_TIMEOUT)
        assert len(result) == 1, "the generation did not come back"
        samples = result[0]
        assert len(samples) == 3 and all(s.completion_tokens == 16 and s.finish_reason == "length" for s in samples)
        assert all(s.version == v for s in samples)
        info = by_address(cluster)
        assert info[dead.address].failovers == 1 and not info[dead.address].connected
        assert info[alive.address].requests >= 1

        # Generation goes on on the survivor; preferences go to the learner, acknowledged there.
        assert len(cluster.generate(PROMPT, max_tokens=2)) == 1
        acked.append(cluster.submit_preferences([{"prompt_ids": PROMPT, "chosen_ids": [31, 2],
                                                  "rejected_ids": [41, 2], "version": v}]))
        assert [x.last_sequence for x in acked] == [1, 2]
        assert cluster.status().wal_last_sequence == 2

        # The replica restarted at the same address is reconnected; one started elsewhere is
        # taken in with replace_replica.
        port = dead.address.rpartition(":")[2]
        deployment.append(start_replica(learner, address="127.0.0.1:" + port))
        wait_until("the restarted replica to be reconnected", lambda: by_address(cluster)[dead.address].connected)
        replacement = start_replica(learner)
        deployment.append(replacement)
        cluster.replace_replica(alive.address, replacement.address)
        wait_until("the replacement to be connected", lambda: by_address(cluster).get(replacement.address) is not None
                   and by_address(cluster)[replacement.address].connected)
        assert sorted(by_address(cluster)) == sorted([dead.address, replacement.address])
        for _ in range(4):
            assert len(cluster.generate(PROMPT, max_tokens=2)) == 1
        assert by_address(cluster)[replacement.address].requests >= 1


def test_a_stream_fails_over_before_its_first_event_only(deployment) -> None:  # type: ignore[no-untyped-def]
    learner, a, b = deployment
    with Cluster([a.address, b.address], learner.address, timeout=REPLY_TIMEOUT) as cluster:
        os.kill(a.process.pid, signal.SIGSTOP)
        os.kill(b.process.pid, signal.SIGSTOP)
        try:
            stream = cluster.generate(PROMPT, n=2, max_tokens=8, ignore_eos=True, stream=True)
            dead, alive = (a, b) if stream.address == a.address else (b, a)
            dead.process.kill()
            dead.process.wait()
        finally:
            for s in (a, b):
                if s.process.poll() is None:
                    os.kill(s.process.pid, signal.SIGCONT)
        with stream:
            events = [next(stream)]
            assert stream.address == alive.address  # the request was sent again, to the survivor
            events += list(stream)
        assert sum(isinstance(e, Sample) for e in events) == 2

        # Once events were read, losing the replica is the caller's to handle.
        stream = cluster.generate(PROMPT, n=1, max_tokens=200, ignore_eos=True, stream=True)
        next(stream)
        alive.process.kill()
        with pytest.raises(ConnectionClosed):
            for _ in stream:
                pass


def test_learning_calls_go_to_the_learner(deployment) -> None:  # type: ignore[no-untyped-def]
    learner, a, b = deployment
    with Cluster([a.address, b.address], learner.address, timeout=REPLY_TIMEOUT) as cluster:
        status = cluster.status()
        assert status.role == "learner" and status.staleness == {}
        with cluster.subscribe_versions() as versions:
            first = versions.get(timeout=30)
            assert first is not None and first.version == status.policy_version
            v = publish(cluster, "s1")
            event = versions.get(timeout=30)
            assert event is not None and event.version == v
        # Rows carrying old versions: staleness at intake (learner's newest minus the row's).
        rows = [{"prompt_ids": PROMPT, "chosen_ids": [30, 2], "rejected_ids": [40, 2], "version": version}
                for version in (v, v - 1, v)]
        ack = cluster.submit_preferences(rows)
        assert ack.rows == 3 and ack.stale_rows == 0
        hist = cluster.status().staleness
        assert hist[0] == 2 and hist[1] == 1 and sum(hist.values()) == 3
