#!/usr/bin/env python3
"""bench-vs-llamacpp: selm's engine and llama.cpp on the same jobs, run alternately, with ratios.

Jobs (both sides): batch-1 decode (64-token prompt, 128 new tokens) and B x (64-token prompt + 128
new tokens) at once. llama.cpp side: `llama-batched-bench -npp 64 -ntg 128 -npl 1,B -t THREADS`
(built once by scripts/build_llamacpp.sh into ~/.cache/selm-server); selm side: `selm-bench job`
(the engine in-process, sampling at temperature 1 / top-p 0.95, text detokenised, events drained).
Rounds alternate the order (A B, B A, ...) so drift on a shared machine hits both; the medians
and the per-round ratios are printed. Not part of `make test`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run_llama(bin_dir, model, batch, threads):
    cmd = [os.path.join(bin_dir, "llama-batched-bench"), "-m", model, "-c", str(batch * 192 + 256),
           "-b", "2048", "-ub", "512", "-npp", "64", "-ntg", "128", "-npl", f"1,{batch}",
           "-t", str(threads), "-tb", str(threads), "--output-format", "jsonl"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = {}
    for line in (out.stdout + "\n" + out.stderr).splitlines():
        line = line.strip()
        if line.startswith("{") and '"pl"' in line:
            r = json.loads(line)
            rows[r["pl"]] = r
    if 1 not in rows or batch not in rows:
        sys.exit("llama-batched-bench printed no result rows:\n" + out.stderr[-2000:])
    return {"b1_decode_tps": rows[1]["speed_tg"], "job_seconds": rows[batch]["t"],
            "job_tps": batch * 128 / rows[batch]["t"], "b32_decode_tps": rows[batch]["speed_tg"]}


def run_selm(selm_bench, model, batch, extra):
    cmd = [selm_bench, "job", "--model", model, "--batch", str(batch)] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--selm-bench", default=".build/release/selm-bench")
    ap.add_argument("--llamacpp-bin", default=None, help="folder with llama-batched-bench (default: build/cached)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--selm-args", default="", help="extra arguments for `selm-bench job`, e.g. '--engine-precision q8'")
    ap.add_argument("--b1-precisions", default="", help="also run selm's batch-1 decode in these engine precisions "
                    "(comma-separated, e.g. 'q8,q4'), in the same rounds")
    a = ap.parse_args()
    bin_dir = a.llamacpp_bin or subprocess.run([os.path.join(os.path.dirname(__file__), "build_llamacpp.sh")],
                                               check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    extra = a.selm_args.split()
    print(f"== bench-vs-llamacpp: {os.path.basename(a.model)}, {a.rounds} rounds, alternating; llama.cpp {bin_dir}")
    print(f"   selm: {a.selm_bench} job {' '.join(extra)}; threads {a.threads}")
    extras = [p for p in a.b1_precisions.split(",") if p]
    L, S, X = [], [], {p: [] for p in extras}
    for r in range(a.rounds):
        order = ["llama", "selm"] + extras if r % 2 == 0 else extras[::-1] + ["selm", "llama"]
        for who in order:
            if who == "llama":
                L.append(run_llama(bin_dir, a.model, a.batch, a.threads))
            elif who == "selm":
                S.append(run_selm(a.selm_bench, a.model, a.batch, extra))
            else:
                X[who].append(run_selm(a.selm_bench, a.model, a.batch, extra + ["--engine-precision", who, "--only-batch-1"]))
        l, s = L[-1], S[-1]
        for p in extras:
            x = X[p][-1]
            print(f"round {r + 1}: batch-1 decode selm --engine-precision {p}: {x['b1_decode_tps']:.1f} tok/s "
                  f"({x['b1_decode_tps'] / l['b1_decode_tps']:.2f}x llama.cpp)", flush=True)
        print(f"round {r + 1}: batch-1 decode llama.cpp {l['b1_decode_tps']:.1f} tok/s, selm {s['b1_decode_tps']:.1f} "
              f"({s['b1_decode_tps'] / l['b1_decode_tps']:.2f}x); {a.batch} x (64 + 128): llama.cpp {l['job_seconds']:.2f} s, "
              f"selm {s['job_seconds']:.2f} s (time ratio selm/llama.cpp {s['job_seconds'] / l['job_seconds']:.2f}); "
              f"selm inter-token p50 {s['itl_p50_ms']:.0f} ms p99 {s['itl_p99_ms']:.0f} ms", flush=True)
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    b1 = [s["b1_decode_tps"] / l["b1_decode_tps"] for l, s in zip(L, S)]
    job = [s["job_seconds"] / l["job_seconds"] for l, s in zip(L, S)]
    print("medians:")
    print(f"  batch-1 decode: llama.cpp {med(L, 'b1_decode_tps'):.1f} tok/s, selm {med(S, 'b1_decode_tps'):.1f} tok/s; "
          f"ratio {statistics.median(b1):.2f}x (per round {', '.join(f'{x:.2f}' for x in b1)}) (goal >= 1.5x)")
    for p in extras:
        rs = [x["b1_decode_tps"] / l["b1_decode_tps"] for l, x in zip(L, X[p])]
        print(f"  batch-1 decode, selm --engine-precision {p}: {med(X[p], 'b1_decode_tps'):.1f} tok/s; ratio "
              f"{statistics.median(rs):.2f}x (per round {', '.join(f'{x:.2f}' for x in rs)}) (goal >= 1.5x)")
    print(f"  {a.batch} x (64 + 128) wall time: llama.cpp {med(L, 'job_seconds'):.2f} s ({med(L, 'job_tps'):.0f} generated tok/s), "
          f"selm {med(S, 'job_seconds'):.2f} s ({med(S, 'job_tps'):.0f} tok/s); selm/llama.cpp time {statistics.median(job):.2f} "
          f"(per round {', '.join(f'{x:.2f}' for x in job)}) (goal <= 0.50)")
    print(f"  selm in that job: TTFT p50 {med(S, 'ttft_p50_ms'):.0f} ms p99 {med(S, 'ttft_p99_ms'):.0f} ms; inter-token p50 "
          f"{med(S, 'itl_p50_ms'):.0f} ms p99 {med(S, 'itl_p99_ms'):.0f} ms (goal p99 <= 3x p50); peak RSS {med(S, 'peak_rss_mb'):.0f} MB")


if __name__ == "__main__":
    main()
