"""Model fixtures: tiny random Llama checkpoints with their logits, and SmolLM2 logits and greedy
chat continuations computed by transformers from the same GGUF file the Swift code loads."""
import json
import pathlib

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Tiny checkpoints: (name, config overrides, dtype, shard)
TINY = [
    ("tiny-tied", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0), torch.float32, False),
    ("tiny-untied", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=500000.0), torch.float32, False),
    ("tiny-bf16-sharded", dict(num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0), torch.bfloat16, True),
]


def tiny_config(**kw):
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                max_position_embeddings=64, rms_norm_eps=1e-5, hidden_act="silu",
                bos_token_id=1, eos_token_id=2, pad_token_id=None)
    base.update(kw)
    return LlamaConfig(**base)


def randomize(model, seed):
    """Weights with enough spread that attention and the MLP do visible work (the default init
    std of 0.02 makes a tiny model nearly constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=g))


def tiny(root: pathlib.Path):
    out = root / "Tests" / "ModelTests" / "Fixtures"
    g = torch.Generator().manual_seed(7)
    seqs = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (1, 5, 17, 40)]
    for i, (name, kw, dtype, shard) in enumerate(TINY):
        cfg = tiny_config(**kw)
        torch.manual_seed(i)
        m = LlamaForCausalLM(cfg).eval()
        randomize(m, 100 + i)
        if cfg.tie_word_embeddings:
            m.tie_weights()
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*"):
            f.unlink()
        m.to(dtype).save_pretrained(d, max_shard_size="60KB" if shard else "50GB")
        m.to(torch.float32)
        # Reload exactly what was saved, as a user of transformers would, in float32.
        ref = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        logits = []
        with torch.no_grad():
            for s in seqs:
                logits.append(ref(torch.tensor([s])).logits[0].tolist())
        (d.parent / f"{name}.logits.json").write_text(json.dumps({"sequences": seqs, "logits": logits}))
        print(name, "files:", sorted(p.name for p in d.iterdir()))


def tiny_chat(root: pathlib.Path):
    """A tiny random model that has a tokenizer and a ChatML template (the tokenizer fixture
    `hf/tiny-gpt2`): fast end-to-end tests of the server and the online learner."""
    import shutil
    src = root / "Tests" / "TokenizerTests" / "Fixtures" / "hf" / "tiny-gpt2"
    d = root / "Tests" / "ModelTests" / "Fixtures" / "tiny-chat"
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob("*"):
        f.unlink()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    cfg = tiny_config(vocab_size=vocab, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      rope_theta=10000.0, max_position_embeddings=256, bos_token_id=tok.token_to_id("<|endoftext|>"),
                      eos_token_id=tok.token_to_id("<|im_end|>"))
    torch.manual_seed(9)
    m = LlamaForCausalLM(cfg).eval()
    randomize(m, 109)
    m.tie_weights()
    m.save_pretrained(d)
    for f in src.iterdir():
        shutil.copy(f, d / f.name)
    (d / "generation_config.json").unlink(missing_ok=True)
    print("tiny-chat vocab", vocab, sorted(p.name for p in d.iterdir()))


def smollm2(root: pathlib.Path):
    models = root / "models"
    out = root / "Tests" / "ModelTests" / "Fixtures"
    m = AutoModelForCausalLM.from_pretrained(models, gguf_file=SMOL, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(models, gguf_file=SMOL)
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n# 1, 1, 2, 3, 5, 8",
        " ".join(["Paragraph about the history of mathematics, numbers and geometry."] * 24),
    ]
    seqs = [tok.encode(t) for t in texts]
    rng = np.random.default_rng(1234)
    sample_idx = sorted(rng.choice(49152, size=128, replace=False).tolist())
    rows, last = [], []
    with torch.no_grad():
        for s in seqs:
            lg = m(torch.tensor([s])).logits[0]
            lse = torch.logsumexp(lg, dim=-1)
            rows.append({"ids": s, "sampled": lg[:, sample_idx].tolist(), "logsumexp": lse.tolist(),
                         "argmax": lg.argmax(-1).tolist()})
            last.append(lg[-1].numpy().astype("<f4"))
    (out / "smollm2.logits.json").write_text(json.dumps({"sample_indices": sample_idx, "sequences": rows}))
    np.concatenate(last).tofile(out / "smollm2.last-logits.f32")

    prompts = ["What is the capital of France?", "Write a haiku about the sea.", "List three primary colors."]
    gens = []
    with torch.no_grad():
        for p in prompts:
            ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
            if not isinstance(ids, list):
                ids = ids["input_ids"]
            o = m.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=2, pad_token_id=2)
            new = o[0, len(ids):].tolist()
            gens.append({"prompt": p, "prompt_ids": ids, "output_ids": new, "text": tok.decode(new)})
    (out / "smollm2.greedy.json").write_text(json.dumps(gens, indent=1))
    print("smollm2:", [len(s) for s in seqs], [len(g["output_ids"]) for g in gens])


def main(root: pathlib.Path):
    tiny(root)
    tiny_chat(root)
    if (root / "models" / SMOL).exists():
        smollm2(root)
    else:
        raise SystemExit("models/%s is missing: run `make model` first" % SMOL)


if __name__ == "__main__":
    main(pathlib.Path(__file__).resolve().parents[2])
