#!/usr/bin/env python3
"""bench-cluster: one learner and rollout replicas as plain `selm serve` processes on this machine
(release build, SmolLM2 by default), driven through `selm_client.Cluster`. Prints:

1. **Publish → first sample.** The learner publishes a version (RefreshWeights of a checkpoint
   saved at the start: a new version number, the same weights), `--publications` times, with the
   replicas idle (each gets one short request — 1 prompt, 4 new tokens — as soon as it announces
   the version), then again while one client per replica keeps asking for such generations back to
   back. Measured per publication and replica, from the moment the learner's own version
   subscription announces it: when the replica announces it (fetched, checked and installed), and
   when the first sample produced by that version comes back.
2. **Bytes per version**, measured: the learner's `selm_weights_served_bytes_total` (FetchWeights
   payload bytes it sent) per fetch, and the bytes each replica's log says it fetched, for replicas
   with a bf16 engine (the default: the linear layers travel in bf16) and with an f32 engine.
3. **Rollout throughput with 1 and with 2 replicas**: `--clients` threads each generating
   8 prompts × n 4 × `--max-tokens` new tokens (sampled, ignore EOS) through the Cluster for
   `--seconds`, `--rounds` times alternately; generated tokens per second. The learner runs beside them, idle. On this 2-core
   machine two replicas share the same two cores as one (each engine would use both), so the
   figure shows the cost of the split, not a speed-up; on separate machines rollout throughput
   adds up per replica (README "Deployment").

    make bench-cluster              # or: python3 scripts/bench_cluster.py --seconds 30
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Dict, List, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python"))
from selm_client import Client, Cluster  # noqa: E402

PROMPTS = ["Explain photosynthesis.", "Tell me about the ocean.", "Describe how a car engine works.",
           "What is machine learning?", "Explain why the sky is blue.", "Tell me about the history of Rome.",
           "How do airplanes fly?", "Describe the water cycle."]


class Proc:
    """A `selm serve` process with its own data directory; the address is read back from its log."""

    def __init__(self, selm: str, model: str, role: str, extra: List[str], root: pathlib.Path, name: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "serve.log"
        self.cmd = [selm, "serve", "--model", model, "--role", role, "--address", "127.0.0.1:0",
                    "--data-dir", str(self.dir / "data")] + extra
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            m = re.search(r"listening on tcp (\S+)", self.log())
            if m:
                self.address = m.group(1)
                return
            if self.proc.poll() is not None:
                raise SystemExit("%s exited:\n%s" % (" ".join(self.cmd), self.log()))
            time.sleep(0.05)
        raise SystemExit("%s did not listen within 300 s" % name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def metric(address: str, name: str) -> float:
    text = urllib.request.urlopen("http://%s/metrics" % address, timeout=10).read().decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    if not m:
        raise SystemExit("metric %s not found at %s" % (name, address))
    return float(m.group(1))


def fetched_bytes(log: str) -> List[int]:
    return [int(n) for n in re.findall(r"fetched \((\d+) bytes of", log)]


def fmt_ms(xs: List[float]) -> str:
    if not xs:
        return "-"
    return "median %.0f ms (min %.0f, max %.0f, n=%d)" % (statistics.median(xs) * 1e3, min(xs) * 1e3, max(xs) * 1e3, len(xs))


def publish_latency(cluster: Cluster, replicas: List[Proc], publications: int, gap: float, busy: bool) -> None:
    """Phase 1 (see the module doc). `busy`: the replicas generate back to back meanwhile; else
    each replica gets one short request as soon as it announces the version."""
    learner_versions = cluster.subscribe_versions()
    learner_versions.get(timeout=30)
    announced: Dict[str, Dict[int, float]] = {r.address: {} for r in replicas}
    first_sample: Dict[str, Dict[int, float]] = {r.address: {} for r in replicas}
    stop = threading.Event()

    def watch(address: str) -> None:
        with Client(address, timeout=300) as c, c.subscribe_versions() as sub:
            while not stop.is_set():
                e = sub.get(timeout=0.2)
                if e is not None:
                    announced[address].setdefault(e.version, time.monotonic())

    def sample(address: str) -> None:
        with Client(address, timeout=300) as c:
            while not stop.is_set():
                if not busy:
                    newest = max(announced[address], default=0)
                    if newest in first_sample[address] or not announced[address]:
                        time.sleep(0.001)
                        continue
                for s in c.generate(PROMPTS[0], chat=True, max_tokens=4, temperature=1.0):
                    first_sample[address].setdefault(s.version, time.monotonic())

    threads = [threading.Thread(target=f, args=(r.address,), daemon=True) for r in replicas for f in (watch, sample)]
    for t in threads:
        t.start()
    time.sleep(2)
    published: Dict[int, float] = {}
    for _ in range(publications):
        v = cluster.refresh_weights("checkpoints/bench")
        while v not in published:
            e = learner_versions.get(timeout=120)
            if e is None:
                raise SystemExit("the learner did not announce version %d" % v)
            published.setdefault(e.version, time.monotonic())
        cluster.wait_for_version(v, timeout=300)
        deadline = time.monotonic() + 120
        while not all(any(x >= v for x in first_sample[r.address]) for r in replicas) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(gap)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    learner_versions.close()
    to_install, to_sample = [], []
    for v, t0 in published.items():
        for r in replicas:
            if v in announced[r.address]:
                to_install.append(announced[r.address][v] - t0)
            later = [t for x, t in first_sample[r.address].items() if x >= v]
            if later:
                to_sample.append(min(later) - t0)
    what = "replicas generating meanwhile" if busy else "replicas idle"
    print("publish → replica serves it (fetched, checked, installed, announced), %s: %s" % (what, fmt_ms(to_install)))
    print("publish → first sample of that version back from a replica,           %s: %s" % (what, fmt_ms(to_sample)))


def throughput(cluster: Cluster, clients: int, seconds: float, max_tokens: int) -> float:
    """Phase 3: generated tokens/s through the cluster."""
    tokens = [0] * clients
    stop = time.monotonic() + seconds
    errors: List[str] = []

    def run(i: int) -> None:
        k = 0
        while time.monotonic() < stop:
            k += 1
            try:
                got = cluster.generate([PROMPTS[(i + j) % len(PROMPTS)] for j in range(8)], chat=True, n=4,
                                       max_tokens=max_tokens, temperature=1.0, ignore_eos=True, seed=i * 10000 + k)
            except Exception as e:
                errors.append(repr(e))
                return
            if time.monotonic() <= stop + 5:
                tokens[i] += sum(s.completion_tokens for s in got)

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if errors:
        raise SystemExit("generation failed: %s" % errors[:3])
    return sum(tokens) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selm", default=str(REPO / ".build" / "release" / "selm"))
    p.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--publications", type=int, default=5)
    p.add_argument("--gap", type=float, default=1.0, help="seconds between a publication's last sample and the next")
    p.add_argument("--seconds", type=float, default=20.0, help="per throughput phase")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds (1 and 2 replicas alternately)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--engine-precision", default="bf16", help="the replicas' and the learner's engines")
    p.add_argument("--keep", action="store_true", help="keep the processes' directories (logs) and print where")
    args = p.parse_args()
    if not os.path.isfile(args.selm):
        raise SystemExit("no %s: swift build -c release --product selm" % args.selm)
    root = pathlib.Path(tempfile.mkdtemp(prefix="selm-bench-cluster-"))
    procs: List[Proc] = []
    try:
        print("machine: %d cores, load %.1f %.1f %.1f (other work on the machine counts in every figure)"
              % ((os.cpu_count() or 0,) + os.getloadavg()))
        ep = ["--engine-precision", args.engine_precision]
        learner = Proc(args.selm, args.model, "learner", ep + ["--metrics", "127.0.0.1:0", "--checkpoint-every", "0"],
                       root, "learner")
        procs.append(learner)
        metrics_address = None
        for _ in range(100):
            m = re.search(r"listening on metrics http://(\S+?)/metrics", learner.log())
            if m:
                metrics_address = m.group(1)
                break
            time.sleep(0.05)
        if metrics_address is None:
            raise SystemExit("the learner's log names no metrics address")
        follow = ["--follow", learner.address, "--follow-retry-seconds", "0.2"]
        replicas = [Proc(args.selm, args.model, "rollout", ep + follow, root, "replica-%d" % i) for i in range(2)]
        procs += replicas
        print("learner %s, replicas %s; engines %s" % (learner.address, [r.address for r in replicas], args.engine_precision))

        with Cluster([r.address for r in replicas], learner.address, timeout=600, version_timeout=300) as cluster:
            served0 = metric(metrics_address, "selm_weights_served_bytes_total")
            cluster.save_checkpoint("bench")
            publish_latency(cluster, replicas, args.publications, args.gap, busy=False)
            publish_latency(cluster, replicas, args.publications, args.gap, busy=True)
            fetches = sum(len(fetched_bytes(r.log())) for r in replicas)
            served = metric(metrics_address, "selm_weights_served_bytes_total") - served0
            per = served / max(1, fetches - 2)  # the two start-up fetches came before served0
            print("bytes per version per replica (%s engine), learner's metric: %.1f MB (%d fetches)" % (
                args.engine_precision, per / 1e6, fetches - 2))
            sizes = sorted(set(b for r in replicas for b in fetched_bytes(r.log())))
            print("bytes per version per replica (%s engine), replicas' logs: %s" % (
                args.engine_precision, ", ".join("%.1f MB" % (b / 1e6) for b in sizes)))

            # An f32-engine replica: what it fetches (f32 for every tensor).
            f32 = Proc(args.selm, args.model, "rollout", ["--engine-precision", "f32"] + follow, root, "replica-f32")
            procs.append(f32)
            print("bytes per version per replica (f32 engine), replica's log: %s" % (
                ", ".join("%.1f MB" % (b / 1e6) for b in fetched_bytes(f32.log()))))
            f32.stop()
            procs.remove(f32)

            # 1 and 2 replicas alternately (the machine's other load drifts), warm-up first.
            results: Dict[int, List[float]] = {1: [], 2: []}
            throughput(cluster, args.clients, 5, args.max_tokens)
            for rnd in range(args.rounds):
                for n in ((1, 2) if rnd % 2 == 0 else (2, 1)):
                    cluster.set_replicas([r.address for r in replicas[:n]])
                    cluster.wait_for_version(cluster.status().policy_version, timeout=300)
                    tps = throughput(cluster, args.clients, args.seconds, args.max_tokens)
                    results[n].append(tps)
                    print("round %d: %d replica%s %.1f generated tokens/s" % (rnd + 1, n, "" if n == 1 else "s", tps))
            for n in (1, 2):
                print("rollout throughput, %d replica%s: median %.1f generated tokens/s over %d rounds (%d clients × 8 prompts × n 4 × %d tokens, %.0f s each)"
                      % (n, "" if n == 1 else "s", statistics.median(results[n]), args.rounds, args.clients,
                         args.max_tokens, args.seconds))
            print("2 replicas / 1 replica: %.2f (both replicas on these same 2 cores)"
                  % (statistics.median(results[2]) / statistics.median(results[1])))
    finally:
        for pr in procs:
            pr.stop()
        if args.keep:
            print("logs: %s" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
