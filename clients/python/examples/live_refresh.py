#!/usr/bin/env python3
"""Live weight refresh: save a checkpoint, keep training, then refresh the server back to the saved
checkpoint. New samples carry the new version and equal the saved policy's greedy outputs.

    python examples/live_refresh.py               # starts `selm serve` itself
    python examples/live_refresh.py --address 127.0.0.1:7070
"""
from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from selm_client import Client  # noqa: E402
from judges import concise_judge  # noqa: E402
from online_selm import HELDOUT_PROMPTS, REPO, TRAIN_PROMPTS, DeprecatedSpelling, log, messages, start_server, stop_server  # noqa: E402


def train_rounds(client: Client, judge, rounds: int, rng: random.Random, max_tokens: int) -> None:
    """Sends `rounds` batches of preference rows (k=4 samples per prompt, best vs worst)."""
    for _ in range(rounds):
        batch = rng.sample(TRAIN_PROMPTS, 8)
        msgs = [messages(p) for p in batch]
        sampled = client.generate(msgs, chat=True, n=4, temperature=1.0, max_tokens=max_tokens, seed=rng.randrange(1 << 30))
        greedy = client.generate(msgs, chat=True, temperature=0.0, max_tokens=max_tokens)
        rows = []
        for i, prompt in enumerate(batch):
            scored = sorted(((judge(prompt, s), s) for s in sampled if s.prompt_index == i), key=lambda x: x[0])
            if scored[-1][0] > scored[0][0]:
                rows.append({"prompt_ids": client.tokenize(msgs[i], chat=True), "chosen_ids": scored[-1][1].token_ids,
                             "rejected_ids": scored[0][1].token_ids, "reference_ids": greedy[i].token_ids})
        if rows:
            client.submit_preferences(rows)


def wait_idle(client: Client, timeout: float = 600) -> int:
    """Waits until the learner has consumed every row and published; returns the policy version."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = client.status()
        if s.wal_consumed_sequence == s.wal_last_sequence and s.learner_metrics.get("pending_rows", 0) == 0:
            time.sleep(1.0)
            s2 = client.status()
            if s2.policy_version == s.policy_version:
                return s.policy_version
        time.sleep(0.5)
    raise SystemExit("the learner did not go idle")


def greedy(client: Client, version: int, max_tokens: int):
    out = client.generate([messages(p) for p in HELDOUT_PROMPTS[:6]], chat=True, temperature=0.0,
                          max_tokens=max_tokens, require_version=version)
    return [s.token_ids for s in out], out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selm", default=str(REPO / ".build" / "release" / "selm"))
    p.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--address", help="use a running server at HOST:PORT instead of starting one")
    p.add_argument("--connect", dest="address", action=DeprecatedSpelling, new="--address")
    p.add_argument("--out", default=str(REPO / "demo-out"))
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    args = p.parse_args()
    args.alpha = 0.001
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proc, address = None, args.address
    if not address:
        proc, address = start_server(args, args.alpha, out / "data-refresh", out / "server-refresh.log")
    rng, judge = random.Random(1), concise_judge()
    try:
        with Client(address) as c:
            log("training a little before saving ...")
            train_rounds(c, judge, 2, rng, args.max_tokens)
            v_saved = wait_idle(c)
            ck = c.save_checkpoint("saved")
            log(f"saved checkpoint '{ck.path}': version {ck.version}, learner step {ck.learner_step}, log sequence {ck.wal_sequence}")
            saved_ids, saved = greedy(c, ck.version, args.max_tokens)
            log("training on ...")
            train_rounds(c, judge, 2, rng, args.max_tokens)
            v_later = wait_idle(c)
            later_ids, _ = greedy(c, v_later, args.max_tokens)
            changed = sum(a != b for a, b in zip(saved_ids, later_ids))
            log(f"version {v_later}: {changed} of {len(saved_ids)} greedy answers differ from the saved policy's")
            v_new = c.refresh_weights("saved")
            refreshed_ids, refreshed = greedy(c, v_new, args.max_tokens)
            same = sum(a == b for a, b in zip(saved_ids, refreshed_ids))
            log(f"refreshed to 'saved' as version {v_new}: samples report version {sorted({s.version for s in refreshed})}; "
                f"{same} of {len(saved_ids)} greedy answers equal the saved policy's (version {ck.version})")
            for s, r in zip(saved[:2], refreshed[:2]):
                log(f"  saved:     {s.text!r}\n  refreshed: {r.text!r}")
            if same != len(saved_ids) or any(s.version != v_new for s in refreshed):
                raise SystemExit("refresh did not restore the saved policy")
            del v_saved
    finally:
        if proc is not None:
            stop_server(proc)


if __name__ == "__main__":
    main()
