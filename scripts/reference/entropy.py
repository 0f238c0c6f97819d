"""Entropy fixture: the entropy of every next-token distribution of the tiny-tied model's
transformers logits (`Tests/ModelTests/Fixtures/tiny-tied.logits.json`, written by model.py),
computed by `torch.distributions.Categorical(logits=...).entropy()` — the reference for Score's
`entropy` option (`Tests/EngineTests/ScoreEntropyTests.swift`).

Writes `Tests/EngineTests/Fixtures/tiny-tied.entropy.json`: the sequences, and per sequence the
entropy (nats) at each position (the distribution of the token after it).

    python -m scripts.reference.entropy      # from the repository root, in the reference venv
"""
import json
import pathlib

import torch

SRC = pathlib.Path("Tests") / "ModelTests" / "Fixtures" / "tiny-tied.logits.json"
OUT = pathlib.Path("Tests") / "EngineTests" / "Fixtures" / "tiny-tied.entropy.json"


def main() -> None:
    d = json.loads(SRC.read_text())
    entropies = []
    for logits in d["logits"]:
        x = torch.tensor(logits, dtype=torch.float64)
        entropies.append(torch.distributions.Categorical(logits=x).entropy().tolist())
    OUT.write_text(json.dumps({"source": str(SRC), "sequences": d["sequences"], "entropies": entropies}))
    print(f"wrote {OUT}: {sum(len(e) for e in entropies)} positions")


if __name__ == "__main__":
    main()
