#!/usr/bin/env python3
"""Online SELM, end to end: rollouts from the server, a judge, preferences streamed back, and the
server's learner hot-swapping better weights in while we keep asking for rollouts.

Per round, for a batch of training prompts: n sampled responses and the greedy response (y_ref,
SELM's reference response) from the current version; the judge scores the candidates; best →
chosen, worst → rejected, greedy → reference_response; the rows go to the server. Each time the
server publishes a new version, the greedy answers to held-out prompts are judged under exactly that
version, and the learner's metrics are printed as a growing table. At the end: a PNG plot and a
JSONL of every round.

Two loops (``--loop``): ``default`` judges the n samples only and keeps the reference frozen at the
start; ``paper`` is SELM's recipe (arXiv 2405.19332): the greedy answer joins the judged candidates
({y_ref, samples…}: best → chosen, worst → rejected) and the reference is refreshed to the trained
policy every iteration (``--iteration-steps`` optimizer steps; the server's ``--ref-refresh-steps``).

Two budgets: ``--minutes`` (default; rollouts and training overlap, batches also close on time) or
``--steps N``, the experiment mode: reproducible, step-synchronous runs. Batches close by count
only (``selm serve --max-wait-seconds 0``); step s's rows all come from the version step s−1
produced (``require_version``), exactly ``--batch`` of them (a prompt whose candidates the judge
cannot tell apart is skipped and more prompts are drawn, deterministically); the client waits for
the learner between steps, so nothing else runs on the server; every random stream (data order,
each round's sampling seed, the evaluation samples') derives from ``--seed``. Same seed and
settings → the same curve, number for number.

Each version is also measured on the held-out prompts (``--eval-samples`` samples per prompt):
log π − log π_ref of the samples (an estimate of KL(π‖π_ref)) and of the greedy answers (what
SELM's optimism term moves), the mean token entropy of the samples, distinct-1/2 over them, the
share that differ from the greedy answer, and their mean and best-of-n judge reward; π_ref is the
version the learner trained that version against (``VersionEvent.reference_version``).

    python examples/online_selm.py                       # starts `selm serve` itself
    python examples/online_selm.py --alpha 0             # online DPO
    python examples/online_selm.py --compare             # SELM and DPO from the same start
    python examples/online_selm.py --steps 12 --loop paper --seed 1   # one reproducible paper-loop run
    python examples/online_selm.py --judge overlap       # another judge (or --judge module:factory)
    python examples/online_selm.py --address 127.0.0.1:7070   # use a running server
    python examples/online_selm.py --async               # the time-budget loop on selm_client.aio
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from selm_client import Client, NotFound  # noqa: E402
from selm_client.aio import AsyncClient  # noqa: E402
from judges import Judge, load_judge, score_all  # noqa: E402

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

#: Seconds to wait for the learner's next step (a SmolLM2 step of 8 pairs takes 5-60 s on 2 cores).
STEP_TIMEOUT = 1800.0


def log(msg: str) -> None:
    print(msg, flush=True)


def derive_seed(*parts: Any) -> int:
    """A 62-bit seed from the run's seed and a purpose (SHA-256 of their text: stable across
    processes and Python versions, unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iteration_steps(args) -> int:
    """Optimizer steps per SELM iteration: the reference refresh period of the paper loop."""
    return max(1, args.iteration_steps) if args.loop == "paper" else 1


def server_command(args, alpha: float, data_dir: pathlib.Path, port: int) -> List[str]:
    cmd = [args.selm, "serve", "--model", args.model, "--address", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
           "--alpha", str(alpha), "--beta", str(args.beta), "--lr", str(args.lr), "--batch-size", str(args.batch),
           "--warmup-steps", "0"]
    if args.loop == "paper":
        cmd += ["--ref-refresh-steps", str(iteration_steps(args))]
    if args.steps is not None:
        # The experiment mode: batches close by count only; one version per iteration (the rows of an
        # iteration all come from it); no checkpoints (the run's data directory is thrown away).
        cmd += ["--max-wait-seconds", "0", "--publish-every", str(iteration_steps(args)), "--checkpoint-every", "0"]
    else:
        cmd += ["--publish-every", "1"]
    if args.precision:
        cmd += ["--precision", args.precision]
    if args.engine_precision:
        cmd += ["--engine-precision", args.engine_precision]
    return cmd


def start_server(args, alpha: float, data_dir: pathlib.Path, log_path: pathlib.Path):
    port = free_port()
    cmd = server_command(args, alpha, data_dir, port)
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


def stop_server(proc, discard: bool = False) -> None:
    """SIGTERM (the server saves its learner's checkpoint), or SIGKILL for a run whose data directory
    is thrown away (nothing to save)."""
    if discard:
        proc.kill()
        proc.wait()
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def messages(prompt: str):
    return [{"role": "user", "content": prompt}]


# ─── Exploration metrics ──────────────────────────────────────────────────────────────────────────

def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of lower-cased words in ``texts`` (Li et al. 2016)."""
    grams: List[Tuple[str, ...]] = []
    for t in texts:
        w = re.findall(r"\w+", t.lower())
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def explore_metrics(judge: Judge, prompts: Sequence[str], greedy, samples, cur, ref) -> Dict[str, float]:
    """The exploration metrics of one version from its held-out greedy answers and samples.

    ``cur`` and ``ref`` are the Score results of ``samples + greedy`` (in that order) under the
    version (with entropies) and under its reference version (``None``: no reference served).
    """
    S = len(samples)
    by_prompt = {g.prompt_index: g.token_ids for g in greedy}
    rewards = score_all(judge, [prompts[s.prompt_index] for s in samples], samples)
    best: Dict[int, float] = {}
    for s, r in zip(samples, rewards):
        best[s.prompt_index] = max(r, best.get(s.prompt_index, -math.inf))
    ent = [h for it in cur.items[:S] for h in it.entropies]
    m = {
        "explore/entropy": sum(ent) / len(ent) if ent else 0.0,
        "explore/distinct1": distinct_n([s.text for s in samples], 1),
        "explore/distinct2": distinct_n([s.text for s in samples], 2),
        "explore/differs_from_greedy": sum(s.token_ids != by_prompt[s.prompt_index] for s in samples) / S,
        "explore/sample_reward": sum(rewards) / S,
        "explore/best_of_n_reward": sum(best.values()) / len(best),
        "explore/sample_tokens": sum(len(s.token_ids) for s in samples) / S,
        "explore/logps_samples": sum(it.total_logprob for it in cur.items[:S]) / S,
    }
    if ref is not None:
        d = [a.total_logprob - b.total_logprob for a, b in zip(cur.items, ref.items)]
        m["explore/kl"] = sum(d[:S]) / S                              # E_{y~π}[log π(y) − log π_ref(y)]
        m["explore/logratio_greedy"] = sum(d[S:]) / len(d[S:])        # log π(y_greedy) − log π_ref(y_greedy)
    return m


class Loop:
    """The client-independent part of one online run: prompt order, judging, the table and the JSONL.
    `drive` (blocking `Client`), `drive_async` (`selm_client.aio.AsyncClient`) and `drive_steps`
    (the experiment mode) do the calls."""

    def __init__(self, args, label: str, judge: Judge, out_dir: pathlib.Path) -> None:
        self.args, self.label, self.judge = args, label, judge
        self.rounds_path = out_dir / "rounds.jsonl"
        self.curve_path = out_dir / f"curve-{label}.jsonl"
        self.curve_path.unlink(missing_ok=True)
        self.table: List[Dict] = []
        self.rng = random.Random(derive_seed(args.seed, "order"))
        self.t_start = time.time()
        self.order: List[str] = []
        self.round_no = 0
        self.heldout = HELDOUT_PROMPTS[:args.heldout]
        self.prompt_ids: Dict[str, List[int]] = {}

    def more(self) -> bool:
        """Whether to run another round: --rounds if given, else the --minutes budget."""
        if self.args.rounds is not None:
            return self.round_no < self.args.rounds
        return time.time() - self.t_start < self.args.minutes * 60

    def take(self, k: int) -> List[str]:
        """The next ``k`` training prompts of the run's order (shuffled passes over the list)."""
        while len(self.order) < k:
            self.order += self.rng.sample(TRAIN_PROMPTS, len(TRAIN_PROMPTS))
        batch, self.order = self.order[:k], self.order[k:]
        return batch

    def next_batch(self) -> List[str]:
        self.round_no += 1
        return self.take(self.args.batch)

    def ids(self, client: Client, prompts: Sequence[str]) -> List[List[int]]:
        """The templated prompts' token ids (tokenized once per prompt)."""
        for p in prompts:
            if p not in self.prompt_ids:
                self.prompt_ids[p] = client.tokenize(messages(p), chat=True)
        return [self.prompt_ids[p] for p in prompts]

    def rows(self, batch: List[str], sampled, greedy, prompt_ids: List[List[int]]):
        """best → chosen, worst → rejected, greedy → reference_response; (rows, every sampled
        response's score). The candidates are the samples (``--loop default``) or the greedy answer
        and the samples (``paper``); a prompt whose candidates all score the same gives no row."""
        cands: List[List[Any]] = [[greedy[i]] if self.args.loop == "paper" else [] for i in range(len(batch))]
        for s in sampled:
            cands[s.prompt_index].append(s)
        flat = [(i, s) for i in range(len(batch)) for s in cands[i]]
        scores = score_all(self.judge, [batch[i] for i, _ in flat], [s for _, s in flat])
        rows, sample_scores, k = [], [], 0
        for i in range(len(batch)):
            scored = list(zip(scores[k:k + len(cands[i])], cands[i]))
            k += len(cands[i])
            sample_scores += [r for r, s in scored if s is not greedy[i]]
            scored.sort(key=lambda x: x[0])  # stable: ties keep candidate order
            (worst_r, worst), (best_r, best) = scored[0], scored[-1]
            if best_r <= worst_r:
                continue  # no preference to learn from
            rows.append({"prompt_ids": prompt_ids[i], "chosen_ids": best.token_ids, "rejected_ids": worst.token_ids,
                         "reference_ids": greedy[i].token_ids})
        return rows, sample_scores

    def record_round(self, sampled, rows, scores, ack, t0: float, extra: Optional[Dict] = None) -> None:
        versions = sorted({s.version for s in sampled})
        rec = {"run": self.label, "round": self.round_no, "versions": versions,
               "mean_sample_reward": sum(scores) / len(scores) if scores else None, "rows": len(rows),
               "wal_sequence": ack.last_sequence if ack else None, "generate_seconds": time.time() - t0,
               "elapsed": time.time() - self.t_start}
        rec.update(extra or {})
        with open(self.rounds_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        msr = rec["mean_sample_reward"]
        log(f"[{self.label}] round {self.round_no:3d}: rollouts from version {rec['versions']}, mean sampled reward "
            f"{'-' if msr is None else format(msr, '+.3f')}, {len(rows)} preference rows sent ({rec['generate_seconds']:.1f}s)")

    def is_new(self, event) -> bool:
        return event is not None and event.version != self.table[-1]["version"]

    def record_version(self, event, reward: float, explore: Optional[Dict[str, float]] = None,
                       eval_seconds: Optional[float] = None) -> None:
        m = dict(event.metrics)
        row = {"run": self.label, "version": event.version, "learner_step": event.learner_step,
               "reference_version": event.reference_version, "heldout_reward": reward,
               "rewards/margins": m.get("rewards/margins"), "rewards/accuracies": m.get("rewards/accuracies"),
               "loss": m.get("loss"), "metrics": m, "explore": explore or {}, "eval_seconds": eval_seconds,
               "elapsed": time.time() - self.t_start}
        if not self.table:
            log(f"\n[{self.label}] {'version':>7} {'step':>5} {'held-out reward':>16} {'margin':>9} {'accuracy':>9} "
                f"{'loss':>8} {'KL':>8} {'entropy':>8} {'differs':>8} {'time':>7}")
        self.table.append(row)
        with open(self.rounds_path, "a") as f:
            f.write(json.dumps({"eval": row}) + "\n")
        with open(self.curve_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print_row(self.label, row)


def evaluate(client: Client, loop: Loop, event) -> Tuple[float, Dict[str, float], float]:
    """The held-out reward of ``event.version`` (mean judge reward of its greedy answers, generated by
    that version itself), with ``--eval-samples`` its exploration metrics, and the seconds it took."""
    t0 = time.time()
    args, version = loop.args, event.version
    prompts = loop.heldout
    greedy = client.generate([messages(p) for p in prompts], chat=True, temperature=0.0,
                             max_tokens=args.max_tokens, require_version=version)
    assert all(s.version == version for s in greedy)
    reward = sum(score_all(loop.judge, [prompts[s.prompt_index] for s in greedy], greedy)) / len(greedy)
    if not args.eval_samples:
        return reward, {}, time.time() - t0
    samples = client.generate([messages(p) for p in prompts], chat=True, n=args.eval_samples,
                              temperature=args.temperature, max_tokens=args.max_tokens, require_version=version,
                              seed=derive_seed(args.seed, "eval", event.learner_step))
    ids = loop.ids(client, prompts)
    items = [(ids[s.prompt_index], s.token_ids) for s in samples] + [(ids[g.prompt_index], g.token_ids) for g in greedy]
    cur = client.score(items, version=version, entropy=True)
    ref = None
    if event.reference_version == version:
        ref = cur  # π is its own reference (an untrained start): every ratio is 0
    elif event.reference_version:
        try:
            ref = client.score(items, version=event.reference_version)
        except NotFound:
            pass  # let go meanwhile: a later version (time-budget loop) named another reference
    return reward, explore_metrics(loop.judge, prompts, greedy, samples, cur, ref), time.time() - t0


async def evaluate_async(client: AsyncClient, loop: Loop, event) -> Tuple[float, Dict[str, float], float]:
    """`evaluate` on the asyncio client (the held-out reward; exploration metrics with --eval-samples)."""
    t0 = time.time()
    args, version = loop.args, event.version
    prompts = loop.heldout
    greedy = await client.generate([messages(p) for p in prompts], chat=True, temperature=0.0,
                                   max_tokens=args.max_tokens, require_version=version)
    assert all(s.version == version for s in greedy)
    reward = sum(score_all(loop.judge, [prompts[s.prompt_index] for s in greedy], greedy)) / len(greedy)
    if not args.eval_samples:
        return reward, {}, time.time() - t0
    samples = await client.generate([messages(p) for p in prompts], chat=True, n=args.eval_samples,
                                    temperature=args.temperature, max_tokens=args.max_tokens, require_version=version,
                                    seed=derive_seed(args.seed, "eval", event.learner_step))
    ids = [await client.tokenize(messages(p), chat=True) for p in prompts]
    items = [(ids[s.prompt_index], s.token_ids) for s in samples] + [(ids[g.prompt_index], g.token_ids) for g in greedy]
    cur = await client.score(items, version=version, entropy=True)
    ref = None
    if event.reference_version == version:
        ref = cur
    elif event.reference_version:
        try:
            ref = await client.score(items, version=event.reference_version)
        except NotFound:
            pass  # let go meanwhile: a later version named another reference
    return reward, explore_metrics(loop.judge, prompts, greedy, samples, cur, ref), time.time() - t0


def drive(address: str, loop: Loop) -> None:
    """The online loop on the blocking client under a time (or round) budget: one call after another;
    the learner trains while the next rollouts are generated."""
    args = loop.args
    with Client(address) as client:
        subscription = client.subscribe_versions()
        first = subscription.get(timeout=30)
        if first is None:
            raise SystemExit("no version event from the server within 30 s")
        loop.record_version(first, *evaluate(client, loop, first))
        while loop.more():
            batch = loop.next_batch()
            msgs = [messages(p) for p in batch]
            t0 = time.time()
            sampled = client.generate(msgs, chat=True, n=args.n, temperature=args.temperature,
                                      max_tokens=args.max_tokens, seed=derive_seed(args.seed, "round", loop.round_no))
            greedy = client.generate(msgs, chat=True, temperature=0.0, max_tokens=args.max_tokens)
            rows, scores = loop.rows(batch, sampled, greedy, loop.ids(client, batch))
            ack = client.submit_preferences(rows) if rows else None
            loop.record_round(sampled, rows, scores, ack, t0)
            # Evaluate the newest version published since the last look.
            newest, ev = None, subscription.get(timeout=0)
            while ev is not None:
                newest, ev = ev, subscription.get(timeout=0)
            if loop.is_new(newest):
                loop.record_version(newest, *evaluate(client, loop, newest))
        subscription.close()


async def drive_async(address: str, loop: Loop) -> None:
    """The online loop on `selm_client.aio`: a round's sampled and greedy rollouts and its prompt
    tokenizations are in flight together on one connection, and the subscription is read alongside."""
    args = loop.args
    async with AsyncClient(address) as client:
        async with await client.subscribe_versions() as subscription:
            first = await subscription.get(timeout=30)
            if first is None:
                raise SystemExit("no version event from the server within 30 s")
            loop.record_version(first, *await evaluate_async(client, loop, first))
            while loop.more():
                batch = loop.next_batch()
                msgs = [messages(p) for p in batch]
                t0 = time.time()
                sampled, greedy, *prompt_ids = await asyncio.gather(
                    client.generate(msgs, chat=True, n=args.n, temperature=args.temperature,
                                    max_tokens=args.max_tokens, seed=derive_seed(args.seed, "round", loop.round_no)),
                    client.generate(msgs, chat=True, temperature=0.0, max_tokens=args.max_tokens),
                    *(client.tokenize(m, chat=True) for m in msgs))
                rows, scores = loop.rows(batch, sampled, greedy, prompt_ids)
                ack = await client.submit_preferences(rows) if rows else None
                loop.record_round(sampled, rows, scores, ack, t0)
                newest, ev = None, await subscription.poll()
                while ev is not None:
                    newest, ev = ev, await subscription.poll()
                if loop.is_new(newest):
                    loop.record_version(newest, *await evaluate_async(client, loop, newest))


#: Draws of extra prompts for one step before giving up (a judge that never prefers anything).
MAX_DRAWS = 64


def step_rows(client: Client, loop: Loop, version: int, step: int) -> Tuple[List[Dict], List[float], List[str]]:
    """Exactly ``--batch`` preference rows for optimizer step ``step``, all from ``version``: prompts
    are taken from the run's order; a prompt whose candidates tie gives no row, and the shortfall is
    drawn as more prompts (each draw's sampling seed derives from the run's seed, the step and the
    draw). Returns (rows, the sampled responses' scores, the prompts used)."""
    args = loop.args
    rows: List[Dict] = []
    scores: List[float] = []
    used: List[str] = []
    for draw in range(MAX_DRAWS):
        if len(rows) == args.batch:
            return rows, scores, used
        batch = loop.take(args.batch - len(rows))
        used += batch
        msgs = [messages(p) for p in batch]
        sampled = client.generate(msgs, chat=True, n=args.n, temperature=args.temperature, max_tokens=args.max_tokens,
                                  seed=derive_seed(args.seed, "step", step, draw), require_version=version)
        greedy = client.generate(msgs, chat=True, temperature=0.0, max_tokens=args.max_tokens, require_version=version)
        r, s = loop.rows(batch, sampled, greedy, loop.ids(client, batch))
        rows += r
        scores += s
    if len(rows) < args.batch:
        raise SystemExit(f"step {step}: the judge preferred no candidate over another in {len(used)} prompts "
                         f"({len(rows)} of {args.batch} rows); a judge must tell samples apart")
    return rows, scores, used


def wait_for_step(client: Client, step: int) -> None:
    """Returns once the learner has taken optimizer step ``step`` (a step that publishes nothing)."""
    deadline = time.time() + STEP_TIMEOUT
    while client.status().learner_step < step:
        if time.time() > deadline:
            raise SystemExit(f"the learner did not take step {step} within {STEP_TIMEOUT:.0f} s")
        time.sleep(0.05)


def wait_for_version(subscription, step: int):
    """The version event of learner step ``step`` (earlier events are skipped)."""
    deadline = time.time() + STEP_TIMEOUT
    while True:
        ev = subscription.get(timeout=max(0.1, deadline - time.time()))
        if ev is None:
            raise SystemExit(f"no version for learner step {step} within {STEP_TIMEOUT:.0f} s")
        if ev.learner_step >= step:
            return ev


def start_key(args) -> str:
    """What a run's start (its first evaluation and its step-1 rows) depends on: everything but the
    learner's settings (α, β, lr, --iteration-steps), which act only from step 1 on."""
    selm = pathlib.Path(args.selm)
    binary = [selm.stat().st_size, selm.stat().st_mtime_ns] if selm.exists() else None
    parts = {"model": str(pathlib.Path(args.model).resolve()), "selm": str(selm.resolve()), "binary": binary,
             "judge": args.judge, "seed": args.seed, "loop": args.loop, "batch": args.batch, "n": args.n,
             "temperature": args.temperature, "max_tokens": args.max_tokens, "heldout": args.heldout,
             "eval_samples": args.eval_samples, "engine_precision": args.engine_precision}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def drive_steps(address: str, loop: Loop) -> None:
    """The experiment mode: ``--steps`` optimizer steps, step-synchronous and reproducible.

    Step s generates from the version the learner published last (``require_version``), submits
    exactly one batch of rows and waits for the learner to take the step; after every
    ``--iteration-steps`` steps the learner publishes a version, which is evaluated. Nothing else
    runs on the server meanwhile, so the engine sees the same requests in the same order in every
    run with the same settings (its results depend on what shares a batch and on its prefix cache,
    both then the same), and the learner the same batches.

    With ``--share-start DIR``, runs that differ only in the learner's settings (α, β, lr) share their
    start: the first evaluation and step 1's rows, identical in all of them, are computed by the
    first run and read from ``DIR/start-KEY.json`` by the others (``start_key``)."""
    args = loop.args
    per_version = iteration_steps(args)
    shared = pathlib.Path(args.share_start) / f"start-{start_key(args)}.json" if args.share_start else None
    start = json.loads(shared.read_text()) if shared is not None and shared.exists() else None
    with Client(address) as client:
        subscription = client.subscribe_versions()
        event = subscription.get(timeout=30)
        if event is None:
            raise SystemExit("no version event from the server")
        if event.learner_step != 0:
            raise SystemExit(f"the server's learner is at step {event.learner_step}: the experiment mode needs a fresh one")
        if start is not None:
            first = (start["heldout_reward"], start["explore"], 0.0)
            log(f"[{loop.label}] start shared with an earlier run: {shared}")
        else:
            first = evaluate(client, loop, event)
        loop.record_version(event, *first)
        for step in range(1, args.steps + 1):
            loop.round_no = step
            t0 = time.time()
            if step == 1 and start is not None:
                rows, scores, used = start["rows"], start["scores"], start["prompts"]
                loop.take(len(used))
            else:
                rows, scores, used = step_rows(client, loop, event.version, step)
            if step == 1 and shared is not None and start is None:
                shared.parent.mkdir(parents=True, exist_ok=True)
                tmp = shared.with_suffix(".tmp")
                tmp.write_text(json.dumps({"heldout_reward": first[0], "explore": first[1], "rows": rows,
                                           "scores": scores, "prompts": used}))
                tmp.replace(shared)
            ack = client.submit_preferences(rows)
            t1 = time.time()
            if step % per_version == 0:
                next_event = wait_for_version(subscription, step)
            else:
                wait_for_step(client, step)
            loop.record_round([], rows, scores, ack, t0, {"step": step, "prompts": used, "versions": [event.version],
                                                          "generate_seconds": t1 - t0, "learner_seconds": time.time() - t1})
            if step % per_version == 0:
                event = next_event
                loop.record_version(event, *evaluate(client, loop, event))
        subscription.close()


def run(args, label: str, alpha: float, out_dir: pathlib.Path, judge: Judge) -> List[Dict]:
    """One online run; returns the per-version table rows. Writes every round to the JSONL."""
    data_dir = out_dir / f"data-{label}"
    shutil.rmtree(data_dir, ignore_errors=True)
    proc = None
    address = args.address
    if not address:
        proc, address = start_server(args, alpha, data_dir, out_dir / f"server-{label}.log")
    loop = Loop(args, label, judge, out_dir)
    discard = args.steps is not None and not args.keep_data
    try:
        if args.steps is not None:
            drive_steps(address, loop)
        elif args.use_async:
            asyncio.run(drive_async(address, loop))
        else:
            drive(address, loop)
    finally:
        if proc is not None:
            stop_server(proc, discard=discard)
            if discard:
                shutil.rmtree(data_dir, ignore_errors=True)
    return loop.table


def fmt(x: Optional[float], spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def print_row(label: str, r: Dict) -> None:
    e = r.get("explore") or {}
    log(f"[{label}] {r['version']:>7} {r['learner_step']:>5} {r['heldout_reward']:>+16.3f} "
        f"{fmt(r['rewards/margins'], '>+9.4f'):>9} {fmt(r['rewards/accuracies'], '>9.2f'):>9} "
        f"{fmt(r['loss'], '>8.4f'):>8} {fmt(e.get('explore/kl'), '>+8.3f'):>8} {fmt(e.get('explore/entropy'), '>8.3f'):>8} "
        f"{fmt(e.get('explore/differs_from_greedy'), '>8.2f'):>8} {r['elapsed']:>6.0f}s")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selm", default=str(REPO / ".build" / "release" / "selm"), help="the selm binary")
    p.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--address", help="use a running server at HOST:PORT instead of starting one")
    p.add_argument("--connect", dest="address", action=DeprecatedSpelling, new="--address")
    p.add_argument("--out", default=str(REPO / "demo-out"), help="output directory (plot, JSONL, logs)")
    p.add_argument("--minutes", type=float, default=6.0, help="time budget per run")
    p.add_argument("--steps", type=int,
                   help="the experiment mode: this many optimizer steps, step-synchronous and reproducible (see above)")
    p.add_argument("--loop", choices=["default", "paper"], default="default",
                   help="default: judge the samples, frozen reference; paper: greedy answer among the judged "
                        "candidates, reference refreshed every --iteration-steps (SELM's recipe)")
    p.add_argument("--iteration-steps", type=int, default=1,
                   help="--loop paper: optimizer steps per iteration (selm serve --ref-refresh-steps; with --steps "
                        "also --publish-every: an iteration's rows all come from its starting version)")
    p.add_argument("--judge", default="concise", help="concise, overlap, or module:factory (see judges.py)")
    p.add_argument("--alpha", type=float, default=0.001, help="SELM optimism weight (0 = online DPO)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch", type=int, default=8, help="prompts per round (= pairs per optimizer step)")
    p.add_argument("-n", type=int, default=4, help="samples per prompt (as selm client generate -n and the API's n)")
    p.add_argument("-k", dest="n", type=int, action=DeprecatedSpelling, new="-n")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--precision", choices=["f32", "bf16"], help="the learner's products (selm serve --precision; default: the server's)")
    p.add_argument("--engine-precision", choices=["f32", "bf16", "q8", "q4"],
                   help="selm serve --engine-precision (default: the server's)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--heldout", type=int, default=len(HELDOUT_PROMPTS), help="held-out prompts evaluated per version")
    p.add_argument("--eval-samples", type=int,
                   help="samples per held-out prompt for the exploration metrics (default: 4 with --steps, else 0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="run SELM and DPO from the same start and plot both")
    p.add_argument("--rounds", type=int, help="run this many rounds (instead of the --minutes budget)")
    p.add_argument("--share-start", metavar="DIR",
                   help="--steps: share the start (first evaluation, step-1 rows) with runs that differ only in "
                        "--alpha/--beta/--lr/--iteration-steps, through files in DIR (used by compare.py)")
    p.add_argument("--keep-data", action="store_true",
                   help="--steps: keep the server's data directory (default: the run's server is killed and its data removed)")
    p.add_argument("--async", dest="use_async", action="store_true",
                   help="drive the loop with the asyncio client (selm_client.aio): each round's rollouts concurrently")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be ≥ 1")
    if args.steps is not None and args.use_async:
        p.error("--steps runs on the blocking client; drop --async")
    if args.share_start and args.steps is None:
        p.error("--share-start needs --steps")
    if args.steps is not None and args.rounds is not None:
        p.error("--steps and --rounds are two budgets; give one")
    if args.iteration_steps < 1:
        p.error("--iteration-steps must be ≥ 1")
    if args.steps is not None and args.steps % iteration_steps(args):
        p.error("--steps must be a multiple of --iteration-steps")
    if not 1 <= args.heldout <= len(HELDOUT_PROMPTS):
        p.error(f"--heldout must be in 1…{len(HELDOUT_PROMPTS)}")
    if args.eval_samples is None:
        args.eval_samples = 4 if args.steps is not None else 0
    if args.eval_samples < 0:
        p.error("--eval-samples must be ≥ 0")


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    check_args(p, args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounds.jsonl").unlink(missing_ok=True)
    judge = load_judge(args.judge)
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
