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
  (Tests/TokenizerTests/Fixtures/smollm2_encode.json) and a rendered chat exactly as `selm` does;
- `transformers.TrainerState.load_from_json` loads the checkpoint's `trainer_state.json`, whose
  `global_step` and `log_history` (one entry per step) must equal `metrics.jsonl`;
- the same training again with `--checkpoint-dtype bf16`: model.safetensors must be all BF16 and
  config.json say bfloat16; gguf-py's `GGUFReader` reads model.gguf (matrices BF16, norms F32, each
  matrix equal to the safetensors tensor bit for bit); transformers' and `selm logits`' logits of
  both files agree within `TOLERANCE` (the same BF16 weights, computed in f32), and are within
  `BF16_TOLERANCE` of the F32 checkpoint's (what BF16 rounding of the weights costs). The sizes of
  both checkpoints' files are printed.

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
# BF16 weights against the F32 checkpoint of the same run (worst observed: see the printed line).
BF16_TOLERANCE = 5e-2

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


def train(name, source, data_rows, work, train_args, dtype):
    """`selm train` for two steps with `--checkpoint-dtype dtype`; returns (checkpoint, run dir)."""
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in data_rows))
    run = work / f"run-{dtype}"
    t = time.time()
    selm("train", "--model", source, "--data", data, "--out", run, "--warmup-ratio", "0",
         "--schedule", "constant", "--batch-size", "2", "--checkpoint-dtype", dtype, *train_args)
    print(f"{name}: selm train --checkpoint-dtype {dtype} took {time.time() - t:.1f} s")
    return run / "final", run


def check_trainer_state(name, ck, run):
    """transformers' TrainerState loads trainer_state.json; its history is metrics.jsonl's."""
    from transformers import TrainerState
    failures = []
    st = TrainerState.load_from_json(str(ck / "trainer_state.json"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    same = st.global_step == len(metrics) == len(st.log_history) and all(
        h["step"] == m["step"] and all(h[k] == m[k] for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                                               "rewards/accuracies", "logps/chosen", "logps/rejected",
                                                               "learning_rate", "grad_norm"))
        for h, m in zip(st.log_history, metrics))
    print(f"{name}: transformers.TrainerState.load_from_json: global_step {st.global_step}, "
          f"{len(st.log_history)} log_history entries, {'equal to' if same else 'DIFFERENT from'} metrics.jsonl")
    if not same:
        failures.append(f"{name}: trainer_state.json's global_step/log_history differ from metrics.jsonl")
    return failures


def sizes(ck):
    return {f.name: f.stat().st_size for f in sorted(ck.iterdir()) if f.suffix in (".safetensors", ".gguf")}


def check_bf16(name, source, data_rows, ids, work, train_args, f32_logits, f32_ck):
    """The same training with --checkpoint-dtype bf16: the files, their readers, their logits."""
    import gguf
    from safetensors.numpy import load_file
    failures = []
    ck, run = train(name, source, data_rows, work, train_args, "bf16")
    config = json.loads((ck / "config.json").read_text())
    with open(ck / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    if dtypes != {"BF16"} or config.get("torch_dtype") != "bfloat16":
        failures.append(f"{name} bf16: model.safetensors dtypes {dtypes}, config torch_dtype {config.get('torch_dtype')}")
    # gguf-py reads the GGUF: matrices BF16 holding the safetensors' bits, norms F32.
    reader = gguf.GGUFReader(str(ck / "model.gguf"))
    kinds = {}
    for t in reader.tensors:
        kinds.setdefault(t.tensor_type.name, []).append(t.name)
        if len(t.shape) > 1 and t.tensor_type != gguf.GGMLQuantizationType.BF16:
            failures.append(f"{name} bf16: GGUF tensor {t.name} is {t.tensor_type.name}, expected BF16")
        if len(t.shape) == 1 and t.tensor_type != gguf.GGMLQuantizationType.F32:
            failures.append(f"{name} bf16: GGUF norm {t.name} is {t.tensor_type.name}, expected F32")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    st_bits = np.frombuffer(open(ck / "model.safetensors", "rb").read(), dtype=np.uint8)
    off = 8 + int.from_bytes(st_bits[:8].tobytes(), "little")
    b, e = header["model.embed_tokens.weight"]["data_offsets"]
    if not np.array_equal(np.asarray(embd.data).view(np.uint16).ravel(), st_bits[off + b:off + e].view(np.uint16)):
        failures.append(f"{name} bf16: the GGUF's token_embd.weight differs from model.safetensors' embed_tokens")
    print(f"{name} bf16: gguf-py GGUFReader reads model.gguf: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(kinds.items())))
    logits = {}
    for label, path, is_gguf in [("hf", ck, False), ("gguf", ck / "model.gguf", True)]:
        mine = logits[label] = selm_logits(path, ids, work / f"bf16-{label}.f32")
        err = relative_error(mine, transformers_logits(ck, ids, is_gguf))
        ok = err <= TOLERANCE
        print(f"{name} bf16 {label}: transformers vs selm logits, relative error {err:.2e} (limit {TOLERANCE:g}) "
              f"{'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"{name} bf16 {label}: transformers' logits differ from selm's by {err:.2e}")
        err = relative_error(mine, f32_logits)
        ok = err <= BF16_TOLERANCE
        print(f"{name} bf16 {label}: vs the F32 checkpoint's logits, relative error {err:.2e} (limit {BF16_TOLERANCE:g}) "
              f"{'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"{name} bf16 {label}: BF16 logits differ from the F32 checkpoint's by {err:.2e}")
    failures += check_trainer_state(f"{name} bf16", ck, run)
    for label, c in [("f32", f32_ck), ("bf16", ck)]:
        s = sizes(c)
        print(f"{name} {label} checkpoint: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in s.items())
              + f"; total {sum(f.stat().st_size for f in c.iterdir()) / 1e6:.1f} MB")
    return failures


def check_model(name, source, data_rows, ids, tmp, train_args):
    """Trains `source` for two steps and compares the checkpoint's logits; returns the failures."""
    failures = []
    work = tmp / name
    work.mkdir()
    ck, run = train(name, source, data_rows, work, train_args, "f32")
    steps = len((run / "metrics.jsonl").read_text().splitlines())
    print(f"{name}: selm train took {steps} steps")
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
    failures += check_trainer_state(name, ck, run)
    failures += check_bf16(name, source, data_rows, ids, work, train_args, logits["hf"], ck)
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
