"""Checks that checkpoints written by `selm train` load in code nobody here wrote, with the logits
`selm logits` computes from them. Part of `make test` (scripts/check_checkpoint.sh runs it in the
cached reference venv); also runs by hand:

    swift build && ~/.cache/selm-server/venv-*/bin/python scripts/reference/checkpoint.py [tiny] [smollm2]

For each source model — the tiny fixture (Tests/ModelTests/Fixtures/tiny-chat, a Hugging Face
directory, vocabulary 97) and SmolLM2 (the Q4_1 GGUF) — `selm train` takes two optimizer steps and
writes DIR/final; then

- transformers' `AutoModelForCausalLM` loads the checkpoint's Hugging Face directory
  (`config.json` + `model.safetensors`) and its `model.gguf` (through the gguf package), and their
  logits on a fixed token sequence must equal `selm logits` on the same files within
  `TOLERANCE` (largest absolute difference / largest absolute logit), and so must `selm logits` of
  the two files;
- the checkpoint's logits must differ from the source model's (training moved the weights: a writer
  that saved the starting weights would not pass);
- with llama-cpp-python installed in the venv (never built here), llama.cpp loads the GGUF with an F32
  KV cache and must agree within the same tolerance;
- for SmolLM2 (whose tokenizer files are written from the GGUF's metadata) transformers'
  `AutoTokenizer` loads the checkpoint and must tokenize the SmolLM2 corpus
  (Tests/TokenizerTests/Fixtures/smollm2_encode.json) and a rendered chat exactly as `selm` does.

Prints one line per comparison and exits 1 on any mismatch or error. Environment: SELM_BIN (default
.build/debug/selm), SELM_MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
SELM = pathlib.Path(os.environ.get("SELM_BIN", str(ROOT / ".build" / "debug" / "selm")))
SMOL = pathlib.Path(os.environ.get("SELM_MODEL", str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")))
TINY = ROOT / "Tests" / "ModelTests" / "Fixtures" / "tiny-chat"
# Worst observed: 3.8e-6 (SmolLM2, HF and GGUF), 2.7e-6 (llama.cpp); 1e-6 on the tiny model.
TOLERANCE = 2e-5

torch.set_num_threads(2)


class CheckFailed(Exception):
    pass


def selm(*args):
    r = subprocess.run([str(SELM), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise CheckFailed(f"selm {args[0]} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def selm_logits(model, ids, out):
    selm("logits", "--model", model, "--tokens", ",".join(map(str, ids)), "--out", out, "--engine-precision", "f32")
    return np.fromfile(out, dtype="<f4").reshape(len(ids), -1)


def relative_error(mine, ref):
    if mine.shape != ref.shape:
        raise CheckFailed(f"logit shapes differ: selm {mine.shape}, reference {ref.shape}")
    return float(np.abs(mine - ref).max() / np.abs(ref).max())


def transformers_logits(ck, ids, gguf=False):
    kwargs = {"gguf_file": "model.gguf"} if gguf else {}
    m = AutoModelForCausalLM.from_pretrained(str(ck), dtype=torch.float32, **kwargs)
    m.eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].float().numpy()


def check_model(name, source, data_rows, ids, tmp, train_args):
    """Trains `source` for two steps and compares the checkpoint's logits; returns the failures."""
    failures = []
    work = tmp / name
    work.mkdir()
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in data_rows))
    t = time.time()
    selm("train", "--model", source, "--data", data, "--out", work / "run", "--warmup-ratio", "0",
         "--schedule", "constant", "--batch-size", "2", *train_args)
    ck = work / "run" / "final"
    steps = len((work / "run" / "metrics.jsonl").read_text().splitlines())
    print(f"{name}: selm train took {steps} steps in {time.time() - t:.1f} s")
    if steps != 2:
        failures.append(f"{name}: expected 2 training steps, metrics.jsonl has {steps}")
    start = selm_logits(source, ids, work / "start.f32")
    logits = {}
    for label, path, gguf in [("hf", ck, False), ("gguf", ck / "model.gguf", True)]:
        mine = logits[label] = selm_logits(path, ids, work / f"{label}.f32")
        err = relative_error(mine, transformers_logits(ck, ids, gguf))
        ok = err <= TOLERANCE
        print(f"{name} {label}: transformers vs selm logits, relative error {err:.2e} (limit {TOLERANCE:g}) "
              f"{'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"{name} {label}: transformers' logits differ from selm's by {err:.2e}")
        moved = float(np.abs(mine - start).max())
        if moved <= 1e-3:
            failures.append(f"{name} {label}: the checkpoint's logits equal the source model's (moved {moved:.2e})")
    print(f"{name}: training moved the logits by up to {moved:.3f}")
    # The two files of one checkpoint hold the same F32 weights: a writer that lays one out wrongly in
    # a way its own reader undoes would pass the per-file comparisons, not this one.
    err = relative_error(logits["gguf"], logits["hf"])
    print(f"{name}: selm logits of model.gguf vs the HF directory, relative error {err:.2e}")
    if err > TOLERANCE:
        failures.append(f"{name}: model.gguf and the HF directory give different logits ({err:.2e})")
    try:
        import llama_cpp
    except ImportError:
        print(f"{name} gguf: llama.cpp not checked (llama-cpp-python is not installed in this venv)")
    else:
        mine = np.fromfile(work / "gguf.f32", dtype="<f4").reshape(len(ids), -1)
        # type_k/type_v 0 = GGML_TYPE_F32: llama.cpp's default F16 KV cache alone costs ~7e-4.
        llm = llama_cpp.Llama(model_path=str(ck / "model.gguf"), logits_all=True, n_ctx=64, verbose=False,
                              type_k=0, type_v=0)
        llm.eval(ids)
        err = relative_error(mine, np.array(llm.scores[:len(ids)], dtype=np.float32))
        ok = err <= TOLERANCE
        print(f"{name} gguf: llama.cpp (llama-cpp-python {llama_cpp.__version__}) vs selm logits, "
              f"relative error {err:.2e} {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"{name} gguf: llama.cpp's logits differ from selm's by {err:.2e}")
    return ck, failures


def check_tokenizer(ck):
    """AutoTokenizer on a checkpoint of the GGUF model: its tokenizer files were written by selm."""
    tok = AutoTokenizer.from_pretrained(str(ck))
    fixture = json.loads((ROOT / "Tests" / "TokenizerTests" / "Fixtures" / "smollm2_encode.json").read_text())
    bad = [c["text"] for c in fixture["cases"] if tok.encode(c["text"], add_special_tokens=False) != c["ids"]]
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    rendered = list(tok.encode(text, add_special_tokens=False))
    mine = json.loads(selm("tokenize", "--model", SMOL, "--text", text).stdout)
    print(f"smollm2 tokenizer: AutoTokenizer on the checkpoint, {len(fixture['cases']) - len(bad)}/"
          f"{len(fixture['cases'])} corpus cases equal; chat template {'equal' if rendered == mine else 'DIFFERENT'}")
    failures = [f"smollm2 tokenizer: AutoTokenizer tokenizes {t!r} differently" for t in bad[:5]]
    if len(bad) > 5:
        failures.append(f"... and {len(bad) - 5} more corpus cases")
    if rendered != mine:
        failures.append(f"smollm2 tokenizer: the rendered chat tokenizes to {rendered}, selm: {mine}")
    return failures


def main(argv):
    wanted = argv or ["tiny", "smollm2"]
    if not SELM.exists():
        raise CheckFailed(f"no selm binary at {SELM}")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="selm-ckpt-"))
    failures = []
    try:
        if "tiny" in wanted:
            rows = [{"prompt_ids": [1, 5 + i, 9, 30 + i], "chosen_ids": [40 + i, 41, 2], "rejected_ids": [60, 61 + i, 62, 2]}
                    for i in range(4)]
            ids = [1, 7, 19, 33, 50, 64, 80, 2, 11, 96, 3, 45]
            _, f = check_model("tiny", TINY, rows, ids, tmp, ["--lr", "1e-2"])
            failures += f
        if "smollm2" in wanted:
            if not SMOL.exists():
                raise CheckFailed(f"{SMOL} is missing: run `make model`")
            rows = [
                {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "I would rather talk about something else.",
                 "reference_response": "Red."},
                {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "Five, probably.", "reference_response": "2 + 2 = 4."},
                {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "reference_response": "Hello."},
                {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Berlin.", "reference_response": "Paris"},
            ]
            ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]
            ck, f = check_model("smollm2", SMOL, rows, ids, tmp, ["--lr", "1e-4"])
            failures += f + check_tokenizer(ck)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except CheckFailed as e:
        print("FAILED:", e, file=sys.stderr)
        sys.exit(1)
