"""Reference renderings of real chat templates by transformers' `apply_chat_template(tokenize=False)`.

Writes `<root>/Tests/TokenizerTests/Fixtures/jinja_chat_templates.json`: for each template its
text, the special tokens its model's tokenizer has, and a set of cases (conversation, tools,
`add_generation_prompt`, extra template variables) with either the rendered string or the
message of the exception the template raised. `JinjaTemplateTests` renders every case with the
Swift Jinja interpreter and requires the same string (or a `raise_exception` with the same message).

Templates (each model's `chat_template` as published on the Hugging Face Hub):
- SmolLM2: read from the GGUF (`models/SmolLM2-135M-Instruct.Q4_1.gguf`, or `$SELM_MODEL`) with `gguf`.
- Llama 3.2 / 3.1, Qwen2.5, Mistral Nemo, Gemma 2, and further ones (Phi-3.5, Hermes 3, Qwen3, SmolLM3,
  DeepSeek-R1-Distill): llama.cpp's vendored copies under `models/templates/` of the
  llama-cpp-python source `scripts/build_llamacpp.sh` unpacks (`$LLAMACPP_TEMPLATES` to point elsewhere).
- Zephyr (HuggingFaceH4/zephyr-7b-beta) and Llama 3 (Meta-Llama-3-8B-Instruct): no local copy; their
  texts as published in those models' tokenizer_config.json, shared with `tokenizer.py`.

apply_chat_template is called on a `PreTrainedTokenizerFast` built here with the model's special
tokens (a word-level vocabulary of just those tokens: the tokenizer is only the carrier of the
template and of `special_tokens_map`, which transformers passes to the template).

Run (from the package root): `/tmp/refvenv/bin/python scripts/reference/chat_templates.py`, or
`scripts/make_reference.py chat_templates`.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from reference.tokenizer import LLAMA3_TEMPLATE, ZEPHYR_TEMPLATE, model_path, read_gguf_tokenizer

LLAMACPP_TEMPLATES = pathlib.Path.home() / ".cache/selm-server/llamacpp-0.3.36/src/vendor/llama.cpp/models/templates"

DATE = {"date_string": "26 Jul 2024"}

# (name, model, source: a llama.cpp template file or None, special tokens, extra template variables)
TEMPLATES = [
    ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct (tokenizer.chat_template in the GGUF)", None, None, {}),
    ("llama3.2", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama-Llama-3.2-3B-Instruct.jinja",
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, DATE),
    ("qwen2.5", "Qwen/Qwen2.5-7B-Instruct", "Qwen-Qwen2.5-7B-Instruct.jinja",
     {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, {}),
    ("mistral-nemo", "mistralai/Mistral-Nemo-Instruct-2407", "mistralai-Mistral-Nemo-Instruct-2407.jinja",
     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, {}),
    ("gemma2", "google/gemma-2-2b-it", "google-gemma-2-2b-it.jinja",
     {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}, {}),
    ("zephyr", "HuggingFaceH4/zephyr-7b-beta", ZEPHYR_TEMPLATE,
     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}, {}),
    ("llama3", "meta-llama/Meta-Llama-3-8B-Instruct", LLAMA3_TEMPLATE,
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, {}),
    ("llama3.1", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama-Llama-3.1-8B-Instruct.jinja",
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, {}),
    ("phi3.5", "microsoft/Phi-3.5-mini-instruct", "microsoft-Phi-3.5-mini-instruct.jinja",
     {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"}, {}),
    ("hermes3", "NousResearch/Hermes-3-Llama-3.1-8B (tool_use)", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>"}, {}),
    ("qwen3", "Qwen/Qwen3-0.6B", "Qwen-Qwen3-0.6B.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, {}),
    ("smollm3", "HuggingFaceTB/SmolLM3-3B", "HuggingFaceTB-SmolLM3-3B.jinja",
     {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}, {}),
    ("deepseek-r1-distill-qwen", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
     {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}, {}),
]

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
USER = {"role": "user", "content": "Hello! How are you?"}
ASSISTANT = {"role": "assistant", "content": "Fine, thanks. And you?"}
USER2 = {"role": "user", "content": "  Tell me a joke about  \n\n whitespace.  "}
ASSISTANT2 = {"role": "assistant", "content": "\tIt was never there. "}
UNICODE = {"role": "user", "content": "Unicode: café naïve 日本語 🏴‍☠️ \"quotes\" 'single' {{ not jinja }} \\n"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city's name"},
                               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CALL = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "id": "call12345",
                     "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temperature\": 21}"},
]

# (case name, messages, tools)
CONVERSATIONS = [
    ("user", [USER], None),
    ("system+user", [SYSTEM, USER], None),
    ("multi-turn", [USER, ASSISTANT, USER2], None),
    ("system+multi-turn", [SYSTEM, USER, ASSISTANT, USER2, ASSISTANT2], None),
    ("unicode+whitespace", [USER, ASSISTANT, UNICODE], None),
    ("two users in a row", [USER, USER2], None),
    ("assistant first", [ASSISTANT, USER], None),
    ("tools", [USER], TOOLS),
    ("tool call", TOOL_CALL, TOOLS),
]


def carrier(template: str, special: dict) -> PreTrainedTokenizerFast:
    """A tokenizer whose only role is to carry the template and the special tokens."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", *special.values()]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **special)


def template_text(source: str, templates_dir: pathlib.Path) -> str:
    if source.endswith(".jinja"):
        return (templates_dir / source).read_text(encoding="utf-8")
    return source


def fixture(root: pathlib.Path) -> dict:
    templates_dir = pathlib.Path(os.environ.get("LLAMACPP_TEMPLATES", LLAMACPP_TEMPLATES))
    meta = read_gguf_tokenizer(model_path(root))
    out = []
    for name, model, source, special, extra in TEMPLATES:
        if source is None:
            text = meta["chat_template"]
            tokens = meta["tokens"]
            special = {"bos_token": tokens[int(meta["bos"])], "eos_token": tokens[int(meta["eos"])]}
        else:
            text = template_text(source, templates_dir)
        tok = carrier(text, special)
        cases = []
        for case, messages, tools in CONVERSATIONS:
            for gen in (False, True):
                entry = {"case": case, "messages": messages, "tools": tools, "add_generation_prompt": gen, "variables": extra}
                try:
                    entry["rendered"] = tok.apply_chat_template(
                        messages, tools=tools, tokenize=False, add_generation_prompt=gen, **extra
                    )
                except Exception as e:  # the template's raise_exception (jinja2 TemplateError) or a runtime error
                    entry["error"] = str(e)
                    entry["error_type"] = type(e).__name__
                cases.append(entry)
        out.append({"name": name, "model": model, "template": text, "special_tokens": tok.special_tokens_map, "cases": cases})
    return {
        "source": f"transformers {transformers.__version__} PreTrainedTokenizerFast.apply_chat_template(tokenize=False)",
        "templates": out,
    }


def main(root: pathlib.Path) -> None:
    path = root / "Tests" / "TokenizerTests" / "Fixtures" / "jinja_chat_templates.json"
    path.write_text(json.dumps(fixture(root), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(pathlib.Path(__file__).resolve().parent.parent.parent)
