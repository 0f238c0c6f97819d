"""Reference fixtures for GGUF dequantisation and safetensors I/O (ModelTests: QuantTests, SafetensorsTests).

Everything expected here is computed by code this project did not write:
  - gguf-py (`gguf.quants.dequantize`, `GGUFWriter`, `GGUFReader`) for the ggml block formats;
  - PyTorch + `safetensors.torch.save_file` and transformers' `save_pretrained` for safetensors.

Writes (under <root>/Tests/ModelTests/Fixtures/):
  quant/fixture.gguf            one 4 x 512 tensor of every supported ggml type, built from random raw
                                blocks with sane finite f16 scales, plus Q5_0 and Q2_K tensors (unsupported)
  quant/manifest.json           per tensor: ggml type, numpy shape, element count, expected file
  quant/expected/<name>.f32     gguf-py's dequantisation, little-endian float32
  quant/rounding.bin            float32 -> float16 / bfloat16 rounding as PyTorch does it: n u32 float bits,
                                then n u16 `.half()` bits, then n u16 `.bfloat16()` bits (n in rounding.json)
  quant/smollm2_checksums.json  sums, sums of squares, a bit-exact hash and 64 sampled values of two
                                tensors of models/SmolLM2-135M-Instruct.Q4_1.gguf (if the model is present)
  safetensors/basic.safetensors          F32, F16, BF16 tensors of several shapes + __metadata__
  safetensors/unsupported.safetensors    I64 and F64 tensors (and one F32)
  safetensors/sharded/                   a tiny bf16 Llama saved by transformers in 2 shards + index
  safetensors/expected.json, safetensors/expected/<file>/<name>.f32   torch's `.float()` of each tensor

Run with the reference venv:  /tmp/refvenv/bin/python scripts/reference/quant.py [root]
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sys

import numpy as np

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKSUM_TENSORS = ["blk.0.attn_q.weight", "token_embd.weight"]

# Byte offsets of the f16 scale fields inside one block, per type: these get sane finite values,
# every other byte stays random.
SCALE_FIELDS = {
    "Q8_0": [0],
    "Q4_0": [0],
    "Q4_1": [0, 2],       # d, m
    "Q4_K": [0, 2],       # d, dmin
    "Q5_K": [0, 2],
    "Q6_K": [208],        # d is last
    "Q5_0": [0],
    "Q2_K": [80, 82],     # scales[16], qs[64], d, dmin
}


def _tensor_bits_hash(values: np.ndarray) -> int:
    """sum_i bits(x_i) * (2 i + 1) mod 2^64 over the float32 bit patterns: changes if any element
    changes (the odd multiplier is invertible mod 2^64). Mirrored in QuantTests.swift."""
    bits = values.reshape(-1).view(np.uint32).astype(np.uint64)
    mult = np.arange(bits.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return int(np.sum(bits * mult, dtype=np.uint64))


def _random_blocks(rng: np.random.Generator, qtype, n_elements: int) -> np.ndarray:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = n_elements // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype.name]:
        scales = rng.normal(0.0, 0.02, size=n_blocks).astype(np.float16)
        # A few edge cases: zero, negative, f16 subnormal, large.
        specials = np.array([0.0, -0.125, 2.0 ** -20, 3.0, 100.0], dtype=np.float16)
        scales[: min(len(specials), n_blocks)] = specials[: n_blocks]
        scales = np.roll(scales, off)  # different blocks get the specials in different fields
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


def make_quant_fixtures(out: pathlib.Path) -> None:
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(20241130)
    rows, cols = 4, 512
    n = rows * cols
    if out.exists():
        shutil.rmtree(out / "expected", ignore_errors=True)
    (out / "expected").mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(str(out / "fixture.gguf"), "fixture")
    writer.add_string("general.name", "dequantisation fixture")
    writer.add_uint32("fixture.seed", 20241130)

    # F32: normal values plus -0, an f32 subnormal, +-inf.
    f32 = rng.normal(0, 1, size=n).astype(np.float32)
    f32[:4] = np.array([-0.0, 1e-40, np.inf, -np.inf], dtype=np.float32)
    writer.add_tensor("t.f32", f32.reshape(rows, cols))
    # F16: random bit patterns (all exponents, subnormals, infinities), NaNs replaced.
    f16 = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    is_nan = ((f16 & 0x7C00) == 0x7C00) & ((f16 & 0x03FF) != 0)
    f16[is_nan] = 0x3C00
    writer.add_tensor("t.f16", f16.view(np.float16).reshape(rows, cols))
    # BF16: random bit patterns, NaNs included (bf16 -> f32 is a 16-bit shift, so bits must match).
    bf16 = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    writer.add_tensor("t.bf16", bf16.view(np.uint8).reshape(rows, cols * 2), raw_dtype=T.BF16)

    quant_types = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K, T.Q5_0, T.Q2_K]
    for qt in quant_types:
        raw = _random_blocks(rng, qt, n)
        prefix = "bad" if qt in (T.Q5_0, T.Q2_K) else "t"
        writer.add_tensor(f"{prefix}.{qt.name.lower()}", raw.reshape(rows, -1), raw_dtype=qt)
    # A 3-D Q8_0 tensor whose rows are not a multiple of 256.
    raw = _random_blocks(rng, T.Q8_0, 2 * 3 * 64)
    writer.add_tensor("t3.q8_0", raw.reshape(2, 3, -1), raw_dtype=T.Q8_0)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Expected values: read the file back with gguf-py's reader and dequantise what it sees.
    reader = gguf.GGUFReader(str(out / "fixture.gguf"))
    manifest = []
    for t in reader.tensors:
        entry = {
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],          # GGUF order, innermost first
            "count": int(t.n_elements),
        }
        if t.name.startswith("bad."):
            entry["expected"] = None
        else:
            if t.tensor_type == T.BF16:
                values = (np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(-1)
                assert np.array_equal(values.reshape(-1).view(np.uint32), ref.view(np.uint32))
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(-1)
            assert values.size == t.n_elements
            path = f"expected/{t.name}.f32"
            values.astype("<f4").tofile(out / path)
            entry["expected"] = path
        manifest.append(entry)
    (out / "manifest.json").write_text(json.dumps({"file": "fixture.gguf", "tensors": manifest}, indent=1) + "\n")


def make_model_checksums(root: pathlib.Path, out: pathlib.Path) -> None:
    import gguf

    model = root / "models" / MODEL_NAME
    if not model.exists():
        print(f"quant.py: {model} not found (run `make model`); keeping the existing smollm2_checksums.json")
        return
    reader = gguf.GGUFReader(str(model))
    by_name = {t.name: t for t in reader.tensors}
    result = {"model": MODEL_NAME, "tensors": {}}
    for name in CHECKSUM_TENSORS:
        t = by_name[name]
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(-1)
        idx = np.linspace(0, values.size - 1, 64).astype(np.int64)
        v64 = values.astype(np.float64)
        result["tensors"][name] = {
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "count": int(values.size),
            "sum": float(np.sum(v64)),
            "sum_squares": float(np.sum(v64 * v64)),
            "bits_hash": f"{_tensor_bits_hash(values):016x}",
            "sample_indices": [int(i) for i in idx],
            "sample_bits": [int(b) for b in values[idx].view(np.uint32)],
        }
    (out / "smollm2_checksums.json").write_text(json.dumps(result, indent=1) + "\n")


def make_rounding_fixture(out: pathlib.Path) -> None:
    import torch

    rng = np.random.default_rng(7)
    n = 8192
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)   # anything, NaNs included
    # Most values near the float16 range (biased exponents 95..145), some with the dropped bits exactly
    # half-way (ties) for float16 (13 bits) or bfloat16 (16 bits).
    m = n * 3 // 4
    exps = rng.integers(95, 146, size=m, dtype=np.uint32)
    mant = rng.integers(0, 1 << 23, size=m, dtype=np.uint32)
    mant[: m // 8] = (mant[: m // 8] & ~np.uint32(0x1FFF)) | np.uint32(0x1000)
    mant[m // 8: m // 4] = (mant[m // 8: m // 4] & ~np.uint32(0xFFFF)) | np.uint32(0x8000)
    bits[:m] = (bits[:m] & np.uint32(0x80000000)) | (exps << np.uint32(23)) | mant
    specials = [0x00000000, 0x80000000, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x47800000,
                0x33000000, 0x33000001, 0x33400000, 0x33C00000, 0x387FE000, 0x387FF000, 0x38800000,
                0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000,
                0x00000001, 0x807FFFFF, 0x3F800000]
    bits[m: m + len(specials)] = np.array(specials, dtype=np.uint32)
    t = torch.from_numpy(bits.view(np.float32).copy())
    half = t.half().view(torch.int16).numpy().view(np.uint16)
    bf16 = t.bfloat16().view(torch.int16).numpy().view(np.uint16)
    with open(out / "rounding.bin", "wb") as f:
        f.write(bits.astype("<u4").tobytes())
        f.write(half.astype("<u2").tobytes())
        f.write(bf16.astype("<u2").tobytes())
    (out / "rounding.json").write_text(json.dumps({"count": n, "source": f"torch {torch.__version__}"}) + "\n")


def _write_expected(tensors: dict, out_dir: pathlib.Path, rel: str) -> dict:
    """Writes torch's `.float()` of each tensor as raw little-endian f32; returns manifest entries."""
    entries = {}
    (out_dir / rel).mkdir(parents=True, exist_ok=True)
    for name, t in tensors.items():
        f = t.float().contiguous().numpy().astype("<f4")
        path = f"{rel}/{name}.f32"
        f.tofile(out_dir / path)
        entries[name] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "expected": path}
    return entries


def make_safetensors_fixtures(out: pathlib.Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(1130)
    expected = {}

    f32 = torch.randn(3, 4, generator=g)
    f32[0, :3] = torch.tensor([-0.0, 1e-40, float("inf")])
    f16 = (torch.randn(2, 5, generator=g) * 100).half()
    f16[0, :5] = torch.tensor([float("inf"), -float("inf"), 6e-8, -0.0, 65504.0]).half()
    bf16 = torch.randn(2, 3, 4, generator=g).bfloat16()
    bf16[0, 0, :4] = torch.tensor([float("nan"), 1e-39, -0.0, 3e38]).bfloat16()
    basic = {
        "model.weight_f32": f32,
        "model.weight_f16": f16,
        "model.weight_bf16": bf16,
        "vector_f16": torch.randn(7, generator=g).half(),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    # The Rust writer emits __metadata__ in HashMap order, which varies from call to call: save until
    # the keys come out sorted, so that regenerating the fixture gives the same bytes.
    for _ in range(100):
        save_file(basic, str(out / "basic.safetensors"), metadata={"format": "pt", "producer": "selm fixture"})
        raw = (out / "basic.safetensors").read_bytes()
        header = raw[8: 8 + int.from_bytes(raw[:8], "little")]
        if header.index(b'"format"') < header.index(b'"producer"'):
            break
    expected["basic.safetensors"] = _write_expected(basic, out, "expected/basic")

    unsupported = {
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "double": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "ok": torch.ones(2),
    }
    save_file(unsupported, str(out / "unsupported.safetensors"))

    # A tiny Llama in bfloat16, saved by transformers exactly as Hugging Face repos are sharded.
    torch.manual_seed(1130)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    sharded = out / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="8KB", safe_serialization=True)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2, f"expected 2 shards, got {shards}"
    state = {k: v.detach() for k, v in model.state_dict().items()}
    expected["sharded"] = _write_expected(state, out, "expected/sharded")

    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


def main(root: pathlib.Path) -> None:
    fixtures = root / "Tests" / "ModelTests" / "Fixtures"
    make_quant_fixtures(fixtures / "quant")
    make_rounding_fixture(fixtures / "quant")
    make_model_checksums(root, fixtures / "quant")
    make_safetensors_fixtures(fixtures / "safetensors")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])
