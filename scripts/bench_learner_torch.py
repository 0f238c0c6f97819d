#!/usr/bin/env python3
"""PyTorch's side of `make bench-learner`: the same SELM optimizer step as `selm-bench learner`
(4 pairs x {chosen, rejected, reference response} x 128 tokens = 32 prompt + 96 response tokens each,
the same token ids), on a transformers LlamaForCausalLM loaded from the same GGUF: reference forward
(no grad) + policy forward/backward of the SELM loss (beta 0.01, alpha 0.001, as TrainingOptions'
defaults) + torch.optim.AdamW. Runs f32 and CPU autocast-bf16 steps alternately (one warm-up step
each, then --steps rounds) and prints one JSON line: {"f32": [seconds...], "bf16": [...],
"threads": n, "torch": version, "peak_rss_mb": ...}.

Run in the reference venv (scripts/check_checkpoint.sh makes it; `selm-bench learner` finds it):
    python scripts/bench_learner_torch.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import contextlib
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def ids(n, seed):
    # selm-bench's ids(): (0..<n).map { 100 + ((i + 1) * (seed * 7919 + 13)) % 40000 }
    return [100 + ((i + 1) * (seed * 7919 + 13)) % 40000 for i in range(n)]


def batch():
    prompts = [ids(32, i) for i in range(4)]
    rows = []
    for i in range(4):
        for seed in (10 + i, 20 + i, 30 + i):  # chosen, rejected, reference response
            rows.append(prompts[i] + ids(96, seed))
    return torch.tensor(rows)  # (12, 128): every sequence the same length, no padding


def seq_logps(model, x):
    """Sum of log p over the 96 response tokens of each row (positions 31..126 predict 32..127)."""
    logits = model(x[:, :-1]).logits[:, 31:].float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(2, x[:, 32:, None]).squeeze(2).sum(1)


def selm_loss(pi, ref, beta=0.01, alpha=0.001):
    pi, ref = pi.view(4, 3), ref.view(4, 3)
    z = (pi[:, 0] - pi[:, 1]) - (ref[:, 0] - ref[:, 1])
    return (-F.logsigmoid(beta * z) + alpha * beta * (pi[:, 2] - ref[:, 2])).mean()


def step(policy, reference, opt, x, bf16):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        with torch.no_grad():
            r = seq_logps(reference, x)
        loss = selm_loss(seq_logps(policy, x), r)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the GGUF selm-bench uses")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d, f = os.path.split(os.path.abspath(a.model))
    policy = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    policy.train()
    policy.config.use_cache = False
    for p in reference.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0)
    x = batch()
    times = {"f32": [], "bf16": []}
    for mode in ("f32", "bf16"):  # warm-up
        step(policy, reference, opt, x, mode == "bf16")
    for _ in range(a.steps):
        for mode in ("f32", "bf16"):
            times[mode].append(step(policy, reference, opt, x, mode == "bf16"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"f32": times["f32"], "bf16": times["bf16"], "threads": a.threads, "torch": torch.__version__,
                      "peak_rss_mb": rss}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
