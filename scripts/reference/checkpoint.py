"""Checks by hand that checkpoints written by `selm train` load in transformers with the same logits
as `selm logits` computes from them (Hugging Face directory and GGUF alike), and, when the venv has
`llama-cpp-python`, that llama.cpp loads the GGUF checkpoint with the same logits (F32 KV cache).
The checkpoint comes from the GGUF model, so its tokenizer.json / tokenizer_config.json are written
from GGUF metadata: transformers' AutoTokenizer must load them and tokenize the SmolLM2 corpus
(scripts/reference/tokenizer.py's fixture) and tokenize a rendered chat (special tokens included) exactly as `selm` does.

    make build && /tmp/refvenv/bin/python scripts/reference/checkpoint.py
    (optional: /tmp/refvenv/bin/pip install llama-cpp-python)

Not part of `make test` (it needs torch); it prints the worst relative error and exits non-zero
above 1e-4."""
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
SELM = pathlib.Path(__import__("os").environ.get("SELM_BIN", str(ROOT / ".build" / "release" / "selm")))
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def selm(*args):
    return subprocess.run([str(SELM), *map(str, args)], check=True, capture_output=True, text=True)


def main():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="selm-ckpt-"))
    rows = [
        {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "I would rather talk about something else entirely.",
         "reference_response": "Red."},
        {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "Five, probably.", "reference_response": "2 + 2 = 4."},
    ]
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    selm("train", "--model", MODEL, "--data", data, "--out", tmp / "run", "--lr", "1e-4", "--warmup-ratio", "0",
         "--batch-size", "2")
    ck = tmp / "run" / "final"
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]
    worst = 0.0
    for label, source in [("hf", ck), ("gguf", ck / "model.gguf")]:
        out = tmp / f"{label}.f32"
        selm("logits", "--model", source, "--tokens", ",".join(map(str, ids)), "--out", out)
        mine = np.fromfile(out, dtype="<f4").reshape(len(ids), -1)
        if label == "hf":
            m = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32)
        else:
            m = AutoModelForCausalLM.from_pretrained(ck, gguf_file="model.gguf", dtype=torch.float32)
        with torch.no_grad():
            ref = m(torch.tensor([ids])).logits[0].numpy()
        err = float(np.abs(mine - ref).max() / np.abs(ref).max())
        worst = max(worst, err)
        print(f"{label}: transformers vs selm logits, relative error {err:.2e}")
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp: llama-cpp-python not installed, skipped")
    else:
        mine = np.fromfile(tmp / "gguf.f32", dtype="<f4").reshape(len(ids), -1)
        # type_k/type_v 0 = GGML_TYPE_F32: llama.cpp's default F16 KV cache alone costs ~7e-4.
        llm = llama_cpp.Llama(model_path=str(ck / "model.gguf"), logits_all=True, n_ctx=64, verbose=False,
                              type_k=0, type_v=0)
        llm.eval(ids)
        ref = np.array(llm.scores[:len(ids)], dtype=np.float32)
        err = float(np.abs(mine - ref).max() / np.abs(ref).max())
        worst = max(worst, err)
        print(f"gguf: llama.cpp (llama-cpp-python {llama_cpp.__version__}) vs selm logits, relative error {err:.2e}")
    tok = AutoTokenizer.from_pretrained(ck)
    fixture = json.loads((ROOT / "Tests" / "TokenizerTests" / "Fixtures" / "smollm2_encode.json").read_text())
    bad = [c["text"] for c in fixture["cases"] if tok.encode(c["text"], add_special_tokens=False) != c["ids"]]
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    rendered = tok.encode(text, add_special_tokens=False)
    mine_chat = json.loads(selm("tokenize", "--model", MODEL, "--text", text).stdout)
    print(f"tokenizer: AutoTokenizer on the checkpoint, {len(fixture['cases']) - len(bad)}/{len(fixture['cases'])} "
          f"corpus cases equal; chat template {'equal' if list(rendered) == mine_chat else 'DIFFERENT'}")
    for text in bad[:5]:
        print("  differs:", repr(text))
    start = tmp / "start.f32"
    selm("logits", "--model", MODEL, "--tokens", ",".join(map(str, ids)), "--out", start)
    moved = float(np.abs(np.fromfile(start, dtype="<f4").reshape(len(ids), -1) - mine).max())
    print(f"training moved the logits by up to {moved:.3f}")
    sys.exit(0 if worst <= 1e-4 and moved > 1e-3 and not bad and list(rendered) == mine_chat else 1)


if __name__ == "__main__":
    main()
