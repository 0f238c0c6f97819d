#!/usr/bin/env python3
"""Writes the reference fixtures the Swift tests compare against.

The references come from code no one in this project wrote: Hugging Face transformers, tokenizers,
PyTorch autograd and the `gguf` package. Run it by hand in a throw-away virtual environment:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch transformers accelerate gguf safetensors tokenizers jinja2 numpy protobuf
    make model
    /tmp/refvenv/bin/python scripts/make_reference.py [part ...]

Parts: model, tokenizer, quant, learner, wire, sampler, chat_templates (default: all; learner reads the model fixtures). Fixtures go under Tests/*/Fixtures and are committed.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from reference import chat_templates, learner, model, quant, sampler, tokenizer, wire  # noqa: E402

PARTS = {"model": model.main, "tokenizer": tokenizer.main, "quant": quant.main, "learner": learner.main, "wire": wire.main,
         "sampler": sampler.main, "chat_templates": chat_templates.main}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(PARTS)
    for name in wanted:
        print(f"== {name}", flush=True)
        PARTS[name](ROOT)
