"""``selm_client.ray.launch`` on a local Ray instance (one machine): one learner and two rollout
replicas as Ray actors running the real ``selm`` binary on the tiny chat model.

While two driver threads run the online loop (rollouts on the cluster, preference rows carrying
their samples' versions to the learner, which steps and publishes after every row), one replica's
``selm serve`` is killed with SIGKILL. Then: no generation call failed (in-flight requests moved to
the other replica), the launcher restarted the replica at a new address and the cluster uses it,
every acknowledged preference is in the learner's log exactly once and consumed, every sample
carries a version the learner published, both replicas reach the learner's newest version, and the
staleness histogram counts rows sent with old versions where they belong.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import ray

from conftest import REPLY_TIMEOUT, TINY_CHAT, selm_binary
from selm_client.ray import launch

PROMPTS = [[1, 20, 21, 22], [1, 30, 31], [1, 40, 41, 42, 43]]


def wait_until(what, cond, timeout=120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def test_learner_and_two_replicas_on_ray() -> None:
    t_start = time.monotonic()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    t_ray = time.monotonic()
    cluster = launch(2, model=str(TINY_CHAT), selm=str(selm_binary()),
                     learner_args=["--lr", "1e-3", "--batch-size", "1", "--max-wait-seconds", "0",
                                   "--engine-precision", "f32"],
                     replica_args=["--engine-precision", "f32", "--follow-retry-seconds", "0.2"],
                     timeout=REPLY_TIMEOUT, version_timeout=60, reconnect_seconds=0.1)
    t_launched = time.monotonic()
    try:
        run(cluster)
    finally:
        cluster.close()
        ray.shutdown()
    print("ray.init %.1f s, launch %.1f s, test %.1f s" % (t_ray - t_start, t_launched - t_ray,
                                                          time.monotonic() - t_launched))


def run(cluster) -> None:  # type: ignore[no-untyped-def]
    learner_address = cluster.learner_address
    first = cluster.status()
    assert first.role == "learner"

    # Every version the learner publishes, from its own subscription.
    published = {first.policy_version}
    subscription = cluster.subscribe_versions()

    def record_versions() -> None:
        for event in subscription:
            published.add(event.version)

    recorder = threading.Thread(target=record_versions, daemon=True)
    recorder.start()

    # Two drivers: rollouts from the cluster, best-vs-worst rows with their samples' version.
    stop = threading.Event()
    samples, acks, errors = [], [], []
    lock = threading.Lock()

    def driver(seed: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                got = cluster.generate(PROMPTS, n=2, max_tokens=8, temperature=1.0, seed=seed * 1000 + i)
                rows = []
                for p, prompt in enumerate(PROMPTS):
                    a, b = [s for s in got if s.prompt_index == p]
                    if a.token_ids != b.token_ids:
                        rows.append({"prompt_ids": prompt, "chosen_ids": a.token_ids, "rejected_ids": b.token_ids,
                                     "version": min(a.version, b.version)})
                ack = cluster.submit_preferences(rows) if rows else None
                with lock:
                    samples.extend(got)
                    if ack is not None:
                        acks.append((ack, len(rows)))
            except Exception as e:  # every failure is a test failure, reported below
                with lock:
                    errors.append(repr(e))
                return

    drivers = [threading.Thread(target=driver, args=(k,)) for k in (1, 2)]
    for t in drivers:
        t.start()
    try:
        wait_until("a few rounds", lambda: len(acks) >= 4)
        # kill -9 one replica's selm process while both drivers have requests in flight.
        before = cluster.replica_info()
        victim = before[0]
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        # The launcher restarts it (a new actor process, a new selm serve on a new port) ...
        def restarted():  # type: ignore[no-untyped-def]
            try:
                info = ray.get(cluster.replica_actors[0].info.remote(), timeout=60)
            except ray.exceptions.RayError:  # the actor is being restarted
                return None
            return info if info["pid"] != victim["pid"] else None

        new = wait_until("the replica to be restarted", restarted)
        assert new["address"] != victim["address"]
        # ... and the cluster picks the new address up and sends it work.
        wait_until("the cluster to use the new replica", lambda: any(
            r.address == new["address"] and r.connected and r.requests > 0 for r in cluster.replicas()))
        replaced_after = time.monotonic() - killed_at
        n_before = len(acks)
        wait_until("more rounds after the restart", lambda: len(acks) >= n_before + 4)
    finally:
        stop.set()
        for t in drivers:
            t.join(timeout=REPLY_TIMEOUT)
    assert errors == [], errors
    addresses = {r.address for r in cluster.replicas()}
    assert victim["address"] not in addresses and new["address"] in addresses and len(addresses) == 2

    # Nothing acknowledged lost: one log record per acknowledged batch, 1..N, all consumed.
    sequences = sorted(ack.last_sequence for ack, _ in acks)
    assert sequences == list(range(1, len(acks) + 1))
    assert all(ack.rows == n and ack.stale_rows == 0 for ack, n in acks)
    status = wait_until("the learner to consume the log", lambda: (lambda s: s if s.wal_consumed_sequence == s.wal_last_sequence
                                                                    else None)(cluster.status()))
    assert status.wal_last_sequence == len(acks)
    assert status.learner_step >= sum(n for _, n in acks)  # batch size 1: a step per row
    newest = status.policy_version

    # Versions reach both replicas (the restarted one too), under the learner's numbers.
    wait_until("the learner's last version in the subscription", lambda: newest in published)
    assert len(cluster.wait_for_version(newest, replicas=2, timeout=60)) == 2
    replica_status = cluster.replica_status()
    assert {s.policy_version for s in replica_status.values()} == {newest}
    assert {s.following for s in replica_status.values()} == {learner_address}
    # Every sample carries a version the learner published.
    assert samples and {s.version for s in samples} <= published, sorted({s.version for s in samples} - published)
    assert len({s.version for s in samples}) > 1  # the rollouts did follow the learner's updates

    # Staleness: rows sent with old versions land in the learner's histogram (newest − version).
    hist = cluster.status().staleness
    rows = [{"prompt_ids": PROMPTS[0], "chosen_ids": [30, 2], "rejected_ids": [40, 2], "version": newest - d}
            for d in (0, 1, 3, 3)]
    ack = cluster.submit_preferences(rows)
    assert ack.rows == 4
    after = cluster.status().staleness
    delta = {le: after.get(le, 0) - hist.get(le, 0) for le in after}
    assert delta[0] == 1 and delta[1] == 1 and delta[4] == 2 and sum(delta.values()) == 4, delta
    print("kill -9 → new replica in use: %.1f s; %d batches acknowledged, %d samples, versions %d..%d" % (
        replaced_after, len(acks), len(samples), min(published), newest))
    subscription.close()


def test_online_example_runs_on_ray(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`examples/online_selm.py --ray 2`: its own local Ray instance, a learner and two replicas, three
    short rounds driven through the Cluster; both replicas served rollouts, the learner counted the
    rows' staleness."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parents[1] / "examples" / "online_selm.py"
    r = subprocess.run([sys.executable, str(example), "--ray", "2", "--selm", str(selm_binary()),
                        "--model", str(TINY_CHAT), "--out", str(tmp_path), "--rounds", "3", "--batch", "4",
                        "-n", "4", "--max-tokens", "30", "--temperature", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "round   3: rollouts from version" in r.stdout, r.stdout
    served = [int(n) for n in re.findall(r"replica \S+: (\d+) requests", r.stdout)]
    assert len(served) == 2 and min(served) > 0, r.stdout
    assert re.search(r"learner: step \d+, version \d+, row staleness", r.stdout), r.stdout
