"""SELM experiments that can be trusted (issue 17): the experiment mode of ``examples/online_selm.py``
(``--steps``) reproduces a run number for number and another seed gives another run; the paper loop
and the frozen reference name the right reference versions, which the server keeps alive; Score's
entropy; the judges (per sample and batched, by name or ``module:factory``).

The runs use the tiny random chat model of the Swift tests (a learner step takes milliseconds) and
a judge written here: what the text says does not matter, only that every number is reproduced.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import TINY_CHAT, Server, selm_binary
from selm_client import NotFound

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

#: A batch judge for random text: shorter is better, and every "Tell me …" prompt ties (no
#: preference), so those prompts are skipped and more are drawn.
JUDGE_MODULE = '''
from judges import batch_judge

def shortest_but_tell_ties():
    @batch_judge
    def judge(prompts, samples):
        return [0.0 if p.startswith("Tell me") else -len(s.text) / 10.0 for p, s in zip(prompts, samples)]
    return judge
'''

STEPS, BATCH = 4, 3


def experiment(tmp_path: Path, name: str, *extra: str) -> Dict[str, Any]:
    """One `online_selm.py --steps` run on the tiny model; its curve (one row per version) and rounds."""
    (tmp_path / "tinyjudge.py").write_text(JUDGE_MODULE)
    out = tmp_path / name
    cmd = [sys.executable, str(EXAMPLES / "online_selm.py"), "--selm", str(selm_binary()), "--model", str(TINY_CHAT),
           "--out", str(out), "--steps", str(STEPS), "--batch", str(BATCH), "-n", "2", "--max-tokens", "8",
           "--heldout", "4", "--eval-samples", "2", "--lr", "1e-3", "--judge", "tinyjudge:shortest_but_tell_ties", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    label = next(p.name[len("curve-"):-len(".jsonl")] for p in out.glob("curve-*.jsonl"))
    curve = [json.loads(line) for line in (out / f"curve-{label}.jsonl").read_text().splitlines()]
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if "eval" not in r]
    assert not (out / f"data-{label}").exists(), "the experiment mode removes its server's data directory"
    return {"curve": curve, "rounds": rounds, "stdout": r.stdout}


def timeless(rows: List[Dict]) -> List[Dict]:
    return [{k: v for k, v in r.items() if k != "elapsed" and not k.endswith("_seconds")} for r in rows]


def test_same_seed_gives_the_same_curve_and_another_seed_does_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two paper-loop runs with seed 1 agree in every number — held-out rewards, every learner
    metric of every step, every exploration metric, every round's rows and sampled rewards — so does
    a third that takes its start from the first (``--share-start``), and a run with seed 2 differs. The bf16 engine is not batch-invariant (a prompt's greedy tokens change
    with what shares its batch), so this holds because the experiment mode sends the same requests
    in the same order to an otherwise idle server."""
    shared = str(tmp_path / "starts")
    a = experiment(tmp_path, "a", "--loop", "paper", "--seed", "1", "--share-start", shared)
    b = experiment(tmp_path, "b", "--loop", "paper", "--seed", "1")
    c = experiment(tmp_path, "c", "--loop", "paper", "--seed", "2")
    # compare.py's runs of one seed share their start: the first evaluation and step 1's rows,
    # computed by the first run (a), read by the others — which must then go on exactly as a did.
    replayed = experiment(tmp_path, "r", "--loop", "paper", "--seed", "1", "--share-start", shared)
    assert "start shared with an earlier run" in replayed["stdout"] and "start shared" not in a["stdout"]
    curve = a["curve"]
    assert [r["learner_step"] for r in curve] == list(range(STEPS + 1))
    # The paper loop refreshes the reference every step: version v was trained against v − 1.
    assert [r["reference_version"] for r in curve] == [1, 1, 2, 3, 4]
    for r in curve[1:]:
        assert {"loss", "grad_norm", "logps/chosen", "logps/pi_response"} <= set(r["metrics"]), r["metrics"]
    for r in curve:
        assert {"explore/kl", "explore/entropy", "explore/distinct2", "explore/differs_from_greedy"} <= set(r["explore"])
    assert curve[0]["explore"]["explore/kl"] == 0.0, "the start version is its own reference"
    assert any(r["explore"]["explore/kl"] != 0.0 for r in curve[1:]), "training moved the policy from its reference"
    # Exactly one batch of rows per step; the tied prompts were skipped and replaced.
    for r in a["rounds"] + c["rounds"]:
        assert r["rows"] == BATCH
        assert len(r["prompts"]) - BATCH == sum(p.startswith("Tell me") for p in r["prompts"])
    assert any(len(r["prompts"]) > BATCH for r in a["rounds"] + c["rounds"]), "some tied prompt was drawn and skipped"

    assert timeless(a["curve"]) == timeless(b["curve"])
    assert timeless(a["rounds"]) == timeless(b["rounds"])
    assert timeless(a["curve"]) == timeless(replayed["curve"])
    assert timeless(a["rounds"]) == timeless(replayed["rounds"])
    assert timeless(a["curve"]) != timeless(c["curve"])
    assert [r["prompts"] for r in a["rounds"]] != [r["prompts"] for r in c["rounds"]], "another data order"


def test_default_loop_keeps_the_frozen_start_version_as_reference(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Today's loop: the reference stays the start version, which the server keeps alive past
    --max-live-versions (3) publications, so every version's samples are scored against it."""
    run = experiment(tmp_path, "d", "--loop", "default", "--seed", "3")
    curve = run["curve"]
    assert [r["reference_version"] for r in curve] == [1] * (STEPS + 1)
    assert len(curve) > 3 and all("explore/kl" in r["explore"] for r in curve)
    assert curve[-1]["explore"]["explore/kl"] != 0.0


def test_reference_version_is_kept_alive_and_released(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--ref-refresh-steps 1 --max-live-versions 1`: each version names the previous one as its
    reference; that version stays scoreable though the limit is 1, and the one before is freed."""
    s = Server(["--batch-size", "1", "--max-wait-seconds", "0", "--ref-refresh-steps", "1", "--max-live-versions", "1",
                "--lr", "1e-3", "--checkpoint-every", "0"], model=str(TINY_CHAT))
    try:
        with s.client() as c:
            sub = c.subscribe_versions()
            first = sub.get(timeout=30)
            assert first is not None and (first.version, first.reference_version) == (1, 1)
            assert c.status().reference_version == 1
            prompt = c.tokenize([{"role": "user", "content": "hi"}], chat=True)
            row = {"prompt_ids": prompt, "chosen_ids": [40, 41, 2], "rejected_ids": [50, 51, 52], "reference_ids": [60, 2]}
            events = []
            for _ in range(2):
                c.submit_preferences([row])
                ev = sub.get(timeout=120)
                assert ev is not None
                events.append(ev)
            assert [(e.version, e.reference_version) for e in events] == [(2, 1), (3, 2)]
            assert c.status().reference_version == 2
            assert c.status().live_versions == 2, "the newest and its reference (limit 1)"
            assert c.score([(prompt, [40, 41])], version=2).version == 2
            with pytest.raises(NotFound):
                c.score([(prompt, [40, 41])], version=1)
            sub.close()
    finally:
        s.cleanup()


def test_score_returns_the_entropy_of_each_position(server) -> None:  # type: ignore[no-untyped-def]
    """Entropies come one per token only when asked for, within [the top-20 alternatives' share of
    −Σ p log p, log V] (the full value is checked against PyTorch in EngineTests.ScoreEntropyTests)."""
    with server.client() as c:
        text = "The capital of France is Paris, a city on the Seine."
        plain = c.score([("Tell me about France.", text)], chat=True)
        full = c.score([("Tell me about France.", text)], chat=True, entropy=True, top_logprobs=20)
        vocab = c.hello.vocab_size
    assert plain.items[0].entropies == []
    item = full.items[0]
    assert len(item.entropies) == len(item.token_ids) > 5
    assert item.logprobs == plain.items[0].logprobs
    for h, top in zip(item.entropies, item.top_logprobs):
        partial = -sum(math.exp(lp) * lp for lp in top.values())
        assert partial - 1e-4 <= h <= math.log(vocab) + 1e-4, (h, partial)
    assert max(item.entropies) > 0.5 and min(item.entropies) < max(item.entropies)


def test_judges_per_sample_and_batched() -> None:
    """`score_all` calls a per-sample judge per sample and a batch judge once; the overlap judge is
    unigram F1 of content words; `load_judge` takes names and module:factory."""
    import judges
    from selm_client import Sample

    def sample(text: str, reason: str = "eos", tokens: int = 5) -> Sample:
        return Sample(prompt_index=0, sample_index=0, token_ids=list(range(tokens)), text=text, logprobs=[0.0] * tokens,
                      top_logprobs=[], finish_reason=reason, version=1, first_version=1, prompt_tokens=3,
                      completion_tokens=tokens)

    calls = []

    @judges.batch_judge
    def batch(prompts, samples):  # type: ignore[no-untyped-def]
        calls.append(len(samples))
        return [float(len(s.text)) for s in samples]

    ss = [sample("ab"), sample("abcd")]
    assert judges.score_all(batch, ["p", "q"], ss) == [2.0, 4.0] and calls == [2]
    assert judges.score_all(judges.concise_judge(), ["p", "q"], [sample("x", "length", 30), sample("y")]) == \
        pytest.approx([-1.12, 1.0])
    overlap = judges.overlap_judge({"Explain gravity.": "Gravity pulls masses."})
    got = judges.score_all(overlap, ["Explain gravity.", "Explain gravity.", "Bananas?"],
                           [sample("gravity pulls"), sample("Bananas are yellow."), sample("yellow bananas")])
    assert got == pytest.approx([0.8, 0.0, 2 * 1 * 0.5 / 1.5])  # p 1, r 2/3; nothing shared; vs the prompt
    assert judges.load_judge("overlap").batched and callable(judges.load_judge("concise"))
    with pytest.raises(SystemExit):
        judges.load_judge("no-such-judge")
    with pytest.raises(SystemExit):
        judges.load_judge("judges:no_such_factory")
