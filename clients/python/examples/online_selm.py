#!/usr/bin/env python3
"""Online SELM, end to end: rollouts from the server, a judge, preferences streamed back, and the
server's learner hot-swapping better weights in while we keep asking for rollouts.

Per round, for a batch of training prompts: k sampled responses and the greedy response (y_ref,
SELM's reference response) from the current version; the judge scores them; best → chosen, worst →
rejected, greedy → reference_response; the rows go to the server. Each time the server publishes a
new version, the greedy answers to held-out prompts are judged under exactly that version, and the
learner's metrics are printed as a growing table. At the end: a PNG plot and a JSONL of every round.

    python examples/online_selm.py                       # starts `selm serve` itself
    python examples/online_selm.py --alpha 0             # online DPO
    python examples/online_selm.py --compare             # SELM and DPO from the same start
    python examples/online_selm.py --address 127.0.0.1:7070   # use a running server
    python examples/online_selm.py --async               # the same loop on selm_client.aio (asyncio)
    python examples/online_selm.py --ray 2               # a learner and 2 rollout replicas on Ray
                                                         # (pip install selm-client[ray]; selm_client.ray)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from selm_client import Client  # noqa: E402
from selm_client.aio import AsyncClient  # noqa: E402
from judges import Judge, concise_judge  # noqa: E402

REPO = HERE.parents[2]

TRAIN_PROMPTS = [
    "Explain photosynthesis.", "Tell me about the ocean.", "Describe how a car engine works.",
    "What is machine learning?", "Explain why the sky is blue.", "Tell me about the history of Rome.",
    "How do airplanes fly?", "Describe the water cycle.", "What is a black hole?", "Explain how vaccines work.",
    "Tell me about the Moon.", "What causes earthquakes?", "Describe a healthy breakfast.", "How does the internet work?",
    "Explain gravity.", "What is democracy?", "Tell me about elephants.", "How do plants grow?",
    "Describe the city of Paris.", "What is a computer?", "Explain the seasons.", "Tell me about the Sun.",
    "How do bees make honey?", "What is climate change?", "Describe a rainforest.", "Explain how a battery works.",
    "Tell me about dinosaurs.", "What is music?", "How does the heart work?", "Describe the game of chess.",
    "Explain what a virus is.", "Tell me about mountains.", "What is electricity?", "How do fish breathe?",
    "Describe a thunderstorm.", "What is an atom?", "Explain how rain forms.", "Tell me about the pyramids.",
    "How do magnets work?", "What is a volcano?", "Describe the solar system.", "Explain recycling.",
    "Tell me about penguins.", "What is friendship?", "How do clouds form?", "Describe a desert.",
    "Explain how a bicycle works.", "What is a rainbow?",
]
HELDOUT_PROMPTS = [
    "Explain how a refrigerator works.", "Tell me about the Amazon river.", "What is a galaxy?",
    "Describe a coral reef.", "How do birds migrate?", "Explain what DNA is.", "Tell me about the Great Wall of China.",
    "What is an earthquake?", "Describe how bread is made.", "Explain tides.", "Tell me about whales.",
    "What is a glacier?", "How does a telescope work?", "Describe autumn.", "Explain what a comet is.",
    "Tell me about honeybees.",
]


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, alpha: float, data_dir: pathlib.Path, log_path: pathlib.Path):
    port = free_port()
    cmd = [args.selm, "serve", "--model", args.model, "--address", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
           *learner_options(args, alpha)]
    log(f"starting: {' '.join(cmd)}")
    logf = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    t0 = time.time()
    while time.time() - t0 < 120:
        if proc.poll() is not None:
            raise SystemExit(f"selm serve exited with {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("selm serve did not start listening within 2 minutes")


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def messages(prompt: str):
    return [{"role": "user", "content": prompt}]


def evaluate(client: Client, judge: Judge, version: int, max_tokens: int) -> float:
    """Mean judge reward of greedy answers to the held-out prompts, generated by `version` itself."""
    samples = client.generate([messages(p) for p in HELDOUT_PROMPTS], chat=True, temperature=0.0,
                              max_tokens=max_tokens, require_version=version)
    return heldout_reward(samples, judge, version)


async def evaluate_async(client: AsyncClient, judge: Judge, version: int, max_tokens: int) -> float:
    """`evaluate` on the asyncio client."""
    samples = await client.generate([messages(p) for p in HELDOUT_PROMPTS], chat=True, temperature=0.0,
                                    max_tokens=max_tokens, require_version=version)
    return heldout_reward(samples, judge, version)


def heldout_reward(samples, judge: Judge, version: int) -> float:
    assert all(s.version == version for s in samples)
    return sum(judge(HELDOUT_PROMPTS[s.prompt_index], s) for s in samples) / len(samples)


class Loop:
    """The client-independent part of one online run: prompt order, judging, the table and the JSONL.
    `drive` (blocking `Client`) and `drive_async` (`selm_client.aio.AsyncClient`) do the calls."""

    def __init__(self, args, label: str, judge: Judge, rounds_path: pathlib.Path) -> None:
        self.args, self.label, self.judge, self.rounds_path = args, label, judge, rounds_path
        self.table: List[Dict] = []
        self.rng = random.Random(args.seed)
        self.t_start = time.time()
        self.order: List[str] = []
        self.round_no = 0

    def more(self) -> bool:
        """Whether to run another round: --rounds if given, else the --minutes budget."""
        if self.args.rounds is not None:
            return self.round_no < self.args.rounds
        return time.time() - self.t_start < self.args.minutes * 60

    def next_batch(self) -> List[str]:
        self.round_no += 1
        if len(self.order) < self.args.batch:
            self.order += self.rng.sample(TRAIN_PROMPTS, len(TRAIN_PROMPTS))
        batch, self.order = self.order[:self.args.batch], self.order[self.args.batch:]
        return batch

    def first_row(self, version: int, reward: float) -> None:
        row = {"run": self.label, "version": version, "learner_step": 0, "heldout_reward": reward,
               "rewards/margins": None, "rewards/accuracies": None, "loss": None, "elapsed": time.time() - self.t_start}
        self.table.append(row)
        log(f"\n[{self.label}] {'version':>7} {'step':>5} {'held-out reward':>16} {'margin':>9} {'accuracy':>9} {'loss':>8} {'time':>7}")
        print_row(self.label, row)

    def rows(self, batch: List[str], sampled, greedy, prompt_ids: List[List[int]]):
        """best → chosen, worst → rejected, greedy → reference_response; (rows, every sample's score)."""
        rows, scores = [], []
        for i, prompt in enumerate(batch):
            cands = [s for s in sampled if s.prompt_index == i]
            scored = sorted(((self.judge(prompt, s), s) for s in cands), key=lambda x: x[0])
            scores += [x[0] for x in scored]
            (worst_r, worst), (best_r, best) = scored[0], scored[-1]
            if best_r <= worst_r:
                continue  # no preference to learn from
            rows.append({"prompt_ids": prompt_ids[i], "chosen_ids": best.token_ids, "rejected_ids": worst.token_ids,
                         "reference_ids": greedy[i].token_ids,
                         # the version the responses came from: the learner counts the row's staleness
                         "version": min(best.version, worst.version, greedy[i].version)})
        return rows, scores

    def record_round(self, sampled, rows, scores, ack, t0: float) -> None:
        versions = sorted({s.version for s in sampled})
        rec = {"run": self.label, "round": self.round_no, "versions": versions,
               "mean_sample_reward": sum(scores) / len(scores), "rows": len(rows),
               "wal_sequence": ack.last_sequence if ack else None, "generate_seconds": time.time() - t0,
               "elapsed": time.time() - self.t_start}
        with open(self.rounds_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        log(f"[{self.label}] round {self.round_no:3d}: rollouts from version {versions}, mean sampled reward "
            f"{rec['mean_sample_reward']:+.3f}, {len(rows)} preference rows sent ({rec['generate_seconds']:.1f}s)")

    def is_new(self, event) -> bool:
        return event is not None and event.version != self.table[-1]["version"]

    def record_version(self, event, reward: float) -> None:
        m = event.metrics
        row = {"run": self.label, "version": event.version, "learner_step": event.learner_step,
               "heldout_reward": reward, "rewards/margins": m.get("rewards/margins"),
               "rewards/accuracies": m.get("rewards/accuracies"), "loss": m.get("loss"),
               "elapsed": time.time() - self.t_start}
        self.table.append(row)
        with open(self.rounds_path, "a") as f:
            f.write(json.dumps({"eval": row}) + "\n")
        print_row(self.label, row)


def drive(client, loop: Loop) -> None:
    """The online loop on the blocking client (a `Client`, or a `Cluster` of rollout replicas and
    their learner: the same calls): one call after another."""
    args = loop.args
    subscription = client.subscribe_versions()
    first = subscription.get(timeout=30)
    version = first.version if first else client.hello.policy_version
    loop.first_row(version, evaluate(client, loop.judge, version, args.max_tokens))
    while loop.more():
        batch = loop.next_batch()
        msgs = [messages(p) for p in batch]
        t0 = time.time()
        sampled = client.generate(msgs, chat=True, n=args.n, temperature=args.temperature,
                                  max_tokens=args.max_tokens, seed=loop.rng.randrange(1 << 31))
        greedy = client.generate(msgs, chat=True, temperature=0.0, max_tokens=args.max_tokens)
        rows, scores = loop.rows(batch, sampled, greedy, [client.tokenize(m, chat=True) for m in msgs])
        ack = client.submit_preferences(rows) if rows else None
        loop.record_round(sampled, rows, scores, ack, t0)
        # Evaluate the newest version published since the last look.
        newest, ev = None, subscription.get(timeout=0)
        while ev is not None:
            newest, ev = ev, subscription.get(timeout=0)
        if loop.is_new(newest):
            loop.record_version(newest, evaluate(client, loop.judge, newest.version, args.max_tokens))
    subscription.close()


async def drive_async(address: str, loop: Loop) -> None:
    """The online loop on `selm_client.aio`: a round's sampled and greedy rollouts and its prompt
    tokenizations are in flight together on one connection, and the subscription is read alongside."""
    args = loop.args
    async with AsyncClient(address) as client:
        async with await client.subscribe_versions() as subscription:
            first = await subscription.get(timeout=30)
            version = first.version if first else client.hello.policy_version
            loop.first_row(version, await evaluate_async(client, loop.judge, version, args.max_tokens))
            while loop.more():
                batch = loop.next_batch()
                msgs = [messages(p) for p in batch]
                t0 = time.time()
                sampled, greedy, *prompt_ids = await asyncio.gather(
                    client.generate(msgs, chat=True, n=args.n, temperature=args.temperature,
                                    max_tokens=args.max_tokens, seed=loop.rng.randrange(1 << 31)),
                    client.generate(msgs, chat=True, temperature=0.0, max_tokens=args.max_tokens),
                    *(client.tokenize(m, chat=True) for m in msgs))
                rows, scores = loop.rows(batch, sampled, greedy, prompt_ids)
                ack = await client.submit_preferences(rows) if rows else None
                loop.record_round(sampled, rows, scores, ack, t0)
                newest, ev = None, await subscription.poll()
                while ev is not None:
                    newest, ev = ev, await subscription.poll()
                if loop.is_new(newest):
                    loop.record_version(newest, await evaluate_async(client, loop.judge, newest.version, args.max_tokens))


def learner_options(args, alpha: float) -> List[str]:
    """The learner's `selm serve` options of this run."""
    opts = ["--alpha", str(alpha), "--beta", str(args.beta), "--lr", str(args.lr), "--batch-size", str(args.batch),
            "--publish-every", "1", "--warmup-steps", "0"]
    if args.precision:
        opts += ["--precision", args.precision]
    return opts


def launch_on_ray(args, alpha: float, out_dir: pathlib.Path, label: str):
    """A learner and `args.ray` rollout replicas as Ray actors (selm_client.ray); returns the Cluster."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from selm_client.ray import launch
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # an existing cluster
        else:
            # A local instance on this machine, kept on the loopback interface.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(num_cpus=args.ray + 2, include_dashboard=False, log_to_driver=False)
    work = out_dir / f"ray-{label}"
    shutil.rmtree(work, ignore_errors=True)
    log(f"starting on Ray: 1 learner + {args.ray} rollout replicas of {args.model} (logs in {work})")
    cluster = launch(args.ray, model=args.model, selm=args.selm, learner_args=learner_options(args, alpha),
                     work_dir=str(work), timeout=600)
    log(f"learner {cluster.learner_address}, replicas {[r.address for r in cluster.replicas()]}")
    return cluster


def run(args, label: str, alpha: float, out_dir: pathlib.Path, judge: Judge) -> List[Dict]:
    """One online run; returns the per-version table rows. Writes every round to the JSONL."""
    data_dir = out_dir / f"data-{label}"
    shutil.rmtree(data_dir, ignore_errors=True)
    loop = Loop(args, label, judge, out_dir / "rounds.jsonl")
    if args.ray:
        cluster = launch_on_ray(args, alpha, out_dir, label)
        try:
            drive(cluster, loop)
            report_cluster(cluster, label)
        finally:
            cluster.close()
        return loop.table
    proc = None
    address = args.address
    if not address:
        proc, address = start_server(args, alpha, data_dir, out_dir / f"server-{label}.log")
    try:
        if args.use_async:
            asyncio.run(drive_async(address, loop))
        else:
            with Client(address) as client:
                drive(client, loop)
    finally:
        if proc is not None:
            stop_server(proc)
    return loop.table


def report_cluster(cluster, label: str) -> None:
    """Where the rollouts ran and how stale the learner's rows were."""
    for r in cluster.replicas():
        log(f"[{label}] replica {r.address}: {r.requests} requests, version {r.version}, {r.failovers} failed over")
    status = cluster.status()
    hist = ", ".join(f"≤{le if le < 2**63 else '∞'}: {n}" for le, n in status.staleness.items() if n)
    log(f"[{label}] learner: step {status.learner_step}, version {status.policy_version}, row staleness (versions) {hist or '-'}")


def fmt(x: Optional[float], spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def print_row(label: str, r: Dict) -> None:
    log(f"[{label}] {r['version']:>7} {r['learner_step']:>5} {r['heldout_reward']:>+16.3f} "
        f"{fmt(r['rewards/margins'], '>+9.4f'):>9} {fmt(r['rewards/accuracies'], '>9.2f'):>9} "
        f"{fmt(r['loss'], '>8.4f'):>8} {r['elapsed']:>6.0f}s")


def plot(tables: Dict[str, List[Dict]], path: pathlib.Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in tables.items():
        a.plot([r["version"] for r in rows], [r["heldout_reward"] for r in rows], marker="o", label=label)
        ms = [r for r in rows if r["rewards/margins"] is not None]
        b.plot([r["version"] for r in ms], [r["rewards/margins"] for r in ms], marker="o", label=label)
    a.set_xlabel("policy version"); a.set_ylabel("held-out judge reward (greedy)"); a.grid(alpha=0.3)
    b.set_xlabel("policy version"); b.set_ylabel("rewards/margins (learner)"); b.grid(alpha=0.3)
    a.legend(); b.legend()
    fig.suptitle("Online SELM on SmolLM2-135M-Instruct")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")


class DeprecatedSpelling(argparse.Action):
    """An old option name kept working: stores into the new one's ``dest`` and says so on stderr once."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print("%s: warning: %s is deprecated; use %s" % (parser.prog, option_string, self.new), file=sys.stderr)
        setattr(namespace, self.dest, values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selm", default=str(REPO / ".build" / "release" / "selm"), help="the selm binary")
    p.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--address", help="use a running server at HOST:PORT instead of starting one")
    p.add_argument("--connect", dest="address", action=DeprecatedSpelling, new="--address")
    p.add_argument("--out", default=str(REPO / "demo-out"), help="output directory (plot, JSONL, logs)")
    p.add_argument("--minutes", type=float, default=6.0, help="time budget per run")
    p.add_argument("--alpha", type=float, default=0.001, help="SELM optimism weight (0 = online DPO)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch", type=int, default=8, help="prompts per round (= pairs per optimizer step)")
    p.add_argument("-n", type=int, default=4, help="samples per prompt (as selm client generate -n and the API's n)")
    p.add_argument("-k", dest="n", type=int, action=DeprecatedSpelling, new="-n")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--precision", choices=["f32", "bf16"], help="the learner's products (selm serve --precision; default: the server's)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="run SELM and DPO from the same start and plot both")
    p.add_argument("--rounds", type=int, help="run this many rounds (instead of the --minutes budget)")
    p.add_argument("--async", dest="use_async", action="store_true",
                   help="drive the loop with the asyncio client (selm_client.aio): each round's rollouts concurrently")
    p.add_argument("--ray", type=int, metavar="N",
                   help="run on Ray: a learner and N rollout replicas as actors (selm_client.ray; "
                        "pip install selm-client[ray]); joins RAY_ADDRESS's cluster, else starts a local one")
    args = p.parse_args()
    if args.ray is not None and (args.address or args.use_async or args.ray < 1):
        p.error("--ray N (N ≥ 1) starts its own servers and drives them with the blocking Cluster: "
                "not with --address or --async")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounds.jsonl").unlink(missing_ok=True)
    judge = concise_judge()
    t0 = time.time()
    runs = [("SELM", args.alpha), ("DPO", 0.0)] if args.compare else [("SELM" if args.alpha > 0 else "DPO", args.alpha)]
    tables = {label: run(args, label, alpha, out, judge) for label, alpha in runs}
    plot(tables, out / "reward.png")
    log(f"rounds and evaluations: {out / 'rounds.jsonl'}")
    for label, rows in tables.items():
        log(f"{label}: held-out reward {rows[0]['heldout_reward']:+.3f} (version {rows[0]['version']}) → "
            f"{rows[-1]['heldout_reward']:+.3f} (version {rows[-1]['version']}) in {rows[-1]['elapsed'] / 60:.1f} min")
    log(f"total time {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
