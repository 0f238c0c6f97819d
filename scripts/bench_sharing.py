#!/usr/bin/env python3
"""bench-sharing: how `selm serve --compute-sharing` splits the two cores between rollouts and the
learner. For each mode a real server runs on SmolLM2 with both kept busy: one client generates
32 × (64 prompt + 64 new tokens) jobs back to back while another keeps the learner fed (8 pairs per
step). Printed per mode: generated tokens/s, time to first token and inter-token p50/p99 (streamed),
learner steps/minute and tokens/s — beside each side alone (the ceiling it is judged against).

    make bench-sharing          # or: python3 scripts/bench_sharing.py --seconds 90
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python"))
from selm_client import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(selm: str, model: str, mode: str, learner: bool):
    port = free_port()
    data = tempfile.mkdtemp(prefix="selm-sharing-")
    cmd = [selm, "serve", "--model", model, "--address", f"127.0.0.1:{port}", "--data-dir", data,
           "--compute-sharing", mode, "--batch-size", "8", "--lr", "1e-6", "--max-wait-seconds", "0",
           "--checkpoint-every", "0"] + ([] if learner else ["--no-learner"])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}", data
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def rows(client: Client, k: int):
    ids = client.tokenize([{"role": "user", "content": f"Describe item number {k} in detail."}], chat=True)
    resp = lambda s: [(s * 7919 + j * 104729) % 40000 + 100 for j in range(64)] + [2]  # noqa: E731
    return {"prompt_ids": ids, "chosen_ids": resp(k), "rejected_ids": resp(k + 1), "reference_ids": resp(k + 2)}


def run(selm: str, model: str, mode: str, seconds: float, generate: bool, learn: bool):
    proc, addr, data = start(selm, model, mode, learner=learn)
    stop = threading.Event()
    gen = {"tokens": 0, "ttft": [], "itl": [], "elapsed": 0.0}
    try:
        c = Client(addr, timeout=600)
        if learn:
            def feed():
                fc = Client(addr, timeout=600)
                k = 0
                while not stop.is_set():
                    st = fc.status()
                    if st.wal_last_sequence - st.wal_consumed_sequence < 2:
                        fc.submit_preferences([rows(fc, k + i) for i in range(8)])
                        k += 8
                    time.sleep(0.5)
                fc.close()
            threading.Thread(target=feed, daemon=True).start()
        t0 = time.time()
        step0 = c.status().learner_step
        while time.time() - t0 < seconds:
            if not generate:
                time.sleep(1)
                continue
            prompts = [[(i * 31 + j * 7 + int(t0)) % 40000 + 100 for j in range(64)] for i in range(32)]
            start_t = time.time()
            last = {}
            for ev in c.generate(prompts, max_tokens=64, temperature=1.0, ignore_eos=True, stream=True):
                now = time.time()
                key = (ev.prompt_index, ev.sample_index)
                if hasattr(ev, "text_delta"):
                    if key not in last:
                        gen["ttft"].append(now - start_t)
                    else:
                        gen["itl"].append((now - last[key]) / max(1, len(ev.token_ids)))
                    last[key] = now
                    gen["tokens"] += len(ev.token_ids)
        gen["elapsed"] = time.time() - t0
        st = c.status()
        steps = st.learner_step - step0
        c.close()
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    return gen, steps, gen["elapsed"] or seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--selm", default=str(REPO / ".build" / "release" / "selm"))
    p.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--seconds", type=float, default=90)
    a = p.parse_args()
    print("== bench-sharing: engine and learner busy at once, per --compute-sharing mode", flush=True)
    g, _, el = run(a.selm, a.model, "adaptive", a.seconds, generate=True, learn=False)
    print(f"ceiling, rollouts alone: {g['tokens'] / el:6.1f} generated tokens/s, TTFT p50 {pct(g['ttft'], .5) * 1e3:.0f} ms, "
          f"inter-token p50 {pct(g['itl'], .5) * 1e3:.0f} ms p99 {pct(g['itl'], .99) * 1e3:.0f} ms", flush=True)
    _, s, el = run(a.selm, a.model, "adaptive", a.seconds, generate=False, learn=True)
    print(f"ceiling, learner alone : {s / el * 60:6.2f} steps/min ({s / el * 60 * 8:.0f} pairs/min)", flush=True)
    for mode in ["adaptive", "split", "priority", "fifo"]:
        g, s, el = run(a.selm, a.model, mode, a.seconds, generate=True, learn=True)
        print(f"{mode:>8}: rollouts {g['tokens'] / el:6.1f} tokens/s, TTFT p50 {pct(g['ttft'], .5) * 1e3:.0f} ms, "
              f"inter-token p50 {pct(g['itl'], .5) * 1e3:.0f} ms p99 {pct(g['itl'], .99) * 1e3:.0f} ms | learner "
              f"{s / el * 60:.2f} steps/min ({s / el * 60 * 8:.0f} pairs/min)", flush=True)


if __name__ == "__main__":
    main()
