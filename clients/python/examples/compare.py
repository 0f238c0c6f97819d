#!/usr/bin/env python3
"""`make compare`: SELM against DPO at equal step budgets, over seeds, on more than one judge.

For every judge, α (``--alphas``; α = 0 is online DPO) and seed (1…S), one reproducible run of
``online_selm.py --steps`` (the experiment mode: step-synchronous, everything seeded), each from the
same start. Prints, per judge and setting, the mean and a 95 % confidence interval (Student t over
the seeds) of the final held-out reward, of its area under the curve (the trapezoid over learner
steps divided by the steps: the run's average held-out reward) and of the exploration metrics at
the last version, and the same for the difference to DPO at the same seed (paired: the runs of one
seed share their start and their first step's data); writes ``summary.md``, every run's curve in
``results.jsonl`` and one plot with bands (``compare.png``, with matplotlib).

Runs that differ only in α share their start (the first evaluation and step 1's rows are identical;
``online_selm.py --share-start``), so only the first run of a seed and judge computes them.
``--resume`` keeps the runs already in ``results.jsonl`` and does the rest; the run order (seeds
outermost) makes every prefix of it a balanced design.

    python examples/compare.py                               # the defaults (about an hour on 2 cores)
    python examples/compare.py --seeds 2 --steps 4 --alphas 0,0.1 --judges overlap
    python examples/compare.py --summary-only                # tables and plot from results.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import online_selm  # noqa: E402
from judges import load_judge  # noqa: E402

#: Two-sided 95 % quantiles of Student's t, t_{0.975}(df), df = 1…30 (then the normal's 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

EXPLORE = [("explore/kl", "KL(π‖π_ref)"), ("explore/logratio_greedy", "logπ/π_ref greedy"),
           ("explore/entropy", "entropy"), ("explore/distinct1", "distinct-1"), ("explore/distinct2", "distinct-2"),
           ("explore/differs_from_greedy", "≠ greedy"), ("explore/sample_reward", "sample reward"),
           ("explore/best_of_n_reward", "best-of-n")]


def mean_ci(xs: Sequence[float]) -> Tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (t over len(xs) − 1 degrees of freedom;
    nan for a single value)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    return m, t * sd / math.sqrt(n)


def fmt_ci(xs: Sequence[float], digits: int = 3) -> str:
    if not xs:
        return "-"
    m, h = mean_ci(xs)
    return f"{m:+.{digits}f}" + ("" if math.isnan(h) else f" ± {h:.{digits}f}")


def auc(curve: List[Dict]) -> float:
    """Area under held-out reward over learner steps, divided by the steps (trapezoid)."""
    xs = [r["learner_step"] for r in curve]
    ys = [r["heldout_reward"] for r in curve]
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0]) if xs[-1] > xs[0] else ys[0]


def label(alpha: float) -> str:
    return "DPO (α=0)" if alpha == 0 else f"SELM α={alpha:g}"


def run_key(judge: str, alpha: float, seed: int) -> str:
    return f"{judge}|{alpha!r}|{seed}"


def load_results(path: pathlib.Path) -> List[Dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(results: List[Dict], judges: Sequence[str], alphas: Sequence[float], steps: int,
              eval_samples: int = 2) -> str:
    """The tables, as Markdown (best-of-n only with more than one sample per prompt)."""
    explore = [(k, n) for k, n in EXPLORE if eval_samples > 1 or k != "explore/best_of_n_reward"]
    out = []
    for judge in judges:
        runs = {(r["alpha"], r["seed"]): r for r in results if r["judge"] == judge and r["steps"] == steps}
        if not runs:
            continue
        seeds = sorted({s for _, s in runs})
        out.append(f"\n### Judge `{judge}`: {steps} steps, seeds {', '.join(map(str, seeds))}\n")
        out.append("| setting | runs | held-out reward at start | final held-out reward | AUC (mean reward over the run) "
                   "| Δ final vs DPO (paired) | Δ AUC vs DPO (paired) |")
        out.append("|---|---|---|---|---|---|---|")
        for a in alphas:
            mine = [runs[(a, s)] for s in seeds if (a, s) in runs]
            if not mine:
                continue
            final = [r["curve"][-1]["heldout_reward"] for r in mine]
            areas = [auc(r["curve"]) for r in mine]
            first = [r["curve"][0]["heldout_reward"] for r in mine]
            paired = [(runs[(a, r["seed"])], runs[(0.0, r["seed"])]) for r in mine if (0.0, r["seed"]) in runs]
            dfinal = [x["curve"][-1]["heldout_reward"] - y["curve"][-1]["heldout_reward"] for x, y in paired]
            dauc = [auc(x["curve"]) - auc(y["curve"]) for x, y in paired]
            same = a == 0.0
            out.append(f"| {label(a)} | {len(mine)} | {fmt_ci(first)} | {fmt_ci(final)} | {fmt_ci(areas)} | "
                       f"{'—' if same else fmt_ci(dfinal)} | {'—' if same else fmt_ci(dauc)} |")
        out.append("")
        out.append("Exploration metrics at the last version (held-out prompts; π_ref = the version it was trained against):")
        out.append("")
        out.append("| setting | " + " | ".join(name for _, name in explore) + " |")
        out.append("|---|" + "---|" * len(explore))
        for a in alphas:
            mine = [runs[(a, s)] for s in seeds if (a, s) in runs]
            if not mine:
                continue
            cells = []
            for key, _ in explore:
                xs = [r["curve"][-1]["explore"][key] for r in mine if key in r["curve"][-1]["explore"]]
                cells.append(fmt_ci(xs))
            out.append(f"| {label(a)} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("Exploration metrics averaged over all versions after the start:")
        out.append("")
        out.append("| setting | " + " | ".join(name for _, name in explore) + " |")
        out.append("|---|" + "---|" * len(explore))
        for a in alphas:
            mine = [runs[(a, s)] for s in seeds if (a, s) in runs]
            if not mine:
                continue
            cells = []
            for key, _ in explore:
                xs = []
                for r in mine:
                    vals = [v["explore"][key] for v in r["curve"][1:] if key in v["explore"]]
                    if vals:
                        xs.append(sum(vals) / len(vals))
                cells.append(fmt_ci(xs))
            out.append(f"| {label(a)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(results: List[Dict], judges: Sequence[str], alphas: Sequence[float], steps: int, path: pathlib.Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        online_selm.log("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    judges = [j for j in judges if any(r["judge"] == j for r in results)]
    if not judges:
        return
    fig, axes = plt.subplots(2, len(judges), figsize=(6 * len(judges), 8), squeeze=False)
    for col, judge in enumerate(judges):
        for row, (key, ylabel) in enumerate([("heldout_reward", "held-out reward (greedy)"),
                                             ("explore/kl", "KL(π‖π_ref) on held-out samples")]):
            ax = axes[row][col]
            for a in alphas:
                mine = [r for r in results if r["judge"] == judge and r["alpha"] == a and r["steps"] == steps]
                if not mine:
                    continue
                xs = [v["learner_step"] for v in mine[0]["curve"]]
                means, lo, hi = [], [], []
                for i in range(len(xs)):
                    vals = [r["curve"][i][key] if key == "heldout_reward" else r["curve"][i]["explore"].get(key, math.nan)
                            for r in mine]
                    m, h = mean_ci(vals)
                    h = 0.0 if math.isnan(h) else h
                    means.append(m); lo.append(m - h); hi.append(m + h)
                line, = ax.plot(xs, means, marker="o", label=f"{label(a)} (n={len(mine)})")
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
            ax.set_xlabel("learner step"); ax.set_ylabel(ylabel); ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"judge: {judge}")
            ax.legend(fontsize=8)
    fig.suptitle("SELM vs DPO: mean and 95 % CI over seeds (Student t)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    online_selm.log(f"plot: {path}")


def main() -> None:
    base = online_selm.build_parser()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[base], conflict_handler="resolve", add_help=False)
    p.add_argument("--judges", default="concise,overlap", help="comma-separated judges (names or module:factory)")
    p.add_argument("--alphas", default="0,0.001,0.01,0.1", help="comma-separated α values (0 = DPO)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1…S per setting")
    p.add_argument("--resume", action="store_true", help="keep the runs already in OUT/results.jsonl")
    p.add_argument("--summary-only", action="store_true", help="no runs: tables and plot from OUT/results.jsonl")
    p.set_defaults(out=str(online_selm.REPO / "compare-out"), steps=4, loop="paper", n=2, max_tokens=48,
                   eval_samples=1)
    args = p.parse_args()
    online_selm.check_args(p, args)
    judges = [j for j in args.judges.split(",") if j]
    alphas = [float(a) for a in args.alphas.split(",") if a]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    if not (args.resume or args.summary_only):
        results_path.unlink(missing_ok=True)
    results = load_results(results_path)
    done = {run_key(r["judge"], r["alpha"], r["seed"]) for r in results if r["steps"] == args.steps}
    plan = [(seed, judge, alpha) for seed in range(1, args.seeds + 1) for judge in judges for alpha in alphas]
    todo = [x for x in plan if run_key(x[1], x[2], x[0]) not in done]
    t0 = time.time()
    if not args.summary_only:
        online_selm.log(f"compare: {len(plan)} runs ({len(judges)} judges × {len(alphas)} settings × {args.seeds} seeds, "
                        f"{args.steps} steps each, loop {args.loop}), {len(plan) - len(todo)} already done")
        (out / "rounds.jsonl").unlink(missing_ok=True)
        for k, (seed, judge, alpha) in enumerate(todo, 1):
            run_args = argparse.Namespace(**vars(args))
            run_args.seed, run_args.judge, run_args.alpha = seed, judge, alpha
            run_args.share_start = str(out / "starts")
            name = f"{judge}-a{alpha:g}-s{seed}".replace(":", "_")
            run_dir = out / "runs" / name
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "rounds.jsonl").unlink(missing_ok=True)
            t = time.time()
            online_selm.log(f"\n=== run {k}/{len(todo)}: judge {judge}, {label(alpha)}, seed {seed} "
                            f"({(t - t0) / 60:.1f} min so far) ===")
            curve = online_selm.run(run_args, name, alpha, run_dir, load_judge(judge))
            rec = {"judge": judge, "alpha": alpha, "seed": seed, "steps": args.steps, "loop": args.loop,
                   "seconds": time.time() - t, "curve": curve}
            with open(results_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            results.append(rec)
        online_selm.log(f"\ncompare: {len(todo)} runs in {(time.time() - t0) / 60:.1f} min")
    settings = (f"Settings: loop {args.loop} (iteration {online_selm.iteration_steps(args)} step), {args.steps} steps of "
                f"{args.batch} pairs, {args.n} samples per prompt, {args.max_tokens} tokens, β {args.beta}, lr {args.lr}, "
                f"{args.heldout} held-out prompts × {args.eval_samples} samples; model {pathlib.Path(args.model).name}.")
    text = settings + "\n" + summarize(results, judges, alphas, args.steps, args.eval_samples)
    online_selm.log(text)
    (out / "summary.md").write_text(text + "\n")
    plot(results, judges, alphas, args.steps, out / "compare.png")
    online_selm.log(f"summary: {out / 'summary.md'}; every run's curve: {results_path}")


if __name__ == "__main__":
    main()
