"""Sampler fixture: what transformers' logits processors and a numpy inverse-CDF draw make of given
logits, penalty state and uniform draws — the reference `Engine.Sampler` is compared with
(Tests/EngineTests/SamplerReferenceTests.swift).

Writes `Tests/EngineTests/Fixtures/sampler.json`: cases of random float32 logits (vocabulary 128),
a prompt and already generated tokens (with repeats), sampling parameters and uniforms in [0, 1); for
each case the processed distribution and the token each uniform draws.

The rule, from code nobody here wrote:
- repetition penalty: `transformers.RepetitionPenaltyLogitsProcessor` over prompt + generated ids;
- presence / frequency penalties as OpenAI and vLLM define them: logit − frequency × count −
  presence × [count > 0], count = occurrences among the generated tokens (not the prompt), applied
  after the repetition penalty (vLLM's `apply_penalties` order);
- then `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`, in the
  order `GenerationMixin._get_logits_processor` builds them; temperature 0 is greedy (argmax);
- probabilities `torch.softmax`; the draw for a uniform u is the first token id whose cumulative
  probability (ids ascending, `numpy.cumsum`) exceeds u (`numpy.searchsorted(..., side="right")`).

Cases whose outcome float rounding could flip (a cumulative probability within 1e-4 of the top-p
threshold, a probability within 1e-4 of the min-p threshold, a uniform within 1e-6 of a CDF step)
are redrawn, so the fixture holds only outcomes both implementations must agree on.

`seeded_tokens`: the tokens `Sampler.sample` draws from its own stream, `RandomSource(seed:)`:
xoshiro256** seeded through SplitMix64 and `(next >> 11) · 2⁻⁵³`, written here from the algorithms'
published reference code (Blackman & Vigna, prng.di.unimi.it), each draw through the same inverse CDF.
"""
import json
import pathlib

import numpy as np
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

FIX = pathlib.Path("Tests") / "EngineTests" / "Fixtures"
VOCAB = 128
MASK = (1 << 64) - 1


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK


class Xoshiro256StarStar:
    def __init__(self, seed):
        x = seed & MASK
        state = []
        for _ in range(4):  # SplitMix64
            x = (x + 0x9E3779B97F4A7C15) & MASK
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            state.append(z ^ (z >> 31))
        self.s = state

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def unit(self):
        return (self.next() >> 11) * 2.0 ** -53


class Redraw(Exception):
    pass


def process(logits, prompt, generated, p):
    """The processed scores (1, V) float32, or the argmax id for temperature 0."""
    scores = torch.tensor(logits, dtype=torch.float32)[None, :]
    ids = torch.tensor([prompt + generated], dtype=torch.long)
    if p["repetition_penalty"] != 1:
        scores = RepetitionPenaltyLogitsProcessor(penalty=p["repetition_penalty"])(ids, scores)
    counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=VOCAB).to(torch.float32)[None, :]
    scores = scores - p["frequency_penalty"] * counts - p["presence_penalty"] * (counts > 0).to(torch.float32)
    if p["temperature"] == 0:
        return scores, None
    scores = TemperatureLogitsWarper(p["temperature"])(ids, scores)
    if p["top_k"] > 0:
        scores = TopKLogitsWarper(top_k=p["top_k"])(ids, scores)
    if p["top_p"] < 1:
        before = scores
        scores = TopPLogitsWarper(top_p=p["top_p"])(ids, scores)
        cum = torch.sort(before, descending=False).values.softmax(-1).cumsum(-1)
        if (cum - (1 - p["top_p"])).abs().min().item() < 1e-4:
            raise Redraw()
    if p["min_p"] > 0:
        probs = torch.softmax(scores, -1)
        threshold = p["min_p"] * probs.max()
        live = probs[probs > 0]
        if (live - threshold).abs().min().item() < 1e-4 * probs.max().item():
            raise Redraw()
        scores = MinPLogitsWarper(min_p=p["min_p"])(ids, scores)
    return scores, torch.softmax(scores, -1)[0].double().numpy()


def draw(probs, u):
    cdf = np.cumsum(probs)
    return int(np.searchsorted(cdf, u * cdf[-1], side="right"))


def near_step(probs, u):
    cdf = np.cumsum(probs)
    return np.abs(cdf / cdf[-1] - u).min() < 1e-6


PARAMS = [
    # temperature, top_k, top_p, min_p, repetition, presence, frequency
    (1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0),
    (0.5, 0, 1.0, 0.0, 1.0, 0.0, 0.0),
    (1.7, 0, 1.0, 0.0, 1.0, 0.0, 0.0),
    (1.0, 1, 1.0, 0.0, 1.0, 0.0, 0.0),
    (1.0, 5, 1.0, 0.0, 1.0, 0.0, 0.0),
    (0.7, 40, 1.0, 0.0, 1.0, 0.0, 0.0),
    (1.0, 0, 0.9, 0.0, 1.0, 0.0, 0.0),
    (1.0, 0, 0.5, 0.0, 1.0, 0.0, 0.0),
    (1.3, 0, 0.3, 0.0, 1.0, 0.0, 0.0),
    (1.0, 0, 1.0, 0.05, 1.0, 0.0, 0.0),
    (1.0, 0, 1.0, 0.3, 1.0, 0.0, 0.0),
    (1.0, 0, 1.0, 0.0, 1.3, 0.0, 0.0),
    (1.0, 0, 1.0, 0.0, 0.7, 0.0, 0.0),
    (1.0, 0, 1.0, 0.0, 1.0, 0.8, 0.0),
    (1.0, 0, 1.0, 0.0, 1.0, -0.6, 0.0),
    (1.0, 0, 1.0, 0.0, 1.0, 0.0, 0.5),
    (1.0, 0, 1.0, 0.0, 1.0, 0.0, -0.4),
    (1.0, 0, 1.0, 0.0, 1.5, 0.4, 0.3),
    (0.8, 20, 0.9, 0.05, 1.2, 0.3, 0.2),
    (1.2, 10, 0.7, 0.1, 0.9, -0.2, 0.4),
    (0.6, 0, 0.8, 0.02, 1.1, 0.5, 0.0),
    (1.0, 64, 0.95, 0.0, 1.0, 0.0, 0.6),
    (0.0, 0, 1.0, 0.0, 1.0, 0.0, 0.0),
    (0.0, 0, 1.0, 0.0, 1.6, 0.0, 0.0),
    (0.0, 0, 1.0, 0.0, 1.0, 2.0, 1.0),
    (0.0, 5, 0.5, 0.2, 1.3, 0.5, 0.5),
]


def case(index, spec, rng):
    keys = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]
    p = dict(zip(keys, spec))
    for _ in range(1000):
        scale = [0.7, 1.5, 3.0][index % 3]
        logits = (rng.standard_normal(VOCAB) * scale).astype(np.float32)
        prompt = rng.integers(0, VOCAB, 12).tolist()
        # Generated tokens with repeats, among the likelier ones so the penalties move the draw.
        likely = np.argsort(-logits)[:12]
        generated = [int(likely[i]) for i in rng.integers(0, 12, 10)]
        try:
            scores, probs = process(logits.tolist(), prompt, generated, p)
        except Redraw:
            continue
        out = {
            "params": p,
            "logits_bits": logits.view(np.uint32).tolist(),
            "prompt": prompt,
            "generated": generated,
        }
        penalised = p["repetition_penalty"] != 1 or p["presence_penalty"] != 0 or p["frequency_penalty"] != 0
        if probs is None:
            out["greedy"] = int(torch.argmax(scores[0]).item())
            if penalised and out["greedy"] == int(np.argmax(logits)):
                continue  # the penalties must change the choice
            return out
        if p["top_k"] != 1 and (probs > 0).sum() < 3:
            continue  # a filter that keeps one token says little about its threshold
        uniforms = []
        while len(uniforms) < 24:
            k = int(rng.integers(0, 1 << 53))
            if not near_step(probs, k * 2.0 ** -53):
                uniforms.append(k)
        seed = int(rng.integers(0, 1 << 62))
        stream = Xoshiro256StarStar(seed)
        units = [stream.unit() for _ in range(16)]
        if any(near_step(probs, u) for u in units):
            continue
        out.update({
            "probs": probs.tolist(),
            "uniforms_2_53": uniforms,
            "tokens": [draw(probs, k * 2.0 ** -53) for k in uniforms],
            "seed": seed,
            "seeded_tokens": [draw(probs, u) for u in units],
        })
        return out
    raise RuntimeError(f"case {index}: no logits away from the rounding edges")


def main(root: pathlib.Path):
    out = root / FIX
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261202)
    cases = [case(i, spec, rng) for i, spec in enumerate(PARAMS)]
    # The stream the seeded draws use, checked on its own too (first outputs of seed 42).
    xs = Xoshiro256StarStar(42)
    fixture = {
        "source": ("transformers RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, "
                   "TopPLogitsWarper, MinPLogitsWarper; OpenAI/vLLM presence and frequency penalties; torch.softmax; "
                   "numpy.cumsum + searchsorted inverse CDF in id order"),
        "vocab": VOCAB,
        "xoshiro256starstar_seed42": [str(xs.next()) for _ in range(8)],
        "cases": cases,
    }
    (out / "sampler.json").write_text(json.dumps(fixture) + "\n")
    print(f"{len(cases)} sampler cases written to {out / 'sampler.json'}")


if __name__ == "__main__":
    main(pathlib.Path(__file__).resolve().parents[2])
